//! WAL decoding throughput on real WAL, beside `pg_waldump --stats`.
//!
//! The WAL is what Postgres 17 wrote under pgbench (see
//! `quire_bench::real_wal`). Both sides are measured in this run, single
//! threaded, over the same span of valid WAL read from the same (page
//! cached) files, doing the same work: every record reassembled, checked
//! (CRC, links, lengths) and decoded (every fragment header read and
//! checked, as Postgres' `DecodeXLogRecord` does), and per resource manager
//! and record kind the records, their bytes and their full-page image
//! bytes counted, which is what `pg_waldump --stats` prints. Quire's totals
//! must equal the ones `pg_waldump` prints. Quire reads the files through
//! a reused buffer (256 KiB reads); it also decodes the same WAL already in
//! memory, handed over in 1 MiB pieces (as it arrives from a safekeeper) and
//! decoded where it lies, which criterion then measures on its own.
// Megabyte figures are for people; f64 precision is plenty.
#![allow(clippy::cast_precision_loss)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use criterion::{Criterion, Throughput};
use quire_bench::real_wal::real_wal;
use quire_postgres::Lsn;
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::{DecodedRecord, decode_record};
use quire_postgres::wal::stream::{WalDecodeError, WalStreamDecoder};

/// What `pg_waldump --stats` counts: per resource manager, and per
/// resource manager and record kind (`xl_info >> 4`), the records, their
/// bytes without images, and their image bytes.
#[derive(Clone, PartialEq, Eq)]
struct WalStats {
    per_rmgr: Vec<[u64; 3]>,
    per_kind: Vec<[u64; 3]>,
    end: Lsn,
}

impl WalStats {
    fn new(start: Lsn) -> WalStats {
        WalStats {
            per_rmgr: vec![[0; 3]; 256],
            per_kind: vec![[0; 3]; 256 * 16],
            end: start,
        }
    }

    fn add(&mut self, record: &DecodedRecord<'_>) {
        let images = u64::from(record.image_bytes());
        let rest = u64::from(record.header.total_length) - images;
        let rmgr = usize::from(record.header.rmid);
        let kind = rmgr * 16 + usize::from(record.header.info >> 4);
        for counts in [&mut self.per_rmgr[rmgr], &mut self.per_kind[kind]] {
            counts[0] += 1;
            counts[1] += rest;
            counts[2] += images;
        }
    }

    /// Records, record bytes (images excluded), image bytes, all bytes:
    /// the `Total` line of `pg_waldump --stats`.
    fn totals(&self) -> [u64; 4] {
        let sum = |i: usize| self.per_rmgr.iter().map(|counts| counts[i]).sum::<u64>();
        [sum(0), sum(1), sum(2), sum(1) + sum(2)]
    }
}

/// The four figures of `pg_waldump --stats`'s `Total` line.
fn waldump_totals(stdout: &str) -> Result<[u64; 4]> {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("Total"))
        .context("pg_waldump --stats printed no Total line")?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [records, bytes, images, all] => Ok([records, bytes, images, all]),
        _ => bail!("unexpected Total line: {line}"),
    }
}

/// Feeds `bytes` and decodes every whole record; `false` once the WAL ends.
fn drain(decoder: &mut WalStreamDecoder, bytes: &[u8], stats: &mut WalStats) -> Result<bool> {
    decoder.feed(bytes);
    loop {
        match decoder.next_record() {
            Ok(Some(record)) => {
                stats.add(&decode_record(record.bytes)?);
                stats.end = record.end;
            }
            Ok(None) => return Ok(true),
            Err(_) => return Ok(false),
        }
    }
}

/// Decodes in-memory segments in order, in 1 MiB pieces handed to the
/// decoder where they lie (records are borrowed from them, as from a
/// network buffer).
fn decode(segments: &[Vec<u8>], start: Lsn, segment_size: u32) -> Result<WalStats> {
    let mut decoder = WalStreamDecoder::new(start, segment_size);
    let mut stats = WalStats::new(start);
    for segment in segments {
        for piece in segment.chunks(1 << 20) {
            let outcome = decoder.decode_slice(piece, |record| {
                stats.add(&decode_record(record.bytes)?);
                stats.end = record.end;
                Ok::<(), anyhow::Error>(())
            });
            match outcome {
                Ok(()) => {}
                // The end of the valid WAL.
                Err(error) if error.is::<WalDecodeError>() => return Ok(stats),
                Err(error) => return Err(error),
            }
        }
    }
    Ok(stats)
}

/// Reads the files 256 KiB at a time straight into the decoder's reused
/// buffer (as `pg_waldump` reads into its page buffer) and decodes them.
fn read_and_decode(
    paths: &[std::path::PathBuf],
    start: Lsn,
    segment_size: u32,
) -> Result<WalStats> {
    let mut decoder = WalStreamDecoder::new(start, segment_size);
    let mut stats = WalStats::new(start);
    for path in paths {
        let mut file = std::fs::File::open(path)?;
        loop {
            // Straight into the decoder's buffer: no copy after the read.
            let n = decoder.fill_with(READ_SIZE, |room| {
                let want = room.len().min(READ_SIZE);
                std::io::Read::read(&mut file, &mut room[..want])
            })?;
            if n == 0 {
                break;
            }
            if !drain(&mut decoder, &[], &mut stats)? {
                return Ok(stats);
            }
        }
    }
    Ok(stats)
}

/// Bytes per read: a piece that stays in the core's L2 cache between the
/// read and the decode.
const READ_SIZE: usize = 256 << 10;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run() -> Result<()> {
    let wal = real_wal()?;
    let first = std::fs::read(&wal.segments[0])?;
    let header = read_segment_header(&first)?;
    let (start, segment_size) = (header.start, header.segment_size);
    let (Some(first_path), Some(last_path)) = (wal.segments.first(), wal.segments.last()) else {
        bail!("no segments");
    };

    // Both sides: seven runs in turn, from the (page-cached) files and from
    // memory; the median counts.
    let stats = read_and_decode(&wal.segments, start, segment_size)?;
    let end = stats.end;
    let records = stats.totals()[0];
    let span_mb = (end.0 - start.0) as f64 / 1e6;
    let segments: Vec<Vec<u8>> = wal
        .segments
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    if decode(&segments, start, segment_size)? != stats {
        bail!("decoding from memory and from the files disagree");
    }
    let mut ours = Vec::new();
    let mut in_memory = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..7 {
        let began = Instant::now();
        black_box(read_and_decode(&wal.segments, start, segment_size)?);
        ours.push(began.elapsed());
        let began = Instant::now();
        black_box(decode(&segments, start, segment_size)?);
        in_memory.push(began.elapsed());
        let began = Instant::now();
        let output = Command::new(wal.install.bin("pg_waldump"))
            .arg("--stats")
            .arg(first_path)
            .arg(last_path)
            .output()
            .context("run pg_waldump --stats")?;
        theirs.push(began.elapsed());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let theirs_totals = waldump_totals(&stdout)
            .with_context(|| format!("pg_waldump: {}", String::from_utf8_lossy(&output.stderr)))?;
        if theirs_totals != stats.totals() {
            bail!(
                "totals differ: pg_waldump {theirs_totals:?}, quire {:?}",
                stats.totals()
            );
        }
    }
    let (ours, in_memory, theirs) = (median(ours), median(in_memory), median(theirs));
    println!(
        "real WAL: {records} records, {span_mb:.1} MB from {start} to {end} in {} segments of {} MiB",
        wal.segments.len(),
        segment_size >> 20
    );
    let [_, record_bytes, image_bytes, _] = stats.totals();
    println!(
        "both count {records} records: {record_bytes} record bytes, {image_bytes} image bytes (totals equal)"
    );
    println!(
        "pg_waldump --stats:         {:>8.1} ms  {:>7.1} MB/s",
        theirs.as_secs_f64() * 1e3,
        span_mb / theirs.as_secs_f64()
    );
    println!(
        "quire read + decode:        {:>8.1} ms  {:>7.1} MB/s  ({:.2}x pg_waldump)",
        ours.as_secs_f64() * 1e3,
        span_mb / ours.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "quire decode (in memory):   {:>8.1} ms  {:>7.1} MB/s  ({:.2}x pg_waldump)",
        in_memory.as_secs_f64() * 1e3,
        span_mb / in_memory.as_secs_f64(),
        theirs.as_secs_f64() / in_memory.as_secs_f64()
    );

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let mut group = criterion.benchmark_group("wal_decode");
    group.throughput(Throughput::Bytes(end.0 - start.0));
    group.bench_function("stream_and_records_in_memory", |b| {
        b.iter(|| decode(black_box(&segments), start, segment_size));
    });
    group.finish();
    criterion.final_summary();
    Ok(())
}

fn main() -> Result<()> {
    run()
}
