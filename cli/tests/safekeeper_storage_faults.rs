//! Storage faults on a safekeeper, with three `quire safekeeper` processes
//! and a real Postgres 17 committing through them (`ANY 2`).
//!
//! The scenario an operator hit: sk3 is down while commits go on, so only
//! sk1 and sk2 hold the last of them; then sk1 is stopped, one byte in the
//! middle of its last segment flipped (at offset 0x40064, as reported) and
//! one of its two control-file copies damaged. Restarted alone, sk1 reports
//! the damaged range and only the readable log's end as its flush position,
//! and its control-file copy is rewritten from the other (log and status
//! counters). Once sk2 is back, sk1 repairs the range from it (byte for
//! byte what sk2 holds) and reports its full flush position. Then sk2 is
//! stopped: the election on sk1 and the lagging sk3 starts at or past every
//! acknowledged commit, and sk3 recovers that WAL from sk1.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use quire_cluster::PgCluster;
use quire_postgres::Lsn;
use quire_safekeeper::wire::StorageHealth;
use quire_tests::pg_install;
use quire_tests::safekeepers::{
    KEY, KEY_TEXT, Safekeeper, bootstrap, byte_inside_a_record, compute_options, elect_elsewhere,
    flip_wal_byte, health, start_safekeepers, status, wal_bytes,
};

const SEGMENT: u64 = 16 << 20;

/// Commits `batches` transactions of about 100 KiB of WAL each.
fn commit_batches(pg: &PgCluster, first: u32, batches: u32) -> Result<()> {
    for batch in first..first + batches {
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO ledger SELECT {batch} * 1000 + g, repeat(md5(g::text), 16) FROM generate_series(1, 150) g"
            ),
        )?;
    }
    Ok(())
}

fn flush_lsn(pg: &PgCluster) -> Result<Lsn> {
    Ok(pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?)
}

/// Waits until `sk` reports a flush position of at least `lsn`.
fn wait_flush(sk: &Safekeeper, lsn: Lsn, what: &str) -> Result<Lsn> {
    let began = Instant::now();
    loop {
        let (_, flush, _) = status(&sk.address, KEY)?;
        if flush >= lsn {
            return Ok(flush);
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "sk{} stays at {flush}, short of {lsn} ({what})",
            sk.id
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts `sk` (whose WAL was damaged at `at`, and one of whose control
/// copies is damaged) with its peers down: it must report the damage, not
/// move, and have rewritten the control copy.
fn restart_damaged(sk: &mut Safekeeper, at: Lsn, acknowledged: Lsn) -> Result<StorageHealth> {
    sk.start()?;
    let (_, flush, _) = status(&sk.address, KEY)?;
    let found = health(&sk.address, KEY)?;
    ensure!(
        flush <= at && flush < acknowledged,
        "sk1 came back at {flush}, the flip is at {at}"
    );
    ensure!(
        found.damaged_from == flush && found.damaged_until >= acknowledged,
        "sk1 reports damage {}..{}, expected {flush}..{acknowledged} or more",
        found.damaged_from,
        found.damaged_until
    );
    ensure!(
        found.control_repairs == 1,
        "control copy repairs: {}",
        found.control_repairs
    );
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        status(&sk.address, KEY)?.1 == flush,
        "sk1 moved without a peer"
    );
    let log = sk.log_text();
    ensure!(
        log.contains("control-file copy control was control file is corrupt: checksum mismatch")
            && log.contains(&format!("WAL damaged from {flush}")),
        "sk1's log: {log}"
    );
    println!(
        "sk1 restarted alone: flush {flush}, damaged {}..{}, control copy rewritten; commit was {acknowledged}",
        found.damaged_from, found.damaged_until
    );
    Ok(found)
}

#[test]
fn a_flipped_byte_is_repaired_from_a_peer_and_the_next_election_keeps_every_commit() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, compute_options())?;
    pg.start()?;
    let root = tempfile::tempdir()?;
    let (mut safekeepers, addresses) =
        start_safekeepers(Path::new(env!("CARGO_BIN_EXE_quire")), root.path())?;
    let won = bootstrap(&pg, &addresses)?;
    let dir1 = safekeepers[0].data.join(KEY_TEXT);
    pg.psql(
        "postgres",
        "CREATE TABLE ledger (id int PRIMARY KEY, pad text)",
    )?;
    commit_batches(&pg, 0, 5)?;

    // sk3 goes down; the last commits are on sk1 and sk2 only.
    safekeepers[2].kill();
    let sk3_behind = status(&safekeepers[2].address, KEY).ok();
    ensure!(sk3_behind.is_none(), "sk3 still answers");
    let before_gap = flush_lsn(&pg)?;
    commit_batches(&pg, 100, 40)?;
    let acknowledged = flush_lsn(&pg)?;
    pg.stop()?;
    let full = wait_flush(&safekeepers[0], acknowledged, "sk1 before the fault")?;
    wait_flush(&safekeepers[1], full, "sk2 before the fault")?;
    println!(
        "commits acknowledged up to {acknowledged} with sk3 down since {before_gap}; sk1 and sk2 flushed {full}"
    );

    // The fault: a byte in the middle of sk1's last segment, after sk3's
    // end, and its first control-file copy.
    safekeepers[0].kill();
    safekeepers[1].kill();
    let last_segment = Lsn(full.0 / SEGMENT * SEGMENT);
    let near = Lsn((last_segment.0 + 0x4_0064).max(before_gap.0 + 8192));
    ensure!(near.0 + 200_000 < full.0, "too little WAL after {near}");
    let at = byte_inside_a_record(&dir1, won.start, full, near)?;
    flip_wal_byte(&dir1, at)?;
    let control = dir1.join("control");
    let mut bytes = std::fs::read(&control)?;
    bytes[44] ^= 0x01;
    std::fs::write(&control, &bytes)?;

    // Alone, sk1 knows its log is damaged and does not claim it.
    safekeepers[0].log = Some(root.path().join("sk1.log"));
    let found = restart_damaged(&mut safekeepers[0], at, acknowledged)?;

    // With sk2 back, sk1 repairs the range from it.
    let began = Instant::now();
    safekeepers[1].start()?;
    let repaired = wait_flush(&safekeepers[0], found.damaged_until, "the repair")?;
    let after = health(&safekeepers[0].address, KEY)?;
    ensure!(
        repaired == full && after.wal_repairs == 1 && after.damaged_until == Lsn(0),
        "sk1 after the repair: flush {repaired} (full {full}), {after:?}"
    );
    let dir2 = safekeepers[1].data.join(KEY_TEXT);
    ensure!(
        wal_bytes(&dir1, won.start, full)? == wal_bytes(&dir2, won.start, full)?,
        "sk1's repaired WAL differs from sk2's"
    );
    ensure!(
        safekeepers[0].log_text().contains("repaired from"),
        "sk1's log: {}",
        safekeepers[0].log_text()
    );
    println!(
        "sk1 repaired {} bytes from sk2 in {:?} and reports flush {repaired}",
        after.wal_repaired_bytes,
        began.elapsed()
    );

    // The other up-to-date safekeeper goes: sk1 and the lagging sk3 elect,
    // and keep every acknowledged commit.
    safekeepers[1].kill();
    safekeepers[2].start()?;
    let (said, start) = elect_elsewhere(Path::new(env!("CARGO_BIN_EXE_quire")), &addresses)?;
    ensure!(
        start >= acknowledged,
        "the election on sk1 and sk3 starts at {start}, below the acknowledged {acknowledged}: {said}"
    );
    wait_flush(&safekeepers[2], start, "sk3's recovery")?;
    let dir3 = safekeepers[2].data.join(KEY_TEXT);
    ensure!(
        wal_bytes(&dir3, won.start, start)? == wal_bytes(&dir1, won.start, start)?,
        "sk3's recovered WAL differs from sk1's"
    );
    println!("{said}: at or past every acknowledged commit ({acknowledged}); sk3 recovered to it");
    Ok(())
}
