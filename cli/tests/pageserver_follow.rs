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
//! exactly, while its parent goes on to the primary's later state; one
//! branched at a time, the last commit at or before it.

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
    Imported, Pageserver, branch, branch_at, copy_dir, import_with, lsn_field, timeline_show,
    verify, verify_counts, verify_counts_at, wait_status,
};

/// The slot the pageserver follows the primary through.
const SLOT: &str = "quire_follow";

/// DDL before the pgbench run: a table with an index, a sequence, a
/// database made by WAL-logged copy (dropped later: that WAL carries each
/// visibility-map page as a standard-page image whose hole is the whole
/// map, 73 bytes a page in `pg_waldump`, so a replica, Postgres' own standby too, rebuilds the map zeroed
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

/// The last `lines` lines of `pg`'s server log.
fn log_tail(pg: &PgCluster, lines: usize) -> String {
    let log = std::fs::read_to_string(pg.log_path()).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// `pgbench` with `args` against `pg` (bounded).
fn pgbench(pg: &PgCluster, args: &[&str]) -> Result<()> {
    run_checked(pg.client("pgbench").args(args), Duration::from_secs(300))
        .with_context(|| format!("pgbench {args:?}"))?;
    Ok(())
}

/// Runs pgbench (20 s) in the background; once each of `timelines` has
/// flushed past `initial` (the flush interval is 10 s), or at the latest
/// 12 s into the run, SIGKILLs the pageserver under it and starts it again
/// on the same directory, where each timeline comes back at the
/// disk-consistent LSN it had made durable; waits for pgbench. Those LSNs.
fn kill_during_pgbench(
    server: &mut Pageserver,
    pg: &PgCluster,
    timelines: &[&Imported],
    initial: Lsn,
) -> Result<Vec<Lsn>> {
    let mut bench = pg.client("pgbench");
    bench.args(["-n", "-c", "2", "-j", "2", "-T", "20"]);
    let began = Instant::now();
    let running = std::thread::spawn(move || run_checked(&mut bench, Duration::from_secs(300)));
    loop {
        let mut flushed = true;
        for timeline in timelines {
            let shown = timeline_show(server, timeline)?;
            flushed &= lsn_field(&shown, "disk_consistent_lsn")? > initial;
        }
        if flushed || began.elapsed() > Duration::from_secs(12) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut at_kill = Vec::new();
    for timeline in timelines {
        let shown = timeline_show(server, timeline)?;
        println!(
            "before the kill, {}: last record {}, disk-consistent {}",
            timeline.timeline, shown["last_record_lsn"], shown["disk_consistent_lsn"]
        );
        at_kill.push(lsn_field(&shown, "disk_consistent_lsn")?);
    }
    server.check_alive()?;
    server.kill();
    let killed_at = began.elapsed();
    println!(
        "pageserver killed (SIGKILL) {:.1} s into pgbench",
        killed_at.as_secs_f64()
    );
    server.restart()?;
    let mut loaded = Vec::new();
    for (timeline, &durable) in timelines.iter().zip(&at_kill) {
        // A flush may have ended between the status and the kill.
        let shown = timeline_show(server, timeline)?;
        let now = lsn_field(&shown, "disk_consistent_lsn")?;
        ensure!(
            now >= durable && lsn_field(&shown, "last_record_lsn")? >= now,
            "{} after the restart: {shown}",
            timeline.timeline
        );
        loaded.push(now);
    }
    running
        .join()
        .map_err(|_| anyhow::anyhow!("the pgbench thread panicked"))?
        .context("pgbench across the pageserver's restart")?;
    ensure!(
        killed_at < Duration::from_secs(18),
        "the kill came {killed_at:?} into a pgbench run of 20 s"
    );
    Ok(loaded)
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
    let loaded = kill_during_pgbench(&mut server, &pg, &[&via_safekeepers, &via_primary], initial)?;
    pg.psql_script("postgres", DDL_AFTER)?;
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    // The safekeepers and the pageserver knock while it shuts down.
    assert_log_clean(
        &pg,
        &[
            "the database system is shutting down",
            "terminating connection due to administrator command",
        ],
    )?;
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
            |shown| Ok(lsn_field(shown, "disk_consistent_lsn")? > loaded[counts.len() - 1]),
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
            "{}: last record {last}, disk-consistent {} (imported at {imported_at}), ingest {}",
            timeline.timeline, shown["disk_consistent_lsn"], shown["ingest"]
        );
        check_ingest_gauges(&server, timeline, &shown, checkpoint)?;
    }
    ensure!(
        counts[0] == counts[1] && counts[0] > 1_000,
        "pages compared: {} through the safekeepers, {} through the primary",
        counts[0],
        counts[1]
    );
    server.check_alive()
}

/// The receiver's gauges in a timeline's status and metrics: what it took
/// since the restart, the source's end as it said (at least the final
/// checkpoint, all ingested).
fn check_ingest_gauges(
    server: &Pageserver,
    timeline: &Imported,
    shown: &Value,
    checkpoint: Lsn,
) -> Result<()> {
    let ingest = &shown["ingest"];
    let source_end = lsn_field(ingest, "source_end_lsn")?;
    ensure!(
        ingest["wal_bytes_received"].as_u64().is_some_and(|b| b > 0)
            && source_end >= checkpoint
            && ingest["lag_bytes"]
                .as_u64()
                .is_some_and(|lag| lag < 1 << 20)
            && ingest["held_by_l0_debt"] == Value::Bool(false),
        "{} ingest gauges: {shown}",
        timeline.timeline
    );
    let name = format!("timeline=\"{}/{}\"", timeline.tenant, timeline.timeline);
    let labels = format!("{name},what=\"wal_bytes_received\"");
    let received = server.metric("quire_ingest", &labels)?;
    ensure!(
        received > 0.0,
        "quire_ingest wal_bytes_received of {name}: {received}"
    );
    Ok(())
}

/// Phase 1 of the branch test: tables that phase 2 changes.
const PHASE_1: &str = r"
CREATE TABLE items (id int PRIMARY KEY, qty int, note text);
INSERT INTO items SELECT g, g % 100, md5(g::text) FROM generate_series(1, 20000) g;
CREATE INDEX items_qty ON items (qty);
CREATE TABLE emptied AS SELECT g, repeat('e', 50) AS pad FROM generate_series(1, 5000) g;
CREATE TABLE dropped AS SELECT g FROM generate_series(1, 5000) g;
CREATE SEQUENCE ticket;
SELECT count(nextval('ticket')) FROM generate_series(1, 50);
VACUUM items;
";

/// Phase 2: the same tables changed (updates, deletes, a truncate, a
/// drop), a new one.
const PHASE_2: &str = r"
UPDATE items SET qty = qty + 1, note = 'changed' WHERE id % 5 = 0;
DELETE FROM items WHERE id % 7 = 0;
TRUNCATE emptied;
INSERT INTO emptied SELECT g, 'again' FROM generate_series(1, 100) g;
DROP TABLE dropped;
SELECT count(nextval('ticket')) FROM generate_series(1, 500);
CREATE TABLE later AS SELECT g FROM generate_series(1, 3000) g;
VACUUM items;
";

/// The last commit before a snapshot, bracketed by times and LSNs read on
/// the primary: a table's creation, then (after `before`) one row's insert
/// ending in `(insert_from, insert_to]`, then `after`.
struct Marker {
    before: String,
    after: String,
    insert_from: Lsn,
    insert_to: Lsn,
}

impl Marker {
    /// One session, so that no connection's catalog reads (which may
    /// prune pages) come between the insert's commit and the shutdown.
    fn commit(pg: &PgCluster) -> Result<Marker> {
        let output = pg.psql_script(
            "postgres",
            "CREATE TABLE marker (at timestamptz);
             SELECT clock_timestamp(), pg_current_wal_insert_lsn();
             INSERT INTO marker VALUES (now());
             SELECT clock_timestamp(), pg_current_wal_insert_lsn();",
        )?;
        let rows: Vec<(&str, &str)> = output
            .lines()
            .filter_map(|line| line.split_once('|'))
            .collect();
        let [(before, insert_from), (after, insert_to)] = rows[..] else {
            anyhow::bail!("the marker script printed {output:?}");
        };
        let marker = Marker {
            before: before.to_owned(),
            after: after.to_owned(),
            insert_from: insert_from.parse()?,
            insert_to: insert_to.parse()?,
        };
        println!(
            "marker committed in ({}, {}], between {} and {}",
            marker.insert_from, marker.insert_to, marker.before, marker.after
        );
        Ok(marker)
    }

    /// A branch at `after` is the snapshot (stopped right after the
    /// marker); one at `before` is not (the marker row is missing); the
    /// lookup endpoint names the marker's commit; a time in the future is
    /// refused.
    fn check_branches(
        &self,
        server: &Pageserver,
        parent: &Imported,
        snapshot: &Path,
        checkpoint: Lsn,
    ) -> Result<()> {
        let (at_after, answer) = branch_at(server, parent, &self.after)?;
        let commit = &answer["ancestor_commit"];
        let lsn = lsn_field(commit, "lsn")?;
        ensure!(
            lsn > self.insert_from && lsn <= self.insert_to && lsn <= checkpoint,
            "the branch at {} is at {lsn}, not the marker's commit in ({}, {}]: {answer}",
            self.after,
            self.insert_from,
            self.insert_to
        );
        let shown = timeline_show(server, &at_after)?;
        ensure!(
            shown["ancestor"]["lsn"] == lsn.to_string(),
            "the branch point is not its commit's {lsn}: {shown}"
        );
        // The branch's latest page is at its branch point, but the snapshot's
        // checkpoint is later: read at the branch point.
        let found = verify_counts_at(server, &at_after, snapshot, (None, 30), Some(lsn))?;
        ensure!(
            found.success && found.compared > 1_000 && found.identical == found.compared,
            "the branch at the marker's commit differs from the snapshot: {found:?}"
        );
        let (at_before, answer) = branch_at(server, parent, &self.before)?;
        let earlier = lsn_field(&answer["ancestor_commit"], "lsn")?;
        ensure!(
            earlier <= self.insert_from,
            "the branch at {} is at {earlier}, past the marker's insert from {}",
            self.before,
            self.insert_from
        );
        let found = verify_counts_at(server, &at_before, snapshot, (None, 30), Some(earlier))?;
        ensure!(
            !found.success,
            "a branch before the marker's insert matches the snapshot: {found:?}"
        );
        let path = |time: &str| {
            format!(
                "/v1/tenant/{}/timeline/{}/lsn_by_timestamp?timestamp={}",
                parent.tenant_text(),
                parent.timeline_text(),
                time.replace(' ', "%20")
            )
        };
        let (status, body) = server.get(&path(&self.after), None)?;
        ensure!(
            status == 200 && body.contains(&format!("\"lsn\":\"{lsn}\"")),
            "lsn_by_timestamp at {}: {status} {body}",
            self.after
        );
        let (status, body) = server.get(&path("2999-01-01T00:00:00Z"), None)?;
        ensure!(
            status == 400 && body.contains("in the future"),
            "a time in the future: {status} {body}"
        );
        let (status, body) = server.get(&path("1999-01-01T00:00:00Z"), None)?;
        ensure!(
            status == 404 && body.contains("no commit at or before"),
            "a time before every commit: {status} {body}"
        );
        Ok(())
    }
}

#[test]
fn a_branch_at_a_stopped_primarys_checkpoint_serves_that_snapshot() -> Result<()> {
    let install = pg_install()?;
    // No autovacuum: its commits and page changes between the marker's
    // commit and the shutdown would put the snapshot past that commit.
    let options = primary_options(PgClusterOptions::default()).setting("autovacuum", "off");
    let mut pg = PgCluster::create(&install, options)?;
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    copy_dir(&pg.datadir(), &base)?;
    pg.start()?;
    create_slot(&pg)?;
    let server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "1"])?;
    let primary = conninfo(&pg);
    let parent = import_with(
        &server,
        &base,
        &[],
        &["--primary", &primary, "--slot", SLOT],
        None,
    )?;

    pgbench(&pg, &["-i", "-q", "-s", "1"])?;
    pg.psql_script("postgres", PHASE_1)?;
    pgbench(&pg, &["-n", "-c", "2", "-j", "2", "-t", "200"])?;
    let marker = Marker::commit(&pg)?;
    pg.stop()?;
    let snapshot = root.path().join("snapshot");
    copy_dir(&pg.datadir(), &snapshot)?;
    // The snapshot holds every change of the records before its shutdown
    // checkpoint and none after. A record's values are stored at its end
    // rounded up to 8, which is at most where the next record starts (the
    // next one may start further on, past a page header), and a read at L
    // sees the values stored at or below L. So at the checkpoint record's
    // start, the control file's checkpoint LSN, a read sees every record
    // before the checkpoint and nothing of it or after it: the branch
    // point that makes the branch equal the snapshot. (The shutdown
    // checkpoint changes no page, so its end would serve the same pages;
    // the start is the exact rule.)
    let point = checkpoint_of(&snapshot)?;
    println!("snapshot taken; its checkpoint is at {point}");

    pg.start()?;
    pg.psql_script("postgres", PHASE_2)?;
    pgbench(&pg, &["-n", "-c", "2", "-j", "2", "-t", "200"])?;
    pg.psql("postgres", "CHECKPOINT")?;
    // The receiver is back on the restarted primary (its retries back off
    // to 5 s apart) and has phase 2 before the primary stops: a primary
    // that stops with no walsender for us keeps its shutdown checkpoint.
    let checkpointed: Lsn = pg
        .psql(
            "postgres",
            "SELECT checkpoint_lsn FROM pg_control_checkpoint()",
        )?
        .trim()
        .parse()?;
    wait_status(
        &server,
        &parent,
        Duration::from_secs(60),
        "the parent follows the restarted primary",
        |shown| Ok(lsn_field(shown, "last_record_lsn")? > checkpointed),
    )
    .with_context(|| format!("the primary's log:\n{}", log_tail(&pg, 40)))?;
    pg.stop()?;
    // The receiver knocks while the primary stops and starts.
    assert_log_clean(
        &pg,
        &[
            "the database system is shutting down",
            "the database system is starting up",
            "terminating connection due to administrator command",
        ],
    )?;
    let last = checkpoint_of(&pg.datadir())?;
    println!("the primary stopped again; its final checkpoint is at {last}");
    wait_status(
        &server,
        &parent,
        Duration::from_secs(60),
        "the parent ingests phase 2",
        |shown| Ok(lsn_field(shown, "last_record_lsn")? > last),
    )
    .with_context(|| format!("the primary's log:\n{}", log_tail(&pg, 40)))?;

    let at_snapshot = branch(&server, &parent, point)?;
    let shown = timeline_show(&server, &at_snapshot)?;
    ensure!(
        shown["ancestor"]["timeline_id"] == parent.timeline_text()
            && shown["ancestor"]["lsn"] == point.to_string(),
        "the branch's ancestor: {shown}"
    );
    let on_branch = verify(&server, &at_snapshot, &snapshot, None)?;
    let on_parent = verify(&server, &parent, &pg.datadir(), None)?;
    ensure!(
        on_branch > 1_000 && on_parent > 1_000,
        "pages compared: {on_branch} on the branch, {on_parent} on the parent"
    );
    // The check can fail: a branch at the final checkpoint is the final
    // state, not the snapshot's.
    let at_end = branch(&server, &parent, last)?;
    let found = verify_counts(&server, &at_end, &snapshot, None, 30)?;
    ensure!(
        found.different > 0 && !found.success,
        "a branch at {last} matches the snapshot at {point}: {found:?}"
    );
    verify(&server, &at_end, &pg.datadir(), None)?;
    marker.check_branches(&server, &parent, &snapshot, point)?;
    let mut server = server;
    server.check_alive()
}
