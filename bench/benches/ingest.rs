//! WAL ingest on one core, in a release build, beside the rate Postgres
//! generated that WAL under pgbench, measured in the same run:
//!
//! 1. initdb a cluster and keep a copy (the base), `pgbench -i` at scale 10,
//!    then TPC-B with 4 clients for `QUIRE_BENCH_INGEST_SECONDS` (default
//!    60): WAL bytes written during the TPC-B phase over its duration is
//!    the generation rate;
//! 2. CHECKPOINT, clean stop, then `pageserver::verify` on one pinned
//!    executor: bootstrap from the base, ingest all the WAL (timed), rebuild
//!    and compare every page. Printed: ingest MB/s, its ratio to the
//!    generation rate, the share of records applied in Rust and by
//!    Postgres, and the verification's own summary (it must find every page
//!    identical, or the bench fails).
//!
//! Run: `cargo bench -p quire-bench --bench ingest`.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, RunAs, run_checked};
use quire_io::{ExecutorConfig, run_per_core};
use quire_pageserver::verify::VerifyReport;
use quire_redo::{RedoConfig, RedoPool};

fn seconds() -> u64 {
    std::env::var("QUIRE_BENCH_INGEST_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn lsn_bytes(pg: &PgCluster) -> Result<u64> {
    let text = pg.psql("postgres", "SELECT pg_current_wal_lsn() - '0/0'")?;
    text.trim()
        .parse()
        .with_context(|| format!("WAL position {text:?}"))
}

fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// `pageserver::verify` on one executor pinned to CPU 0: its report and
/// what it printed.
fn verify_on_one_core(
    install: &PgInstall,
    base: &std::path::Path,
    datadir: &std::path::Path,
) -> Result<(VerifyReport, String)> {
    let work = tempfile::Builder::new()
        .prefix("quire-bench-ingest-")
        .tempdir()?;
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let config = RedoConfig {
        postgres: install.bin("postgres"),
        run_as: RunAs::detect()?.ids(),
        scratch_root: work.path().join("redo"),
        timeout: Duration::from_secs(60),
    };
    let executor = ExecutorConfig {
        cpus: vec![0],
        io_memory_bytes: 2 * 1024 * 1024,
        name: "quire-bench-ingest".into(),
        spin_before_park: None,
    };
    let (work_path, base_path, data_path) =
        (work.path().to_owned(), base.to_owned(), datadir.to_owned());
    let (_, mut results) = run_per_core(&executor, move |_| {
        let (config, work, base, data) = (
            config.clone(),
            work_path.clone(),
            base_path.clone(),
            data_path.clone(),
        );
        async move {
            let pool = RedoPool::new(config, 1, Duration::from_secs(60))
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let mut out = Vec::new();
            let verified = quire_pageserver::verify::verify(
                &base,
                &data,
                &work,
                Rc::clone(&pool),
                None,
                &mut out,
            )
            .await;
            pool.shutdown().await;
            let report = verified?;
            anyhow::Ok((report, out))
        }
    })
    .map_err(|e| anyhow!("{e}"))?;
    let (report, out): (VerifyReport, Vec<u8>) =
        results.pop().context("no result from the executor")??;
    Ok((report, String::from_utf8_lossy(&out).into_owned()))
}

fn main() -> Result<()> {
    let seconds = seconds();
    let install = PgInstall::locate()?;
    let options = PgClusterOptions::default()
        .setting("wal_keep_size", "'16GB'")
        .setting("max_wal_size", "'4GB'");
    let mut pg = PgCluster::create(&install, options)?;
    let datadir = pg.datadir();
    let base = datadir.with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(&datadir).arg(&base),
        Duration::from_secs(60),
    )?;
    pg.start()?;
    run_checked(
        pg.client("pgbench").args(["-i", "-q", "-s", "10"]),
        Duration::from_secs(600),
    )?;
    let before = lsn_bytes(&pg)?;
    let began = Instant::now();
    let bench = run_checked(
        pg.client("pgbench")
            .args(["-c", "4", "-j", "2", "-T", &seconds.to_string()]),
        Duration::from_secs(seconds + 300),
    )?;
    let generation_time = began.elapsed();
    let generated = lsn_bytes(&pg)? - before;
    let summary = quire_cluster::PgbenchSummary::parse(&String::from_utf8_lossy(&bench.stdout))?;
    let generation_rate = generated as f64 / 1e6 / generation_time.as_secs_f64();
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;

    let verified = verify_on_one_core(&install, &base, &datadir);
    let _ = std::fs::remove_dir_all(&base);
    let (report, text) = verified?;
    let ingest = report.ingest;
    let ingest_rate = ingest.bytes as f64 / 1e6 / report.ingest_time.as_secs_f64();
    println!(
        "pgbench scale 10, {seconds} s, 4 clients: {:.0} tps; generated {:.1} MB of WAL in {:.1} s = {generation_rate:.2} MB/s",
        summary.tps,
        generated as f64 / 1e6,
        generation_time.as_secs_f64()
    );
    println!(
        "ingest (one core, release, incl. pgbench -i): {} records, {:.1} MB in {:.2} s = {ingest_rate:.1} MB/s, {:.1}x the generation rate",
        ingest.records,
        ingest.bytes as f64 / 1e6,
        report.ingest_time.as_secs_f64(),
        ingest_rate / generation_rate
    );
    println!(
        "records: {:.1}% need Postgres redo, {:.1}% Rust redo (SLRU bits, visibility map), {:.1}% full-page images only, {:.1}% change no page",
        percent(ingest.postgres_redo_records, ingest.records),
        percent(ingest.rust_redo_records, ingest.records),
        percent(ingest.image_records, ingest.records),
        percent(ingest.other_records, ingest.records)
    );
    let page_updates = ingest.page_images + ingest.page_records + ingest.rust_page_records;
    println!(
        "page updates: {:.1}% full-page images (Rust), {:.1}% Postgres records, {:.1}% Rust records (visibility-map clears)",
        percent(ingest.page_images, page_updates),
        percent(ingest.page_records, page_updates),
        percent(ingest.rust_page_records, page_updates)
    );
    let last = text.lines().last().unwrap_or_default();
    println!("{last}");
    ensure!(
        report.different == 0 && report.compared > 20_000,
        "verification failed: {last}"
    );
    Ok(())
}
