//! `quire pageserver` following live Postgres 17 WAL, checked page by page
//! with `quire verify --pageserver` against the primary's own data
//! directory after a clean stop.
//!
//! The full stack: a primary streams to three safekeepers (synchronous
//! quorum `ANY 2`); one pageserver holds two timelines imported from a copy
//! of the primary taken right after initdb, one following the safekeepers
//! (under their tenant/timeline ids), one following the primary through a
//! slot. pgbench and DDL run on the primary; midway the pageserver is
//! killed with SIGKILL and started again on its directory, and both
//! timelines resume from what they had made durable. Branches: a timeline
//! branched at a stopped primary's checkpoint LSN serves that snapshot
//! exactly, while its parent goes on to the primary's later state.

mod pageserver_support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_checked};
use quire_postgres::Lsn;
use quire_tests::safekeepers::{KEY_TEXT, bootstrap, compute_options, start_safekeepers};
use quire_tests::{assert_log_clean, pg_install};
use serde_json::Value;

use pageserver_support::{
    Imported, Pageserver, branch, copy_dir, import_with, lsn_field, timeline_show, verify,
    verify_counts,
};

/// The slot the pageserver follows the primary through.
const SLOT: &str = "quire_follow";

/// DDL before the pgbench run: a table with an index, a sequence, a
/// database made by WAL-logged copy (dropped later: that WAL carries each
/// visibility-map page as a standard-page image whose hole is the whole
/// map, so a replica, Postgres' own standby too, rebuilds the map zeroed
/// where the primary has bits set; verification would count those pages
/// as different).
const DDL_BEFORE: &str = r"
CREATE TABLE docs (id serial PRIMARY KEY, body text);
INSERT INTO docs (body) SELECT md5(g::text) FROM generate_series(1, 3000) g;
CREATE INDEX docs_body ON docs (body);
CREATE SEQUENCE counter;
SELECT count(nextval('counter')) FROM generate_series(1, 200);
CREATE DATABASE copied_wal STRATEGY wal_log;
";

/// DDL after it: deletes and VACUUMs, a table made and dropped, an index
/// dropped, the WAL-logged database dropped, a database made by file copy
/// (its checkpoints included).
const DDL_AFTER: &str = r"
DELETE FROM docs WHERE id % 3 = 0;
VACUUM docs;
CREATE TABLE gone AS SELECT g FROM generate_series(1, 10000) g;
CREATE INDEX gone_g ON gone (g);
DROP TABLE gone;
DROP INDEX docs_body;
DROP DATABASE copied_wal;
SELECT count(nextval('counter')) FROM generate_series(1, 100);
CREATE DATABASE copied_file STRATEGY file_copy;
DELETE FROM pgbench_accounts WHERE aid % 7 = 0;
VACUUM pgbench_accounts;
";

/// The primary's settings beyond `base`: the WAL from the base's
/// checkpoint on stays (the slot is also made before any workload).
fn primary_options(base: PgClusterOptions) -> PgClusterOptions {
    base.setting("wal_keep_size", "'1GB'")
        .setting("max_wal_size", "'1GB'")
}

/// The primary's connection string for `--primary`.
fn conninfo(pg: &PgCluster) -> String {
    format!("host=127.0.0.1 port={} user=postgres", pg.port())
}

/// A physical slot reserving WAL from the last checkpoint's redo point on.
fn create_slot(pg: &PgCluster) -> Result<()> {
    pg.psql(
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{SLOT}', true)"),
    )?;
    Ok(())
}

/// The checkpoint LSN in `pgdata`'s control file.
fn checkpoint_of(pgdata: &Path) -> Result<Lsn> {
    Ok(quire_pageserver::import::read_control(pgdata)?.checkpoint_lsn())
}

/// Polls `quire timeline show` of `imported` until `done` holds (at most
/// `within`); the last status.
fn wait_status(
    server: &Pageserver,
    imported: &Imported,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> Result<bool>,
) -> Result<Value> {
    let began = Instant::now();
    loop {
        let shown = timeline_show(server, imported)?;
        if done(&shown)? {
            return Ok(shown);
        }
        ensure!(
            began.elapsed() < within,
            "{what}: not within {within:?}; quire timeline show: {shown}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `pgbench` with `args` against `pg` (bounded).
fn pgbench(pg: &PgCluster, args: &[&str]) -> Result<()> {
    run_checked(pg.client("pgbench").args(args), Duration::from_secs(300))
        .with_context(|| format!("pgbench {args:?}"))?;
    Ok(())
}

#[test]
fn two_timelines_follow_safekeepers_and_a_primary_across_a_pageserver_kill() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, primary_options(compute_options()))?;
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    copy_dir(&pg.datadir(), &base)?;
    let quire = Path::new(env!("CARGO_BIN_EXE_quire"));
    let (_safekeepers, addresses) = start_safekeepers(quire, &root.path().join("safekeepers"))?;
    pg.start()?;
    create_slot(&pg)?;
    let won = bootstrap(&pg, &addresses)?;
    println!("safekeepers: elected term {} at {}", won.term, won.start);

    let mut server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "2"])?;
    // The safekeepers' timeline is KEY: the same ids on the pageserver.
    let (key_tenant, key_timeline) = KEY_TEXT.split_once('/').context("KEY_TEXT")?;
    let sk_list = addresses.join(",");
    let via_safekeepers = import_with(
        &server,
        &base,
        &["--tenant", key_tenant],
        &["--timeline", key_timeline, "--safekeepers", &sk_list],
        None,
    )?;
    let primary = conninfo(&pg);
    let via_primary = import_with(
        &server,
        &base,
        &[],
        &["--primary", &primary, "--slot", SLOT],
        None,
    )?;
    ensure!(
        via_safekeepers.lsn == via_primary.lsn,
        "one base imported at {} and at {}",
        via_safekeepers.lsn,
        via_primary.lsn
    );
    let imported_at = via_primary.lsn;
    // What the import made durable (the receivers' own flushes go past it).
    let initial = lsn_field(
        &timeline_show(&server, &via_primary)?,
        "disk_consistent_lsn",
    )?;

    pgbench(&pg, &["-i", "-q", "-s", "1"])?;
    pg.psql_script("postgres", DDL_BEFORE)?;
    // pgbench runs in the background; once both receivers have flushed a
    // layer (the flush interval is 10 s) the pageserver dies under it and
    // comes back on the same directory, each timeline at its
    // disk-consistent LSN.
    let mut bench = pg.client("pgbench");
    bench.args(["-n", "-c", "2", "-j", "2", "-T", "20"]);
    let began = Instant::now();
    let running = std::thread::spawn(move || run_checked(&mut bench, Duration::from_secs(300)));
    let mut at_kill = Vec::new();
    for timeline in [&via_safekeepers, &via_primary] {
        let shown = wait_status(
            &server,
            timeline,
            Duration::from_secs(30),
            "the receiver flushes past the import",
            |shown| Ok(lsn_field(shown, "disk_consistent_lsn")? > initial),
        )?;
        println!(
            "before the kill, {}: last record {}, disk-consistent {}",
            timeline.timeline, shown["last_record_lsn"], shown["disk_consistent_lsn"]
        );
        at_kill.push(lsn_field(&shown, "disk_consistent_lsn")?);
    }
    server.check_alive()?;
    server.kill();
    println!(
        "pageserver killed (SIGKILL) {:.1} s into pgbench",
        began.elapsed().as_secs_f64()
    );
    server.restart()?;
    for (timeline, &durable) in [&via_safekeepers, &via_primary].iter().zip(&at_kill) {
        let shown = timeline_show(&server, timeline)?;
        ensure!(
            lsn_field(&shown, "disk_consistent_lsn")? == durable
                && lsn_field(&shown, "last_record_lsn")? >= durable,
            "{} after the restart: {shown}",
            timeline.timeline
        );
    }
    running
        .join()
        .map_err(|_| anyhow::anyhow!("the pgbench thread panicked"))?
        .context("pgbench across the pageserver's restart")?;
    pg.psql_script("postgres", DDL_AFTER)?;
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    // The safekeepers and the pageserver knock while it shuts down.
    assert_log_clean(&pg, &["the database system is shutting down"])?;
    let checkpoint = checkpoint_of(&pg.datadir())?;
    println!("the primary stopped; its final checkpoint is at {checkpoint}");

    let mut counts = Vec::new();
    for timeline in [&via_safekeepers, &via_primary] {
        counts.push(verify(&server, timeline, &pg.datadir(), None)?);
        // The receiver ingested through the final checkpoint and, after
        // the restart, made more of it durable.
        let shown = wait_status(
            &server,
            timeline,
            Duration::from_secs(40),
            "the restarted receiver flushes",
            |shown| Ok(lsn_field(shown, "disk_consistent_lsn")? > at_kill[counts.len() - 1]),
        )?;
        let last = lsn_field(&shown, "last_record_lsn")?;
        // Past it, even: the shutdown checkpoint record itself was ingested
        // (its end is the last record LSN).
        ensure!(
            last > checkpoint && shown["receiving"] == Value::Bool(true),
            "{} has not reached the final checkpoint {checkpoint}: {shown}",
            timeline.timeline
        );
        println!(
            "{}: last record {last}, disk-consistent {} (imported at {imported_at})",
            timeline.timeline, shown["disk_consistent_lsn"]
        );
    }
    ensure!(
        counts[0] == counts[1] && counts[0] > 1_000,
        "pages compared: {} through the safekeepers, {} through the primary",
        counts[0],
        counts[1]
    );
    server.check_alive()
}
