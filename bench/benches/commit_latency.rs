//! Commit latency of single-client pgbench (`simple-update`) with quorum
//! commit on three safekeepers, beside the same Postgres with
//! `synchronous_commit = local`, in one run: rounds alternate between the
//! two settings on one cluster (the safekeepers keep streaming throughout),
//! and every transaction's latency from pgbench's log goes into an
//! hdrhistogram. The goal (issue 6): quorum commit at most 1.5× the local
//! fsync latency.
//!
//! The safekeepers run in this process, one executor thread each,
//! exactly as `quire safekeeper` runs them.
//! Run: `cargo bench -p quire-bench --bench commit_latency`
//! (`QUIRE_BENCH_COMMIT_SECONDS` per round, default 10).
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use quire_cluster::{PgCluster, PgInstall, run_checked};
use quire_io::{LocalConfig, spawn_executor};
use quire_safekeeper::server::limits::Limits;
use quire_safekeeper::server::peers::Peer;
use quire_safekeeper::server::{Config, Server};

fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn start_safekeepers(root: &std::path::Path) -> Vec<String> {
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
    for i in 0..3 {
        let config = Config {
            id: i + 1,
            listen: addresses[i as usize].clone(),
            data: root.join(format!("sk{}", i + 1)),
            peers: (0..3)
                .filter(|&j| j != i)
                .map(|j| Peer {
                    id: j + 1,
                    address: addresses[j as usize].clone(),
                })
                .collect(),
            pg_user: quire_cluster::SUPERUSER.into(),
            auth: quire_safekeeper::server::auth::Auth::default(),
            peer_token: None,
            limits: Limits::default(),
        };
        // Detached: the executors live until the process ends.
        let executor = LocalConfig {
            cpu: None,
            io_memory_bytes: 4 << 20,
            name: format!("sk{}", i + 1),
            spin_before_park: None,
        };
        let _ = spawn_executor(&executor, move || async move {
            let server = Server::open(config).await.unwrap();
            server.serve().await.unwrap();
        })
        .unwrap();
    }
    for address in &addresses {
        while std::net::TcpStream::connect(address).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    addresses
}

/// One pgbench round; every transaction's latency (µs) from its log.
fn round(
    pg: &PgCluster,
    dir: &std::path::Path,
    commit: &str,
    seconds: u64,
) -> Result<Histogram<u64>> {
    for entry in std::fs::read_dir(dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    run_checked(
        pg.client("pgbench")
            .current_dir(dir)
            .env("PGOPTIONS", format!("-c synchronous_commit={commit}"))
            .args([
                "-c",
                "1",
                "-b",
                "simple-update",
                "-T",
                &seconds.to_string(),
                "-l",
                "--log-prefix=tx",
            ]),
        Duration::from_secs(seconds + 120),
    )
    .context("pgbench")?;
    let mut histogram = Histogram::<u64>::new(3)?;
    for entry in std::fs::read_dir(dir)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            if let Some(latency) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                histogram.record(latency)?;
            }
        }
    }
    Ok(histogram)
}

fn main() -> Result<()> {
    let seconds: u64 = std::env::var("QUIRE_BENCH_COMMIT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let addresses = start_safekeepers(root.path());
    let install = PgInstall::locate()?;
    let mut pg = PgCluster::create(&install, quire_tests::safekeepers::compute_options())?;
    pg.start()?;
    quire_tests::safekeepers::bootstrap(&pg, &addresses)?;
    run_checked(
        pg.client("pgbench").args(["-i", "-q", "-s", "1"]),
        Duration::from_secs(300),
    )?;
    let logs = root.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut local = Histogram::<u64>::new(3)?;
    let mut quorum = Histogram::<u64>::new(3)?;
    for _ in 0..3 {
        local.add(round(&pg, &logs, "local", seconds)?)?;
        quorum.add(round(&pg, &logs, "on", seconds)?)?;
    }
    let line = |name: &str, h: &Histogram<u64>| {
        println!(
            "{name:<38} {:>7} transactions  mean {:>7.0} µs  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs",
            h.len(),
            h.mean(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
    };
    line("synchronous_commit = local", &local);
    line("quorum commit (ANY 2 of 3 safekeepers)", &quorum);
    println!(
        "quorum / local: mean {:.2}x, p50 {:.2}x (goal: at most 1.5x)",
        quorum.mean() / local.mean(),
        quorum.value_at_quantile(0.5) as f64 / local.value_at_quantile(0.5) as f64
    );
    pg.stop()?;
    Ok(())
}
