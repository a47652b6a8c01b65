//! `quire timeline basebackup` against vanilla Postgres 17.
//!
//! A primary runs pgbench, an unlogged table with an index, a prepared
//! transaction and a ledger of committed rows, while a timeline follows it
//! through a slot. A *full* basebackup at an LSN between two phases of the
//! ledger is a data directory vanilla Postgres starts from without
//! recovery (data checksums on, so Postgres checks every page it reads): it
//! holds the first phase and none of the second, its prepared
//! transaction commits, its unlogged table is there and empty, amcheck is
//! clean (`verify_heapam` also refuses any tuple whose xmin is not below
//! the start's nextXid), and it takes writes and restarts. A plain
//! basebackup at the end, with the stopped primary's relation files added,
//! starts the same way and shows every phase; its relmapper files and
//! `PG_VERSION` files are the primary's own.

mod pageserver_support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_checked};
use quire_postgres::Lsn;
use quire_tests::{assert_log_clean, pg_install};

use pageserver_support::{
    Imported, Pageserver, copy_dir, import_with, lsn_field, quire_json, timeline_show,
};

const SLOT: &str = "quire_basebackup";

/// Before the cut: pgbench's tables, an unlogged table and index, a
/// prepared transaction, the ledger's first phase.
const PHASE_1: &str = r"
CREATE TABLE ledger (id int PRIMARY KEY, phase int NOT NULL);
CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, note text);
INSERT INTO scratch SELECT g, md5(g::text) FROM generate_series(1, 500) g;
BEGIN;
INSERT INTO ledger VALUES (-1, 0);
PREPARE TRANSACTION 'held';
INSERT INTO ledger SELECT g, 1 FROM generate_series(1, 300) g;
";

/// After the cut.
const PHASE_2: &str = r"
INSERT INTO ledger SELECT g, 2 FROM generate_series(301, 600) g;
DELETE FROM pgbench_accounts WHERE aid % 5 = 0;
VACUUM pgbench_accounts;
";

/// amcheck on every permanent relation: the rows it reports (none when
/// clean), and the number of B-trees checked.
const AMCHECK: &str = r"
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_class c
  JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence = 'p'
  AND c.relkind = 'i') s;
SELECT c.relname, v.* FROM pg_class c, verify_heapam(c.oid) v
  WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p';
";

fn pgbench(pg: &PgCluster, args: &[&str]) -> Result<()> {
    run_checked(pg.client("pgbench").args(args), Duration::from_secs(300))
        .with_context(|| format!("pgbench {args:?}"))?;
    Ok(())
}

/// Waits until the timeline has ingested `lsn`.
fn wait_ingested(server: &Pageserver, timeline: &Imported, lsn: Lsn) -> Result<()> {
    let began = Instant::now();
    loop {
        let shown = timeline_show(server, timeline)?;
        if lsn_field(&shown, "last_record_lsn")? >= lsn {
            return Ok(());
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "the timeline did not reach {lsn}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `quire timeline basebackup` of `timeline` into `out`; its JSON answer.
fn basebackup(
    server: &Pageserver,
    timeline: &Imported,
    lsn: Option<Lsn>,
    full: bool,
    out: &Path,
) -> Result<serde_json::Value> {
    let (tenant, id) = (timeline.tenant_text(), timeline.timeline_text());
    let out_text = out.to_str().context("path")?;
    let lsn_text = lsn.map(|l| l.to_string());
    let mut args = vec![
        "timeline",
        "basebackup",
        "--tenant",
        &tenant,
        "--timeline",
        &id,
        "--out",
        out_text,
    ];
    args.extend(server.api());
    if let Some(lsn) = &lsn_text {
        args.extend(["--lsn", lsn]);
    }
    if full {
        args.push("--full");
    }
    let answer = quire_json(&args)?;
    println!("basebackup: {answer}");
    Ok(answer)
}

/// Moves the unpacked basebackup at `from` into `data`.
fn move_into(from: &Path, data: &Path) -> Result<()> {
    fs::rename(from, data).with_context(|| format!("move {} to {}", from.display(), data.display()))
}

/// amcheck finds nothing in `pg`; the B-trees it checked.
fn amcheck_clean(pg: &PgCluster) -> Result<u32> {
    let output = pg.psql_script("postgres", AMCHECK)?;
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some((first, problems)) = lines.split_first() else {
        anyhow::bail!("amcheck printed nothing");
    };
    let checked: u32 = first
        .trim()
        .parse()
        .with_context(|| format!("amcheck printed {output:?}"))?;
    ensure!(
        problems.is_empty(),
        "amcheck found:\n{}",
        problems.join("\n")
    );
    Ok(checked)
}

#[test]
fn a_basebackup_starts_vanilla_postgres_at_its_lsn() -> Result<()> {
    let install = pg_install()?;
    // Data checksums: Postgres checks each page of the full basebackup as
    // it reads it.
    let options = PgClusterOptions::default()
        .initdb_arg("--data-checksums")
        .setting("wal_keep_size", "'1GB'")
        .setting("max_prepared_transactions", "4");
    let mut pg = PgCluster::create(&install, options.clone())?;
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    copy_dir(&pg.datadir(), &base)?;
    pg.start()?;
    pg.psql(
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{SLOT}', true)"),
    )?;
    let server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "1"])?;
    let primary = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let timeline = import_with(
        &server,
        &base,
        &[],
        &["--primary", &primary, "--slot", SLOT],
        None,
    )?;

    pgbench(&pg, &["-i", "-q", "-s", "1"])?;
    pgbench(&pg, &["-n", "-c", "2", "-j", "2", "-t", "300"])?;
    pg.psql_script("postgres", PHASE_1)?;
    let cut: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .parse()?;
    pg.psql_script("postgres", PHASE_2)?;
    pgbench(&pg, &["-n", "-c", "2", "-j", "2", "-t", "300"])?;
    pg.psql("postgres", "COMMIT PREPARED 'held'")?;
    pg.stop()?;
    let end = quire_pageserver::import::read_control(&pg.datadir())?.checkpoint_lsn();
    wait_ingested(&server, &timeline, end)?;

    // A full basebackup at the cut: the first phase, none of the second.
    let unpacked = root.path().join("full");
    let answer = basebackup(&server, &timeline, Some(cut), true, &unpacked)?;
    ensure!(answer["lsn"] == cut.to_string(), "answered {answer}");
    check_at_cut(&install, &options, &unpacked)?;

    // A plain basebackup at the end, with the stopped primary's relation
    // files: every phase; the small files are the primary's own.
    let unpacked = root.path().join("plain");
    let answer = basebackup(&server, &timeline, None, false, &unpacked)?;
    ensure!(
        lsn_field(&answer, "lsn")? >= end,
        "a basebackup at the latest LSN {answer} is before the primary's end {end}"
    );
    for file in [
        "PG_VERSION",
        "global/pg_filenode.map",
        "base/5/PG_VERSION",
        "base/5/pg_filenode.map",
    ] {
        let ours = fs::read(unpacked.join(file)).with_context(|| file.to_owned())?;
        let theirs = fs::read(pg.datadir().join(file)).with_context(|| file.to_owned())?;
        ensure!(ours == theirs, "{file} differs from the primary's");
    }
    let relation_files = relation_files(&pg.datadir())?;
    ensure!(
        relation_files.len() > 100,
        "{} relation files",
        relation_files.len()
    );
    let mut at_end = PgCluster::adopt(&install, options, |data| {
        move_into(&unpacked, data)?;
        for relative in &relation_files {
            let target = data.join(relative);
            if !target.exists() {
                fs::copy(pg.datadir().join(relative), &target)
                    .with_context(|| format!("copy {}", relative.display()))?;
            }
        }
        Ok(())
    })?;
    at_end.start()?;
    let ledger = at_end.psql("postgres", "SELECT count(*), max(phase) FROM ledger")?;
    ensure!(ledger.trim() == "601|2", "the ledger at the end: {ledger}");
    amcheck_clean(&at_end)?;
    at_end.stop()?;
    assert_log_clean(&at_end, &[])?;
    let mut server = server;
    server.check_alive()
}

/// The full basebackup at the cut, started: the first phase, none of the
/// second, the prepared transaction, the unlogged table empty, amcheck
/// clean, writes and a restart.
fn check_at_cut(
    install: &quire_cluster::PgInstall,
    options: &PgClusterOptions,
    unpacked: &Path,
) -> Result<()> {
    let mut at_cut = PgCluster::adopt(install, options.clone(), |data| move_into(unpacked, data))?;
    at_cut.start()?;
    let ledger = at_cut.psql("postgres", "SELECT count(*), max(phase) FROM ledger")?;
    ensure!(ledger.trim() == "300|1", "the ledger at the cut: {ledger}");
    let prepared = at_cut.psql("postgres", "SELECT gid FROM pg_prepared_xacts")?;
    ensure!(
        prepared.trim() == "held",
        "prepared transactions: {prepared}"
    );
    let scratch = at_cut.psql("postgres", "SELECT count(*) FROM scratch WHERE id > 0")?;
    ensure!(scratch.trim() == "0", "the unlogged table: {scratch}");
    at_cut.psql("postgres", "INSERT INTO scratch VALUES (1, 'x')")?;
    let accounts = at_cut.psql("postgres", "SELECT count(*) FROM pgbench_accounts")?;
    ensure!(
        accounts.trim() == "100000",
        "pgbench_accounts at the cut: {accounts}"
    );
    let checked = amcheck_clean(&at_cut)?;
    ensure!(checked >= 4, "amcheck checked {checked} B-trees");
    at_cut.psql("postgres", "COMMIT PREPARED 'held'")?;
    at_cut.psql(
        "postgres",
        "INSERT INTO ledger SELECT g, 3 FROM generate_series(1001, 1100) g",
    )?;
    at_cut.restart()?;
    let ledger = at_cut.psql("postgres", "SELECT count(*) FROM ledger")?;
    ensure!(
        ledger.trim() == "401",
        "the ledger after writes and a restart: {ledger}"
    );
    amcheck_clean(&at_cut)?;
    at_cut.stop()?;
    assert_log_clean(&at_cut, &[])?;

    Ok(())
}

/// Every relation file of a stopped data directory (`global/`, `base/`),
/// relative to it; the relmapper and version files are not among them.
fn relation_files(pgdata: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut directories = vec![pgdata.join("global")];
    for entry in fs::read_dir(pgdata.join("base"))? {
        directories.push(entry?.path());
    }
    for directory in directories {
        for entry in fs::read_dir(&directory)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(|c: char| c.is_ascii_digit()) && path.is_file() {
                files.push(path.strip_prefix(pgdata)?.to_path_buf());
            }
        }
    }
    Ok(files)
}
