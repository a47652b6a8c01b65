//! The in-memory layer spills values to its ephemeral direct-I/O file in
//! whole chunks: values read back exactly whether they sit in the file
//! (through the block cache), in memory at the stream's tail, or across
//! the boundary; the flush writes them to an L0 and removes the file.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::rc::Rc;

use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, Timeline, Value};

fn key(n: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 9,
            rel_number: 40000,
            fork: ForkNumber::Main,
        },
        BlockNo(n),
    )
}

fn value(i: u32) -> Rc<[u8]> {
    let len = 1 + (i.wrapping_mul(2_654_435_761) % 9000) as usize;
    (0..len)
        .map(|n| (n as u32 ^ i.wrapping_mul(97)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn ephemeral_files(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ephemeral-"))
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

#[test]
fn values_spill_to_the_ephemeral_file_and_read_back() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    run_local(
        &LocalConfig {
            io_memory_bytes: 2 << 20,
            ..LocalConfig::default()
        },
        move || async move {
            let core = CoreContext::new(1 << 20);
            let timeline = Timeline::create(&path, [1; 16], [2; 16], Lsn(10), core)
                .await
                .unwrap();
            let count = 600u32;
            for i in 0..count {
                let image = Value::Image(value(i));
                timeline
                    .put(key(i), Lsn(100 + u64::from(i)), image)
                    .await
                    .unwrap();
            }
            let files = ephemeral_files(&path);
            assert_eq!(files.len(), 1, "one ephemeral file");
            let held = timeline.open_layer_bytes() as u64;
            assert!(
                files[0] > held / 2,
                "most values are in the file: {files:?} of {held}"
            );
            assert_eq!(files[0] % 8192, 0);
            for i in 0..count {
                let got = timeline.get(key(i), Lsn(10_000)).await.unwrap();
                assert_eq!(got.image.unwrap().1, value(i), "value {i} before the flush");
            }
            timeline.freeze();
            timeline.flush().await.unwrap();
            assert!(
                ephemeral_files(&path).is_empty(),
                "the flush removes the file"
            );
            for i in 0..count {
                let got = timeline.get(key(i), Lsn(10_000)).await.unwrap();
                assert_eq!(got.image.unwrap().1, value(i), "value {i} after the flush");
            }
        },
    )
    .unwrap();
}
