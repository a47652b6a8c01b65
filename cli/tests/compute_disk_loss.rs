//! The pageserver's disk lost under load: a compute over Quire runs
//! pgbench's ledger script while its pageserver, uploading to a real S3
//! server (moto on loopback), is killed with SIGKILL and its whole
//! directory deleted. A fresh pageserver on the same ports and an empty
//! directory attaches the tenant from object storage (`quire tenant
//! attach`) and follows the safekeepers from the index's disk-consistent
//! LSN: they kept the WAL above it, because the old pageserver reported
//! only what object storage held. The compute reconnects by itself;
//! every acknowledged transaction is in the ledger, the books balance, a
//! new compute from an empty directory sees the same, and amcheck is clean.

mod compute_support;
mod pageserver_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::S3Server;
use serde_json::Value;

use compute_support::{Stack, amcheck_clean, check_books, ledger_wait, pgbench_init_with_ledger};
use pageserver_support::{quire_json, timeline_show};

/// The bucket.
const BUCKET: &str = "quire-disk-loss";

/// The pageserver's `remote` status of the stack's timeline.
fn remote_of(stack: &Stack) -> Result<Value> {
    let shown = timeline_show(&stack.server, &stack.timeline)?;
    Ok(shown["remote"].clone())
}

/// Waits until the timeline has synced `syncs` times.
fn wait_syncs(stack: &Stack, syncs: u64) -> Result<Value> {
    let began = Instant::now();
    loop {
        let remote = remote_of(stack)?;
        if remote["syncs"].as_u64() >= Some(syncs) {
            return Ok(remote);
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "only {remote} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_pageserver_that_lost_its_disk_comes_back_from_object_storage() -> Result<()> {
    let s3 = S3Server::start(BUCKET)?;
    let url = format!("s3://{BUCKET}/cluster");
    let mut stack = Stack::start_with(&["--cores", "1", "--remote", &url], &s3.env())?;
    let pg = stack.start_compute()?;
    pgbench_init_with_ledger(&pg)?;
    let mut acknowledged = stack.ledger_run(&pg, 6)?;
    acknowledged = check_books(&pg, acknowledged, 0)?;
    // Part of the history in S3 (the load's flush uploaded), the rest
    // only in memory and on the safekeepers.
    let before = wait_syncs(&stack, 2)?;
    println!("before the loss: {before}");

    let run = stack.ledger_spawn(&pg, 12)?;
    std::thread::sleep(Duration::from_secs(4));
    stack.server.kill();
    std::fs::remove_dir_all(&stack.server.dir).context("delete the pageserver's directory")?;
    let lost_at = Instant::now();
    stack.server.restart_on_same_ports()?;
    let tenant = stack.timeline.tenant_text();
    let safekeepers = stack.addresses.join(",");
    let mut args = vec!["tenant", "attach", "--tenant", &tenant];
    args.extend(stack.server.api());
    args.extend(["--safekeepers", &safekeepers]);
    let attached = quire_json(&args)?;
    println!(
        "attached {:?} after the loss: {attached}",
        lost_at.elapsed()
    );
    let shard = &attached["shards"][0]["attached"];
    ensure!(
        shard["generation"] == 2 && shard["timelines"][0]["layers"].as_u64() > Some(0),
        "attach answered {attached}"
    );
    acknowledged += ledger_wait(run, 12)?;
    acknowledged = check_books(&pg, acknowledged, 0)?;

    // A new compute from an empty directory, on the attached pageserver.
    let mut pg = pg;
    pg.stop()?;
    let pg = stack.start_compute()?;
    check_books(&pg, acknowledged, 0)?;
    amcheck_clean(&pg, 20)?;
    let after = wait_syncs(&stack, 1)?;
    ensure!(
        after["generation"] == 2,
        "the attached pageserver uploads as {after}"
    );
    Ok(())
}
