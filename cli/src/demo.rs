//! `quire demo`: the system end to end on loopback, with real figures.
//!
//! 1. `quire start` in a scratch directory: three safekeepers, a
//!    pageserver, a tenant bootstrapped from initdb, a compute with
//!    `quire_smgr` (every permanent page read from the pageserver).
//! 2. A table gets rows; the LSN after the first three is noted.
//! 3. pgbench (select-only and TPC-B) on the compute beside vanilla
//!    Postgres 17 with the same `shared_buffers`, the data four times
//!    shared buffers: the TPS of both, their ratio, the compute-side
//!    GetPage p50/p99 (after `pgbench -i` the pageserver is let catch up
//!    and compact into image layers).
//! 4. The compute stopped and a new one started from an empty data
//!    directory: the rows and pgbench's tables are still there.
//! 5. A branch at the noted LSN with a compute of its own: it shows that
//!    moment's three rows, and a write on it does not reach the parent.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use quire_cluster::{PgCluster, PgClusterOptions};

use crate::bench_pgbench::{
    Mode, compute_port, getpage_latency, init_args, pgbench, pgbench_report, psql_on,
    quire_command, run_args, start_local_cluster,
};
use crate::compute::locate_install;

/// Options of `quire demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// `shared_buffers` of the compute and of vanilla Postgres.
    #[arg(long, default_value = "16MB")]
    shared_buffers: String,
    /// The compute's `quire.local_cache_size` (`0` for none: every page
    /// shared buffers lack comes from the pageserver). Smaller than the
    /// data by default, so that the demo's reads reach the pageserver.
    #[arg(long, default_value = "16MB")]
    local_cache_size: String,
    /// pgbench scale (about 15 MB each: 4 is four times 16MB).
    #[arg(long, default_value_t = 4)]
    scale: u32,
    /// Seconds of each pgbench run.
    #[arg(long, default_value_t = 15)]
    seconds: u32,
    /// pgbench clients.
    #[arg(long, default_value_t = 4)]
    clients: u32,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let install = locate_install(None)?;
    let scratch = tempfile::Builder::new()
        .prefix("quire-demo-")
        .tempdir()
        .context("create a scratch directory")?;
    let dir = scratch.path().join("cluster");
    let dir_text = dir.to_string_lossy().into_owned();
    let stop = StopOnDrop(dir_text.clone());

    println!("[1/5] quire start: safekeepers, pageserver, tenant from initdb, compute");
    let began = Instant::now();
    let started = start_local_cluster(
        &install,
        &dir_text,
        &args.shared_buffers,
        &args.local_cache_size,
    )?;
    let port = compute_port(&started)?;
    if let Some(line) = started.lines().find(|l| l.starts_with("compute: ")) {
        println!("{line}");
    }
    println!("  up in {:.1} s", began.elapsed().as_secs_f64());

    println!("[2/5] rows, and the LSN after the first three");
    psql_on(&install, port, "CREATE TABLE moments (n int, noted text)")?;
    psql_on(
        &install,
        port,
        "INSERT INTO moments VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    )?;
    let past = psql_on(&install, port, "SELECT pg_current_wal_insert_lsn()")?;
    psql_on(
        &install,
        port,
        "INSERT INTO moments VALUES (4, 'four'), (5, 'five'), (6, 'six')",
    )?;
    println!("  6 rows; the branch point {past} is after row 3");

    println!(
        "[3/5] pgbench -s {} on Quire beside vanilla Postgres, shared_buffers {}",
        args.scale, args.shared_buffers
    );
    compare(&install, port, &dir, args)?;

    println!("[4/5] the compute restarted from an empty data directory");
    quire_command(&["compute", "stop", "--cluster", &dir_text])?;
    let restarted = quire_command(&["compute", "start", "--cluster", &dir_text])?;
    if let Some(steps) = restarted
        .lines()
        .find(|l| l.starts_with("compute start: election_ms="))
    {
        println!("  {steps}");
    }
    let port = compute_port(&restarted)?;
    let rows = psql_on(&install, port, "SELECT count(*) FROM moments")?;
    let accounts = psql_on(&install, port, "SELECT count(*) FROM pgbench_accounts")?;
    println!("  still there: {rows} rows in moments, {accounts} pgbench accounts");
    ensure!(rows == "6", "the restarted compute sees {rows} rows, not 6");

    println!("[5/5] a branch at {past} with its own compute");
    let branched = quire_command(&[
        "branch", "create", "past", "--at", &past, "--dir", &dir_text,
    ])?;
    let branch_port = compute_port(&branched)?;
    let seen = psql_on(
        &install,
        branch_port,
        "SELECT string_agg(noted, ',' ORDER BY n) FROM moments",
    )?;
    println!("  the branch sees: {seen}");
    ensure!(seen == "one,two,three", "the branch sees {seen:?}");
    psql_on(
        &install,
        branch_port,
        "INSERT INTO moments VALUES (7, 'branch only')",
    )?;
    let parent = psql_on(&install, port, "SELECT count(*) FROM moments")?;
    println!("  a row written on the branch; the parent still has {parent}");
    ensure!(
        parent == "6",
        "the parent sees {parent} rows after a branch write"
    );
    drop(stop);
    println!("quire demo: done");
    Ok(())
}

/// select-only and TPC-B on the compute and on vanilla Postgres.
fn compare(
    install: &quire_cluster::PgInstall,
    port: u16,
    dir: &std::path::Path,
    args: &DemoArgs,
) -> Result<()> {
    psql_on(install, port, "CREATE EXTENSION IF NOT EXISTS quire_smgr")?;
    let mut vanilla = PgCluster::create(
        install,
        PgClusterOptions::default()
            .setting("shared_buffers", &format!("'{}'", args.shared_buffers)),
    )?;
    vanilla.start()?;
    let bound = Duration::from_secs(u64::from(args.seconds) * 3 + 600);
    let client = |p: u16| crate::bench_pgbench::compute_client(install, p, "pgbench");
    pgbench_report(client(port), &init_args(args.scale), bound)?;
    let settled = crate::bench_pgbench::settle(install, port, dir)?;
    println!(
        "  pgbench -i done; the pageserver caught up and compacted into image layers in {:.1} s",
        settled.as_secs_f64()
    );
    pgbench_report(vanilla.client("pgbench"), &init_args(args.scale), bound)?;
    for mode in [Mode::SelectOnly, Mode::Tpcb] {
        let run = run_args(mode, args.clients, args.seconds);
        psql_on(install, port, "SELECT quire_smgr_reset_stats()")?;
        let quire = pgbench(client(port), &run, bound)?;
        let (requests, p50, p99) = getpage_latency(install, port)?;
        let plain = pgbench(vanilla.client("pgbench"), &run, bound)?;
        println!(
            "pgbench: mode={} size=large scale={} quire_tps={:.1} vanilla_tps={:.1} ratio={:.3}",
            mode.name(),
            args.scale,
            quire.tps,
            plain.tps,
            quire.tps / plain.tps.max(f64::MIN_POSITIVE)
        );
        println!(
            "  compute-side GetPage p50 {p50} us, p99 {p99} us over {requests} requests; pgbench mean latency quire {:.3} ms, vanilla {:.3} ms",
            quire.latency_ms_mean, plain.latency_ms_mean
        );
    }
    vanilla.stop()
}

/// Stops the local cluster when the demo ends, however it ends.
struct StopOnDrop(String);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = quire_command(&["stop", "--dir", &self.0]);
    }
}
