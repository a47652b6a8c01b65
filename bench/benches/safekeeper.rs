//! Safekeeper WAL append throughput with fsync, beside the machine's
//! physical limit measured in the same run:
//!
//! - `WalStore` appends of 128 KiB, each followed by its group-commit
//!   flush (direct `O_DSYNC` writes), and of 8 KiB with one flush per 16
//!   appends (what group commit does under concurrent commits);
//! - the same sizes written straight to a preallocated segment file
//!   (direct, `O_DSYNC`, then `fdatasync`) with no WAL store logic: the
//!   floor. Its "flush" latency is the `fdatasync` alone.
//!
//! Reported: MB/s and hdrhistogram percentiles of the flush latency.
//! Run: `cargo bench -p quire-bench --bench safekeeper`.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::time::Instant;

use hdrhistogram::Histogram;
use quire_io::SegmentFile;
use quire_io::{LocalConfig, run_local};
use quire_postgres::Lsn;
use quire_safekeeper::wal_store::WalStore;

const SEGMENT: u32 = 16 << 20;
const TOTAL: usize = 192 << 20;

struct Run {
    name: String,
    bytes: usize,
    seconds: f64,
    flushes: Histogram<u64>,
}

fn report(run: &Run) {
    let h = &run.flushes;
    println!(
        "{:<48} {:>8.1} MB/s   flush p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs  ({} flushes)",
        run.name,
        run.bytes as f64 / 1e6 / run.seconds,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max(),
        h.len()
    );
}

async fn wal_store(dir: &std::path::Path, append: usize, per_flush: usize) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let start = Lsn(u64::from(SEGMENT));
    let mut store = WalStore::open(dir, start, SEGMENT, 1).await.unwrap();
    let chunk: Vec<u8> = (0..append).map(|i| (i % 251) as u8).collect();
    let mut flushes = Histogram::<u64>::new(3).unwrap();
    let began = Instant::now();
    let mut at = start;
    let mut written = 0;
    while written < TOTAL {
        for _ in 0..per_flush {
            store.append(at, &chunk).unwrap();
            at = Lsn(at.0 + append as u64);
            written += append;
        }
        let flush_began = Instant::now();
        store.flush().await.unwrap();
        flushes
            .record(flush_began.elapsed().as_micros() as u64)
            .unwrap();
    }
    let seconds = began.elapsed().as_secs_f64();
    store.close().await.unwrap();
    Run {
        name: format!(
            "WalStore: {} KiB appends, flush every {per_flush}",
            append >> 10
        ),
        bytes: written,
        seconds,
        flushes,
    }
}

async fn raw_segments(dir: &std::path::Path, write: usize) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let block: Vec<u8> = (0..write).map(|i| (i % 251) as u8).collect();
    let mut flushes = Histogram::<u64>::new(3).unwrap();
    let began = Instant::now();
    let mut written = 0;
    let mut segment = 0;
    while written < TOTAL {
        let file =
            SegmentFile::open_or_create(&dir.join(format!("raw{segment}")), u64::from(SEGMENT))
                .await
                .unwrap();
        let mut offset = 0;
        while offset + write <= SEGMENT as usize && written < TOTAL {
            file.write_blocks((offset / 8192) as u32, &block)
                .await
                .unwrap();
            let flush_began = Instant::now();
            file.sync().await.unwrap();
            flushes
                .record(flush_began.elapsed().as_micros() as u64)
                .unwrap();
            offset += write;
            written += write;
        }
        file.close().await.unwrap();
        segment += 1;
    }
    Run {
        name: format!("floor: direct {} KiB write + fdatasync", write >> 10),
        bytes: written,
        seconds: began.elapsed().as_secs_f64(),
        flushes,
    }
}

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = dir.path().to_owned();
    run_local(
        &LocalConfig {
            io_memory_bytes: 8 << 20,
            ..LocalConfig::default()
        },
        move || async move {
            // Interleaved, so the shared machine's noise hits both alike.
            for round in 0..2 {
                println!("round {}", round + 1);
                report(&raw_segments(&root.join("raw"), 128 << 10).await);
                report(&wal_store(&root.join("wal"), 128 << 10, 1).await);
                report(&raw_segments(&root.join("raw"), 128 << 10).await);
                report(&wal_store(&root.join("wal"), 8 << 10, 16).await);
                report(&raw_segments(&root.join("raw8"), 8 << 10).await);
            }
        },
    )
    .unwrap();
}
