//! Storage faults inside a running cluster under load: a compute over
//! Quire runs pgbench's ledger script while one safekeeper is stopped, a
//! bit of a record in the middle of its last WAL segment flipped, and the
//! safekeeper started again: it finds the damage, repairs the range from
//! its peers (the same bytes as they hold) and reports its full flush
//! position, while commits go on through the other two. Then the pageserver (uploading to a real S3
//! server, moto on loopback) is stopped, a byte of its largest layer file
//! flipped, and it is started again: the damaged block is repaired from
//! object storage (on a read or by the scrub). Every acknowledged
//! transaction is in the ledger, the books balance, a new compute from an
//! empty directory sees the same, and amcheck is clean.

mod compute_support;
mod pageserver_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::S3Server;
use quire_postgres::Lsn;
use quire_tests::safekeepers::{byte_inside_a_record, flip_wal_byte, health, status, wal_bytes};

use compute_support::{Stack, amcheck_clean, check_books, ledger_wait, pgbench_init_with_ledger};
use pageserver_support::{flip_byte, largest_layer, timeline_show, wait_status};

const BUCKET: &str = "quire-storage-faults";
const SEGMENT: u64 = 16 << 20;

/// sk1 stopped, a record byte in the middle of its last segment flipped,
/// started again: it repairs from its peers while commits go on.
fn damage_and_repair_a_safekeeper(stack: &mut Stack) -> Result<()> {
    let key = stack.key;
    let dir_name = timeline_dir_name(&stack.timeline);
    // Enough WAL in the last segment to flip a byte with records after it.
    let began = Instant::now();
    let (flush, from) = loop {
        let (_, flush, _) = status(&stack.safekeepers[0].address, key)?;
        let from = Lsn((flush.0 / SEGMENT * SEGMENT).max(stack.timeline.lsn.0 / 8192 * 8192));
        if flush.0 - from.0 >= 256 << 10 {
            break (flush, from);
        }
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "the WAL stays at {flush}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    stack.safekeepers[0].kill();
    let dir = stack.safekeepers[0].data.join(&dir_name);
    let peer_dir = stack.safekeepers[1].data.join(&dir_name);
    let at = byte_inside_a_record(&dir, from, flush, Lsn(from.0 + (flush.0 - from.0) / 2))?;
    flip_wal_byte(&dir, at)?;
    let sk = &mut stack.safekeepers[0];
    sk.log = Some(stack.root.path().join("sk1.log"));
    let began = Instant::now();
    sk.start()?;
    let found = health(&sk.address, key)?;
    ensure!(
        found.damaged_until >= flush || found.wal_repairs == 1,
        "sk1 came back without seeing the damage: {found:?}; its log: {}",
        sk.log_text()
    );
    loop {
        let now = health(&sk.address, key)?;
        if now.wal_repairs >= 1 && now.damaged_until == Lsn(0) {
            let (_, repaired, _) = status(&sk.address, key)?;
            ensure!(repaired >= flush, "sk1 reports {repaired}, it had {flush}");
            ensure!(
                wal_bytes(&dir, from, flush)? == wal_bytes(&peer_dir, from, flush)?,
                "sk1's repaired WAL differs from sk2's in {from}..{flush}"
            );
            let log = sk.log_text();
            let said = log
                .lines()
                .find(|line| line.contains("WAL damaged from"))
                .context("sk1 never logged the damage")?;
            println!(
                "a bit flipped at {at}; sk1 said: {said}; repaired {} bytes from its peers in {:?}; flush {repaired}, its WAL equal to sk2's in {from}..{flush}",
                now.wal_repaired_bytes,
                began.elapsed()
            );
            return Ok(());
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "sk1 not repaired within 60 s: {now:?}; its log: {}",
            sk.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pageserver stopped, a byte of its largest layer file flipped (all
/// layers uploaded first), started again; waits for the repair.
fn damage_and_repair_a_layer(stack: &mut Stack) -> Result<()> {
    wait_status(
        &stack.server,
        &stack.timeline,
        Duration::from_secs(120),
        "every layer uploaded",
        |shown| Ok(shown["layers"]["resident"] == shown["layers"]["evictable"]),
    )?;
    let dir = stack
        .server
        .dir
        .join("tenants")
        .join(format!("{}-s0of1", stack.timeline.tenant))
        .join("timelines")
        .join(stack.timeline.timeline.to_string());
    let damaged = largest_layer(&dir)?;
    stack.server.kill();
    flip_byte(&damaged, 8192 + 100)?;
    let began = Instant::now();
    stack.server.restart_on_same_ports()?;
    while stack
        .server
        .metric("quire_layer_residence", "what=\"repairs\"")?
        < 1.0
    {
        ensure!(
            began.elapsed() < Duration::from_secs(90),
            "the damaged layer {} was not repaired: {}",
            damaged.display(),
            timeline_show(&stack.server, &stack.timeline)?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "a flipped byte in {} was repaired from object storage {:?} after the restart",
        damaged.display(),
        began.elapsed()
    );
    Ok(())
}

#[test]
fn flipped_bytes_in_a_safekeeper_and_a_layer_are_repaired_under_load() -> Result<()> {
    let s3 = S3Server::start(BUCKET)?;
    let url = format!("s3://{BUCKET}/cluster");
    let mut stack = Stack::start_with(
        &["--cores", "1", "--remote", &url, "--scrub-mib-per-s", "200"],
        &s3.env(),
    )?;
    let pg = stack.start_compute()?;
    pgbench_init_with_ledger(&pg)?;
    let mut acknowledged = stack.ledger_run(&pg, 4)?;

    let run = stack.ledger_spawn(&pg, 24)?;
    std::thread::sleep(Duration::from_secs(3));
    damage_and_repair_a_safekeeper(&mut stack)?;
    damage_and_repair_a_layer(&mut stack)?;
    acknowledged += ledger_wait(run, 24)?;
    acknowledged = check_books(&pg, acknowledged, 0)?;

    let mut pg = pg;
    pg.stop()?;
    let pg = stack.start_compute()?;
    check_books(&pg, acknowledged, 0)?;
    amcheck_clean(&pg, 20)?;
    Ok(())
}

/// A timeline's directory under a safekeeper's data directory.
fn timeline_dir_name(timeline: &pageserver_support::Imported) -> String {
    format!("{}/{}", timeline.tenant_text(), timeline.timeline_text())
}
