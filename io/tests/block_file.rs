//! Direct-I/O block files on real executors: a file written block by block
//! becomes durable under its final name and reads back byte for byte, in
//! single, contiguous and scattered reads (a contiguous read sliced into
//! blocks without a copy), on every core.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::path::PathBuf;

use quire_io::{
    BLOCK_SIZE, BlockFile, BlockFileWriter, ExecutorConfig, RegistrationStatus, run_per_core,
};

fn pattern(block: u32) -> Vec<u8> {
    (0..BLOCK_SIZE)
        .map(|i| (block as usize * 31 + i) as u8)
        .collect()
}

#[test]
fn blocks_written_durably_read_back_on_every_core() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = ExecutorConfig {
        cpus: vec![0, 1],
        io_memory_bytes: 1 << 20,
        name: "io-test".into(),
        spin_before_park: None,
    };
    let base: PathBuf = dir.path().to_owned();
    let (status, results) = run_per_core(&config, move |core| {
        let path = base.join(format!("layer-{core}"));
        async move {
            let writer = BlockFileWriter::create(&path).await.unwrap();
            let mut body = Vec::new();
            for block in 1..40 {
                body.extend_from_slice(&pattern(block));
            }
            writer.write_blocks(1, &body).await.unwrap();
            writer.write_blocks(0, &pattern(0)).await.unwrap();
            let path = writer.finish().await.unwrap();
            assert!(!path.with_extension("tmp").exists());

            let file = BlockFile::open(&path, core as u64).await.unwrap();
            assert_eq!(file.blocks(), 40);
            assert_eq!(
                &*file.read_blocks(0, 1).await.unwrap(),
                pattern(0).as_slice()
            );
            let run = file.read_blocks(10, 5).await.unwrap();
            for i in 0..5 {
                assert_eq!(
                    &run[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
                    pattern(10 + i as u32).as_slice()
                );
                // A block of the run, shared rather than copied.
                let block = run.slice(i * BLOCK_SIZE, BLOCK_SIZE).unwrap();
                assert_eq!(block.as_ptr(), run[i * BLOCK_SIZE..].as_ptr());
                assert_eq!(&*block, pattern(10 + i as u32).as_slice());
            }
            assert!(run.slice(4 * BLOCK_SIZE, BLOCK_SIZE + 1).is_none());
            let scattered = file.read_scattered(&[39, 3, 17]).await.unwrap();
            for (read, block) in scattered.iter().zip([39, 3, 17]) {
                assert_eq!(&**read, pattern(block).as_slice());
            }
            assert!(
                file.read_blocks(39, 2).await.is_err(),
                "reads past the end are refused"
            );
            file.close().await.unwrap();
            core
        }
    })
    .unwrap();
    assert_eq!(results, vec![0, 1]);
    // As root (CAP_IPC_LOCK) registration works here; elsewhere it is reported.
    if let RegistrationStatus::Unregistered { reason } = status {
        eprintln!("buffer registration unavailable: {reason}");
    }
}
