//! `quire demo`: the end-to-end path that exists today.
//!
//! It starts the patched Postgres 17 with the counting storage manager
//! (every relation's I/O through the core patch's smgr hook, forwarded to
//! md.c), runs pgbench, and prints the storage-manager call counts beside
//! pgbench's figures. For a peer measured in the same run, it then runs the
//! same pgbench on the same build without the extension, where md.c serves
//! relations directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use quire_cluster::{
    PgCluster, PgClusterOptions, PgInstall, PgbenchSummary, read_smgr_counts, run_checked,
};

/// Options of `quire demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// pgbench scale factor (10 is about 160 MB of data).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Seconds of TPC-B per run.
    #[arg(long, default_value_t = 15)]
    seconds: u32,
    /// pgbench clients.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Shared buffers of each cluster, small so that pages really move through smgr.
    #[arg(long, default_value = "16MB")]
    shared_buffers: String,
}

/// The figures of one configuration.
struct RunFigures {
    init: Duration,
    bench: PgbenchSummary,
    counts: Option<BTreeMap<String, u64>>,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let install = PgInstall::locate()?;
    println!(
        "quire demo: patched Postgres 17 at {}",
        install.prefix().display()
    );
    println!(
        "pgbench: scale {}, {} clients, {} s of TPC-B, shared_buffers {}",
        args.scale, args.clients, args.seconds, args.shared_buffers
    );

    println!("\n[1/2] with quire_smgr_count: every relation through the smgr hook");
    let hooked = run_one(&install, args, true)?;
    println!("\n[2/2] without the extension: md.c directly (the peer)");
    let plain = run_one(&install, args, false)?;

    println!("\nstorage-manager calls seen through the hook (init + run):");
    if let Some(counts) = &hooked.counts {
        for (name, calls) in counts {
            println!("  {name:<18} {calls:>12}");
        }
    }
    println!("\n{:<28} {:>14} {:>14}", "", "smgr hook", "md.c direct");
    println!(
        "{:<28} {:>14.1} {:>14.1}",
        "pgbench -i time (s)",
        hooked.init.as_secs_f64(),
        plain.init.as_secs_f64()
    );
    println!(
        "{:<28} {:>14.1} {:>14.1}",
        "TPS", hooked.bench.tps, plain.bench.tps
    );
    println!(
        "{:<28} {:>14.3} {:>14.3}",
        "mean latency (ms)", hooked.bench.latency_ms_mean, plain.bench.latency_ms_mean
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "transactions", hooked.bench.transactions, plain.bench.transactions
    );
    println!(
        "TPS ratio hook / direct: {:.3}",
        hooked.bench.tps / plain.bench.tps
    );
    Ok(())
}

fn run_one(install: &PgInstall, args: &DemoArgs, with_hook: bool) -> Result<RunFigures> {
    let mut options = PgClusterOptions::default()
        .setting("shared_buffers", &format!("'{}'", args.shared_buffers));
    if with_hook {
        options = options.setting("shared_preload_libraries", "'quire_smgr_count'");
    }
    let mut pg = PgCluster::create(install, options)?;
    pg.start()?;
    println!(
        "  cluster {} on 127.0.0.1:{}",
        pg.datadir().display(),
        pg.port()
    );

    let started = Instant::now();
    run_checked(
        pg.client("pgbench")
            .args(["--initialize", "--quiet", "--scale"])
            .arg(args.scale.to_string()),
        Duration::from_secs(1800),
    )
    .context("pgbench --initialize")?;
    let init = started.elapsed();
    println!(
        "  pgbench -i -s {}: {:.1} s",
        args.scale,
        init.as_secs_f64()
    );

    let threads = args.clients.min(2);
    let output = run_checked(
        pg.client("pgbench")
            .args([
                "--client",
                &args.clients.to_string(),
                "--jobs",
                &threads.to_string(),
            ])
            .args(["--time", &args.seconds.to_string()]),
        Duration::from_secs(u64::from(args.seconds) + 600),
    )
    .context("pgbench run")?;
    let report = String::from_utf8_lossy(&output.stdout);
    let bench = PgbenchSummary::parse(&report)?;
    println!(
        "  pgbench: {:.1} TPS, {} transactions",
        bench.tps, bench.transactions
    );

    let counts = if with_hook {
        let counts = read_smgr_counts(&pg)?;
        let reads = counts.get("readv_blocks").copied().unwrap_or(0);
        ensure!(
            reads > 0,
            "the hook saw no reads; is the extension installed?"
        );
        Some(counts)
    } else {
        None
    };
    let errors = pg.unexpected_log_errors(&[])?;
    ensure!(
        errors.is_empty(),
        "errors in the server log:\n{}",
        errors.join("\n")
    );
    pg.stop()?;
    Ok(RunFigures {
        init,
        bench,
        counts,
    })
}
