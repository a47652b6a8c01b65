//! WAL redo round trips through real `postgres --wal-redo quire_walredo`
//! processes, on page chains cut from real pgbench WAL, with hdrhistogram
//! percentiles:
//!
//! - a ping (the protocol's floor: one pipe round trip, no page), beside
//!   the machine's floor for the same round trip (5 bytes echoed by `cat`);
//! - short chains (a full-page image and then 1, 2 or 3 records), one page
//!   per round trip, batched (`BATCH_SHORT` pages per round trip), and as
//!   `BATCH_SHORT` concurrent one-page requests (as many page reads of one
//!   tenant in flight), which the pool merges into shared round trips;
//! - long chains (an image and then 64 records), single and batched.
//!
//! The pool runs on an executor of its own (as on a server core); the
//! `cat` floor is measured outside it with blocking pipes.
//!
//! Every chain is a real page: the image is the full-page write the WAL
//! carries after a checkpoint and the records are those that followed it
//! on that page, so the mix (HOT updates of accounts, tellers and branches,
//! history inserts, index inserts) is pgbench's. Batched results are
//! checked byte for byte against the single ones before anything is
//! reported. The target is batched short-chain redo ≤ 10 µs per
//! page on average.
//!
//! Run: `cargo bench -p quire-bench --bench redo` (`QUIRE_BENCH_WAL_DIR`
//! reuses a directory of segments; otherwise pgbench writes them first).
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use hdrhistogram::Histogram;
use quire_bench::real_wal::real_wal;
use quire_cluster::RunAs;
use quire_io::{LocalConfig, run_local, spawn_local};
use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, RelTag};
use quire_postgres::wal::effects::{PageUpdate, page_effects};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::stream::{RawRecord, WalStreamDecoder};
use quire_redo::protocol::PageRequest;
use quire_redo::{RedoConfig, RedoPool};

const TENANT: u128 = 1;
/// Short chains measured (each one page).
const SHORT_CHAINS: usize = 4096;
/// Long chains measured.
const LONG_CHAINS: usize = 256;
const LONG_RECORDS: usize = 64;
const BATCH_SHORT: usize = 64;
const BATCH_LONG: usize = 16;
const PINGS: usize = 20_000;

/// One page to rebuild: its image and the records after it (indexes into
/// the record list).
struct Chain {
    rel: RelTag,
    block: u32,
    image: Box<[u8; BLCKSZ]>,
    records: Vec<usize>,
}

/// Every record that some chain uses, and the chains cut from the WAL.
struct Chains {
    records: Vec<RawRecord>,
    short: Vec<Chain>,
    long: Vec<Chain>,
}

fn maxalign(lsn: Lsn) -> Lsn {
    Lsn((lsn.0 + 7) & !7)
}

/// Walks the WAL: each page's full-page image opens a chain, the records
/// that follow on that page extend it; finished chains of enough records
/// become short (1, 2, 3 records in turn) and long (64) samples.
fn cut_chains() -> Result<Chains> {
    let wal = real_wal()?;
    let mut open: HashMap<(RelTag, u32), Chain> = HashMap::new();
    let mut records = Vec::new();
    let mut chains = Chains {
        records: Vec::new(),
        short: Vec::new(),
        long: Vec::new(),
    };
    let mut decoder: Option<WalStreamDecoder> = None;
    let finish = |chain: Chain, chains: &mut Chains| {
        if chain.records.len() >= LONG_RECORDS && chains.long.len() < LONG_CHAINS {
            let mut long = chain;
            long.records.truncate(LONG_RECORDS);
            chains.long.push(long);
        } else if chain.records.len() >= 3 && chains.short.len() < SHORT_CHAINS {
            let mut short = chain;
            short.records.truncate(1 + chains.short.len() % 3);
            chains.short.push(short);
        }
    };
    for path in &wal.segments {
        let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let header = read_segment_header(&bytes).map_err(|e| anyhow!("{e}"))?;
        let decoder =
            decoder.get_or_insert_with(|| WalStreamDecoder::new(header.start, header.segment_size));
        decoder.feed_owned(bytes);
        // The WAL ends where a record stops making sense (zeros past the
        // last insert).
        while let Ok(Some(record)) = decoder.next_record() {
            let parsed = decode_record(record.bytes).map_err(|e| anyhow!("{e}"))?;
            let end = maxalign(record.end);
            let updates = page_effects(&parsed, end).map_err(|e| anyhow!("{e}"))?;
            let mut index = None;
            for update in updates {
                let key = (update.rel, update.block.0);
                match update.update {
                    PageUpdate::Image(image) => {
                        let fresh = Chain {
                            rel: update.rel,
                            block: update.block.0,
                            image,
                            records: Vec::new(),
                        };
                        if let Some(done) = open.insert(key, fresh) {
                            finish(done, &mut chains);
                        }
                    }
                    PageUpdate::Apply { will_init: true } => {
                        if let Some(done) = open.remove(&key) {
                            finish(done, &mut chains);
                        }
                    }
                    PageUpdate::Apply { will_init: false } => {
                        if let Some(chain) = open.get_mut(&key) {
                            let i = *index.get_or_insert_with(|| {
                                records.push(RawRecord {
                                    start: record.start,
                                    end,
                                    bytes: record.bytes.to_vec(),
                                });
                                records.len() - 1
                            });
                            chain.records.push(i);
                        }
                    }
                }
            }
        }
    }
    for (_, chain) in open.drain() {
        finish(chain, &mut chains);
    }
    chains.records = records;
    ensure!(
        chains.short.len() >= 512 && chains.long.len() >= 16,
        "too few chains in the WAL: {} short, {} long",
        chains.short.len(),
        chains.long.len()
    );
    Ok(chains)
}

fn request<'a>(chain: &'a Chain, records: &'a [RawRecord]) -> PageRequest<'a> {
    PageRequest {
        rel: chain.rel,
        block: quire_postgres::types::BlockNo(chain.block),
        image: Some(&chain.image[..]),
        records: chain
            .records
            .iter()
            .map(|&i| (records[i].start, records[i].end, &records[i].bytes[..]))
            .collect(),
    }
}

struct Measured {
    per_page: Histogram<u64>,
    pages: u64,
    elapsed: Duration,
    results: Vec<Box<[u8; BLCKSZ]>>,
}

/// Rebuilds `chains` in round trips of `batch` pages; the histogram holds
/// nanoseconds per page (a round trip's time over its pages).
async fn rebuild(
    pool: &RedoPool,
    chains: &[Chain],
    records: &[RawRecord],
    batch: usize,
) -> Result<Measured> {
    let mut per_page = Histogram::<u64>::new(3)?;
    let mut results = Vec::with_capacity(chains.len());
    let began = Instant::now();
    for group in chains.chunks(batch) {
        let requests: Vec<PageRequest<'_>> = group.iter().map(|c| request(c, records)).collect();
        let started = Instant::now();
        let pages = pool.rebuild_pages(TENANT, &requests).await;
        let nanos = started.elapsed().as_nanos() as u64 / group.len() as u64;
        per_page.record_n(nanos.max(1), group.len() as u64)?;
        for page in pages {
            results.push(page.map_err(|e| anyhow!("redo failed: {e}"))?);
        }
    }
    Ok(Measured {
        per_page,
        pages: chains.len() as u64,
        elapsed: began.elapsed(),
        results,
    })
}

/// Rebuilds the short chains as `in_flight` concurrent one-page requests
/// at a time (one task each, as page reads of one tenant); the histogram
/// holds nanoseconds per page (a group's time over its pages). Returns the
/// round trips they took too.
async fn rebuild_concurrently(
    pool: &Rc<RedoPool>,
    chains: &Rc<Chains>,
    in_flight: usize,
) -> Result<(Measured, u64)> {
    let mut per_page = Histogram::<u64>::new(3)?;
    let mut results = Vec::with_capacity(chains.short.len());
    let round_trips = pool.stats().round_trips;
    let began = Instant::now();
    let indexes: Vec<usize> = (0..chains.short.len()).collect();
    for group in indexes.chunks(in_flight) {
        let started = Instant::now();
        let tasks: Vec<_> = group
            .iter()
            .map(|&i| {
                let (pool, chains) = (Rc::clone(pool), Rc::clone(chains));
                spawn_local(async move {
                    let request = request(&chains.short[i], &chains.records);
                    pool.rebuild_pages(TENANT, &[request]).await.pop()
                })
            })
            .collect();
        for task in tasks {
            let page = task.await.context("no result")?;
            results.push(page.map_err(|e| anyhow!("redo failed: {e}"))?);
        }
        let nanos = started.elapsed().as_nanos() as u64 / group.len() as u64;
        per_page.record_n(nanos.max(1), group.len() as u64)?;
    }
    let measured = Measured {
        per_page,
        pages: chains.short.len() as u64,
        elapsed: began.elapsed(),
        results,
    };
    Ok((measured, pool.stats().round_trips - round_trips))
}

fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1000.0
}

fn report(name: &str, m: &Measured) {
    let h = &m.per_page;
    println!(
        "{name:<34} {:>6} pages  mean {:>7.2} µs/page  p50 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>8.2}  ({:.0} pages/s)",
        m.pages,
        h.mean() / 1000.0,
        micros(h.value_at_quantile(0.5)),
        micros(h.value_at_quantile(0.99)),
        micros(h.value_at_quantile(0.999)),
        micros(h.max()),
        m.pages as f64 / m.elapsed.as_secs_f64()
    );
}

async fn pool(dir: &tempfile::TempDir) -> Result<Rc<RedoPool>> {
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let install = quire_cluster::PgInstall::locate()?;
    let config = RedoConfig {
        postgres: install.bin("postgres"),
        run_as: RunAs::detect()?.ids(),
        scratch_root: dir.path().join("redo"),
        timeout: Duration::from_secs(60),
    };
    RedoPool::new(config, 1, Duration::from_secs(600))
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// The machine's floor for a round trip through two pipes and another
/// process: 5 bytes echoed by `cat`, as many times as the pings.
fn pipe_floor() -> Result<Measured> {
    use std::io::{Read, Write};
    let mut cat = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start cat")?;
    let (mut to_cat, mut from_cat) = (
        cat.stdin.take().context("cat's stdin")?,
        cat.stdout.take().context("cat's stdout")?,
    );
    let mut per_page = Histogram::<u64>::new(3)?;
    let mut echo = [0u8; 5];
    let began = Instant::now();
    for _ in 0..PINGS {
        let started = Instant::now();
        to_cat.write_all(b"Y\0\0\0\0")?;
        from_cat.read_exact(&mut echo)?;
        per_page.record(started.elapsed().as_nanos() as u64)?;
    }
    let elapsed = began.elapsed();
    drop(to_cat);
    cat.wait()?;
    Ok(Measured {
        per_page,
        pages: PINGS as u64,
        elapsed,
        results: Vec::new(),
    })
}

fn main() -> Result<()> {
    let chains = cut_chains()?;
    let short_records: usize = chains.short.iter().map(|c| c.records.len()).sum();
    println!(
        "chains from real pgbench WAL: {} short ({} records, 1-3 each), {} long ({LONG_RECORDS} records each)",
        chains.short.len(),
        short_records,
        chains.long.len()
    );
    let floor = pipe_floor()?;
    let executor = LocalConfig {
        name: "quire-bench-redo".into(),
        ..LocalConfig::default()
    };
    run_local(&executor, move || measure(chains, floor)).map_err(|e| anyhow!("{e}"))?
}

async fn measure(chains: Chains, floor: Measured) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("quire-bench-redo-")
        .tempdir()?;
    let pool = pool(&dir).await?;
    pool.ping(TENANT).await.map_err(|e| anyhow!("{e}"))?;

    let mut pings = Histogram::<u64>::new(3)?;
    let began = Instant::now();
    for _ in 0..PINGS {
        let started = Instant::now();
        pool.ping(TENANT).await.map_err(|e| anyhow!("{e}"))?;
        pings.record(started.elapsed().as_nanos() as u64)?;
    }
    report(
        "ping (round trip, no page)",
        &Measured {
            per_page: pings,
            pages: PINGS as u64,
            elapsed: began.elapsed(),
            results: Vec::new(),
        },
    );
    report("pipe round trip floor (cat echo)", &floor);

    // Warm-up: every record's bytes and the process's caches.
    rebuild(&pool, &chains.short, &chains.records, BATCH_SHORT).await?;
    let short_single = rebuild(&pool, &chains.short, &chains.records, 1).await?;
    let short_batched = rebuild(&pool, &chains.short, &chains.records, BATCH_SHORT).await?;
    // For profiling: QUIRE_BENCH_REDO_PROFILE=N repeats the batched short
    // chains N more times.
    let repeats: usize = std::env::var("QUIRE_BENCH_REDO_PROFILE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..repeats {
        rebuild(&pool, &chains.short, &chains.records, BATCH_SHORT).await?;
    }
    let long_single = rebuild(&pool, &chains.long, &chains.records, 1).await?;
    let long_batched = rebuild(&pool, &chains.long, &chains.records, BATCH_LONG).await?;
    let chains = Rc::new(chains);
    let (short_concurrent, concurrent_round_trips) =
        rebuild_concurrently(&pool, &chains, BATCH_SHORT).await?;
    ensure!(
        short_single.results == short_batched.results,
        "batched short-chain pages differ from single ones"
    );
    ensure!(
        short_single.results == short_concurrent.results,
        "concurrently requested short-chain pages differ from single ones"
    );
    ensure!(
        long_single.results == long_batched.results,
        "batched long-chain pages differ from single ones"
    );
    for (chain, page) in chains.short.iter().zip(&short_single.results) {
        ensure!(
            page[..] != chain.image[..],
            "redo left {} block {} unchanged",
            chain.rel.rel_number,
            chain.block
        );
    }
    report("short chain (1-3), single", &short_single);
    report(
        &format!("short chain (1-3), batch of {BATCH_SHORT}"),
        &short_batched,
    );
    report(
        &format!("short chain (1-3), {BATCH_SHORT} concurrent"),
        &short_concurrent,
    );
    report("long chain (64), single", &long_single);
    report(
        &format!("long chain (64), batch of {BATCH_LONG}"),
        &long_batched,
    );
    println!(
        "batched short-chain redo: {:.2} µs per page on average (target ≤ 10); {:.1}× faster than single",
        short_batched.per_page.mean() / 1000.0,
        short_single.per_page.mean() / short_batched.per_page.mean()
    );
    println!(
        "{} concurrent one-page requests: {} pages in {concurrent_round_trips} round trips ({:.1} pages per round trip)",
        BATCH_SHORT,
        short_concurrent.pages,
        short_concurrent.pages as f64 / concurrent_round_trips.max(1) as f64
    );
    let stats = pool.stats();
    println!(
        "redo pool: {} round trips, {} pages, {} records applied by Postgres",
        stats.round_trips, stats.process_pages, stats.postgres_records
    );
    pool.shutdown().await;
    Ok(())
}
