//! `quire bench pgbench`: pgbench on a compute over Quire beside vanilla
//! Postgres 17 with the same `shared_buffers`, in one run, for each mode
//! (select-only, TPC-B, simple-update) and two sizes: the data fits in
//! shared buffers, and the data is about four times shared buffers.
//!
//! Quire's side is a local cluster (`quire start` in a scratch directory:
//! three safekeepers with quorum commit, a pageserver, a compute with
//! `quire_smgr`); vanilla's is one Postgres on local disk from the same
//! install. Both get the same `pgbench -i` scale, clients and duration,
//! runs alternating Quire then vanilla per mode. After `pgbench -i` the
//! pageserver is let catch up and compact its timeline into image layers
//! (`POST …/compact`, what its background maintenance does in time), so
//! that runs read images rather than replay the load's WAL. Each case
//! ends with one
//! line a script can read:
//!
//! `pgbench: mode=… size=… scale=… quire_tps=… vanilla_tps=… ratio=…`
//!
//! followed by the latencies: pgbench's mean transaction latency on both,
//! and the compute-side GetPage p50/p99 of the Quire run (the storage
//! manager's histogram, reset before each run). At the end the compute is
//! restarted once from an empty data directory and the start is timed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, PgbenchSummary, run_bounded};

use crate::compute::locate_install;

/// A pgbench workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `pgbench -S`: one indexed read per transaction.
    SelectOnly,
    /// pgbench's default TPC-B-like transaction.
    Tpcb,
    /// `pgbench -N`: TPC-B without the tellers' and branches' updates.
    SimpleUpdate,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::SelectOnly => "select-only",
            Mode::Tpcb => "tpcb",
            Mode::SimpleUpdate => "simple-update",
        }
    }

    fn flag(self) -> Option<&'static str> {
        match self {
            Mode::SelectOnly => Some("-S"),
            Mode::Tpcb => None,
            Mode::SimpleUpdate => Some("-N"),
        }
    }
}

/// Options of `quire bench pgbench`.
#[derive(Args)]
pub struct PgbenchArgs {
    /// The Postgres install with Quire's extensions (default:
    /// `QUIRE_PG_PREFIX`, else what `postgres/extensions.sh --prefix` says).
    #[arg(long)]
    pg_prefix: Option<PathBuf>,
    /// `shared_buffers` of both servers.
    #[arg(long, default_value = "64MB")]
    shared_buffers: String,
    /// pgbench scale of the case whose data fits in shared buffers (a
    /// scale is about 15 MB).
    #[arg(long, default_value_t = 2)]
    fits_scale: u32,
    /// pgbench scale of the case whose data is about four times shared
    /// buffers.
    #[arg(long, default_value_t = 16)]
    large_scale: u32,
    /// The workloads, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "select-only,tpcb,simple-update"
    )]
    modes: Vec<Mode>,
    /// The compute's `quire.local_cache_size` (its cache of pages that
    /// left shared buffers; `0` for none). Vanilla's counterpart is the
    /// kernel's page cache, which holds all of its data here.
    #[arg(long, default_value = crate::compute::LOCAL_CACHE_DEFAULT)]
    local_cache_size: String,
    /// pgbench clients (and threads: at most 2).
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Seconds of each run.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// The local cluster's directory (default: a new temporary one,
    /// removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The Quire cluster `quire start` made; stopped when dropped.
struct QuireCluster {
    dir: PathBuf,
    port: u16,
}

impl Drop for QuireCluster {
    fn drop(&mut self) {
        let _ = quire_command(&["stop", "--dir", &self.dir.to_string_lossy()]);
    }
}

/// Runs this binary with `args` (bounded); its stdout.
pub(crate) fn quire_command(args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("find the quire binary")?;
    let output = run_bounded(Command::new(exe).args(args), Duration::from_secs(1800))?;
    ensure!(
        output.status.success(),
        "quire {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `quire start` of a local cluster in `dir` on `install` whose compute
/// has `shared_buffers`; what it printed.
pub(crate) fn start_local_cluster(
    install: &PgInstall,
    dir: &str,
    shared_buffers: &str,
    local_cache_size: &str,
) -> Result<String> {
    let prefix = install.prefix().to_string_lossy().into_owned();
    quire_command(&[
        "start",
        "--dir",
        dir,
        "--pg-prefix",
        &prefix,
        "--shared-buffers",
        shared_buffers,
        "--local-cache-size",
        local_cache_size,
    ])
}

/// The port of the (first) `compute: postgresql://user@host:PORT/db` line.
pub(crate) fn compute_port(output: &str) -> Result<u16> {
    let url = output
        .lines()
        .find_map(|line| {
            line.split_once("compute: postgresql://")
                .map(|(_, url)| url)
        })
        .with_context(|| format!("no compute: line in {output:?}"))?;
    let after_host = url
        .rsplit_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let port = after_host.split('/').next().unwrap_or_default();
    port.parse().with_context(|| format!("the port of {url:?}"))
}

/// Waits until the local cluster's pageserver has ingested everything the
/// compute on `port` flushed, then has it compact the timeline into image
/// layers (`POST …/compact`), as its background maintenance does in time:
/// runs then read images, not the WAL `pgbench -i` just wrote.
pub(crate) fn settle(install: &PgInstall, port: u16, dir: &std::path::Path) -> Result<Duration> {
    let began = Instant::now();
    let layout = crate::local::layout_of(dir)?;
    let cluster = crate::local::cluster_file::LocalCluster::read(&layout)?;
    let flushed: quire_postgres::Lsn = psql_on(install, port, "SELECT pg_current_wal_flush_lsn()")?
        .parse()
        .context("the compute's flush LSN")?;
    let base = format!(
        "http://{}/v1/tenant/{}/timeline/{}",
        cluster.pageserver.http, cluster.tenant_id, cluster.timeline_id
    );
    loop {
        let status: serde_json::Value = ureq::get(&base)
            .timeout(Duration::from_secs(30))
            .call()
            .with_context(|| format!("GET {base}"))?
            .into_json()
            .with_context(|| format!("GET {base}"))?;
        let ingested: quire_postgres::Lsn = status["ingested_lsn"]
            .as_str()
            .unwrap_or("0/0")
            .parse()
            .with_context(|| format!("ingested_lsn in {status}"))?;
        if ingested >= flushed {
            break;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the pageserver did not ingest up to {flushed} in 10 min: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("{base}/compact");
    ureq::post(&url)
        .timeout(Duration::from_secs(1800))
        .call()
        .with_context(|| format!("POST {url}"))?;
    Ok(began.elapsed())
}

/// A client program of `install` against the compute on `port`.
pub(crate) fn compute_client(install: &PgInstall, port: u16, program: &str) -> Command {
    let mut command = Command::new(install.bin(program));
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            quire_cluster::SUPERUSER,
        ])
        .stdin(Stdio::null());
    command
}

pub(crate) fn psql_on(install: &PgInstall, port: u16, sql: &str) -> Result<String> {
    let mut command = compute_client(install, port, "psql");
    command.args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        "postgres",
        "-c",
        sql,
    ]);
    let output = run_bounded(&mut command, Duration::from_secs(300))?;
    ensure!(
        output.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs pgbench with `args` to completion; what it printed.
pub(crate) fn pgbench_report(
    mut command: Command,
    args: &[String],
    bound: Duration,
) -> Result<String> {
    command.args(args);
    let output = run_bounded(&mut command, bound)?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "pgbench {args:?} failed: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(report)
}

/// A pgbench run's report, parsed.
pub(crate) fn pgbench(
    command: Command,
    args: &[String],
    bound: Duration,
) -> Result<PgbenchSummary> {
    PgbenchSummary::parse(&pgbench_report(command, args, bound)?)
}

pub(crate) fn init_args(scale: u32) -> Vec<String> {
    ["-i", "-q", "-s", &scale.to_string(), "postgres"]
        .iter()
        .map(|&a| a.to_owned())
        .collect()
}

pub(crate) fn run_args(mode: Mode, clients: u32, seconds: u32) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-n".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        clients.min(2).to_string(),
        "-T".into(),
        seconds.to_string(),
    ];
    if let Some(flag) = mode.flag() {
        args.push(flag.into());
    }
    args.push("postgres".into());
    args
}

/// pgbench with a per-transaction log under `logs` (a new directory): its
/// report, and the p50/p99 of its transactions' latencies as text.
pub(crate) fn pgbench_logged(
    command: Command,
    args: &[String],
    bound: Duration,
    logs: &std::path::Path,
) -> Result<(PgbenchSummary, String)> {
    std::fs::create_dir_all(logs).with_context(|| format!("create {}", logs.display()))?;
    let prefix = logs.join("tx");
    let mut logged = vec![
        "-l".to_owned(),
        format!("--log-prefix={}", prefix.display()),
    ];
    logged.extend_from_slice(args);
    let summary = pgbench(command, &logged, bound)?;
    // Each line: client, transaction, latency in microseconds, script, time.
    let mut micros: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(logs).with_context(|| format!("list {}", logs.display()))? {
        let path = entry?.path();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        micros.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    micros.sort_unstable();
    let at = |q: f64| -> String {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into the sorted latencies"
        )]
        let index = ((micros.len() as f64 - 1.0) * q).round().max(0.0) as usize;
        micros.get(index).map_or_else(
            || "-".to_owned(),
            |us| format!("{}.{:03}", us / 1000, us % 1000),
        )
    };
    Ok((summary, format!("{}/{} ms", at(0.50), at(0.99))))
}

/// The local cache's hits and misses since the last reset, as text.
fn local_cache_hits(install: &PgInstall, port: u16) -> Result<String> {
    let row = psql_on(
        install,
        port,
        "SELECT string_agg(value::text, '|' ORDER BY name) FROM quire_smgr_stats() WHERE name IN ('local_cache_hits', 'local_cache_misses')",
    )?;
    let mut fields = row.split('|');
    let hits = fields.next().unwrap_or("0");
    let misses = fields.next().unwrap_or("0");
    Ok(format!("{hits} hits, {misses} misses"))
}

/// The compute-side GetPage figures since the last reset: requests, p50, p99.
pub(crate) fn getpage_latency(install: &PgInstall, port: u16) -> Result<(u64, String, String)> {
    let row = psql_on(
        install,
        port,
        "SELECT requests, coalesce(p50_us::text, '-'), coalesce(p99_us::text, '-') FROM quire_getpage_latency()",
    )?;
    let mut fields = row.split('|');
    let requests = fields.next().unwrap_or("0").parse().unwrap_or(0);
    let p50 = fields.next().unwrap_or("-").to_owned();
    let p99 = fields.next().unwrap_or("-").to_owned();
    Ok((requests, p50, p99))
}

pub fn run(args: &PgbenchArgs) -> Result<()> {
    let install = locate_install(args.pg_prefix.as_deref())?;
    let scratch = tempfile::Builder::new()
        .prefix("quire-bench-pgbench-")
        .tempdir()
        .context("create a scratch directory")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("cluster"));
    let dir_text = dir.to_string_lossy().into_owned();
    let began = Instant::now();
    let started = start_local_cluster(
        &install,
        &dir_text,
        &args.shared_buffers,
        &args.local_cache_size,
    )?;
    let quire = QuireCluster {
        dir: dir.clone(),
        port: compute_port(&started)?,
    };
    println!(
        "quire: a local cluster in {} in {:.1} s, compute on port {}, shared_buffers {}, local cache {}",
        dir.display(),
        began.elapsed().as_secs_f64(),
        quire.port,
        args.shared_buffers,
        args.local_cache_size
    );
    psql_on(
        &install,
        quire.port,
        "CREATE EXTENSION IF NOT EXISTS quire_smgr",
    )?;
    let mut vanilla = PgCluster::create(
        &install,
        PgClusterOptions::default()
            .setting("shared_buffers", &format!("'{}'", args.shared_buffers))
            .setting("max_connections", "100"),
    )?;
    vanilla.start()?;
    println!(
        "vanilla: Postgres on port {}, shared_buffers {}",
        vanilla.port(),
        args.shared_buffers
    );

    let bound = Duration::from_secs(u64::from(args.seconds) * 3 + 600);
    for (size, scale) in [("fits", args.fits_scale), ("large", args.large_scale)] {
        let init = Instant::now();
        pgbench_report(
            compute_client(&install, quire.port, "pgbench"),
            &init_args(scale),
            bound,
        )?;
        let quire_init = init.elapsed();
        let settled = settle(&install, quire.port, &dir)?;
        let init = Instant::now();
        pgbench_report(vanilla.client("pgbench"), &init_args(scale), bound)?;
        println!(
            "size={size}: pgbench -i -s {scale}: quire {:.1} s (then ingest caught up and compacted into image layers in {:.1} s), vanilla {:.1} s",
            quire_init.as_secs_f64(),
            settled.as_secs_f64(),
            init.elapsed().as_secs_f64()
        );
        for &mode in &args.modes {
            let case = Case {
                install: &install,
                port: quire.port,
                vanilla: &vanilla,
                logs: scratch.path().join(format!("log-{size}-{}", mode.name())),
                bound,
            };
            case.run(mode, args, size, scale)?;
        }
    }
    vanilla.stop()?;
    time_compute_restart(&dir_text)?;
    drop(quire);
    Ok(())
}

/// One mode of one size, on Quire then on vanilla.
struct Case<'a> {
    install: &'a PgInstall,
    port: u16,
    vanilla: &'a PgCluster,
    logs: PathBuf,
    bound: Duration,
}

impl Case<'_> {
    /// Runs it and prints its `pgbench:` line and its latencies.
    fn run(&self, mode: Mode, args: &PgbenchArgs, size: &str, scale: u32) -> Result<()> {
        let (install, port, bound) = (self.install, self.port, self.bound);
        let run = run_args(mode, args.clients, args.seconds);
        psql_on(install, port, "SELECT quire_smgr_reset_stats()")?;
        let (on_quire, quire_latency) = pgbench_logged(
            compute_client(install, port, "pgbench"),
            &run,
            bound,
            &self.logs.join("quire"),
        )?;
        let (requests, p50, p99) = getpage_latency(install, port)?;
        let local = local_cache_hits(install, port)?;
        let (on_vanilla, vanilla_latency) = pgbench_logged(
            self.vanilla.client("pgbench"),
            &run,
            bound,
            &self.logs.join("vanilla"),
        )?;
        let ratio = if on_vanilla.tps > 0.0 {
            on_quire.tps / on_vanilla.tps
        } else {
            0.0
        };
        println!(
            "pgbench: mode={} size={size} scale={scale} quire_tps={:.1} vanilla_tps={:.1} ratio={ratio:.3}",
            mode.name(),
            on_quire.tps,
            on_vanilla.tps
        );
        println!(
            "  latency: pgbench mean quire {:.3} ms, vanilla {:.3} ms; pgbench p50/p99 quire {quire_latency}, vanilla {vanilla_latency}; compute-side GetPage p50 {p50} us, p99 {p99} us over {requests} requests; local cache {local}",
            on_quire.latency_ms_mean, on_vanilla.latency_ms_mean
        );
        Ok(())
    }
}

/// Stops the compute and starts a new one from an empty data directory;
/// prints compute control's step times.
fn time_compute_restart(dir: &str) -> Result<()> {
    quire_command(&["compute", "stop", "--cluster", dir])?;
    let began = Instant::now();
    let output = quire_command(&["compute", "start", "--cluster", dir])?;
    let wall = began.elapsed();
    let Some(steps) = output
        .lines()
        .find(|line| line.starts_with("compute start: election_ms="))
    else {
        bail!("quire compute start printed no step times: {output}");
    };
    println!(
        "{steps} (the command, process start included: {:.1} ms)",
        wall.as_secs_f64() * 1000.0
    );
    Ok(())
}
