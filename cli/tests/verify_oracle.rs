//! `quire verify` on real Postgres 17 clusters: every page Quire rebuilds
//! from the WAL must be the page Postgres wrote, after Postgres' masking.
//!
//! Each run initdbs a cluster, keeps a copy of it as the base, then runs
//! pgbench (init at scale 10, then 60 s of TPC-B with 4 clients) and a SQL
//! workload that touches every page kind the redo path knows: btree, hash,
//! GIN, `GiST`, SP-GiST and BRIN indexes built and then inserted into, HOT
//! chains, DELETE and VACUUM (plain and FULL), TRUNCATE, a toasted table,
//! sequences, subtransactions (rolled back, released, and more than 64),
//! a multixact, two-phase commit and rollback, databases created (both
//! strategies, `wal_log` and `file_copy`) and dropped, unlogged and temporary tables; then CHECKPOINT
//! and a clean stop. `quire verify` must report every page identical. One
//! run has `full_page_writes` on, the other off; the latter verifies with
//! `--restart-midway` (ingest flushed, the timeline reloaded from disk and
//! ingest resumed from its keys halfway through the WAL).
//!
//! `QUIRE_ORACLE_SCALE` and `QUIRE_ORACLE_SECONDS` shrink the pgbench part
//! for a quick local run; CI uses the defaults (10 and 60).
//!
//! A third, small run checks what verify must not count as a difference: a
//! visibility-map fork Postgres created without WAL (one all-zero page),
//! and that the same fork with a byte set is one.

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, PgbenchSummary, run_bounded, run_checked};
use quire_tests::{assert_log_clean, pg_install};

const WORKLOAD: &str = r"
CREATE TABLE hot (id int PRIMARY KEY, v int, pad text) WITH (fillfactor = 50);
INSERT INTO hot SELECT g, 0, repeat('h', 100) FROM generate_series(1, 3000) g;
UPDATE hot SET v = v + 1;
UPDATE hot SET v = v + 1 WHERE id % 2 = 0;
UPDATE hot SET v = v + 1 WHERE id % 3 = 0;

CREATE TABLE docs (id serial PRIMARY KEY, body text, tags text[], pt point, ts tsvector);
INSERT INTO docs (body, tags, pt, ts)
  SELECT md5(g::text), ARRAY[(g % 10)::text, (g % 7)::text], point(g % 100, g / 100), to_tsvector(md5(g::text))
  FROM generate_series(1, 6000) g;
CREATE INDEX docs_btree ON docs (body);
CREATE INDEX docs_hash ON docs USING hash (body);
CREATE INDEX docs_gin ON docs USING gin (tags);
CREATE INDEX docs_gin_ts ON docs USING gin (ts);
CREATE INDEX docs_gist ON docs USING gist (pt);
CREATE INDEX docs_spgist ON docs USING spgist (pt);
CREATE INDEX docs_brin ON docs USING brin (id) WITH (pages_per_range = 4);
INSERT INTO docs (body, tags, pt, ts)
  SELECT md5(g::text), ARRAY[(g % 13)::text], point(g % 50, g % 30), to_tsvector(md5((g * 7)::text))
  FROM generate_series(6001, 12000) g;
DELETE FROM docs WHERE id % 3 = 0;
VACUUM docs;
UPDATE docs SET body = body || 'u' WHERE id % 5 = 0;
VACUUM (FREEZE) docs;
VACUUM FULL hot;

CREATE TABLE trunc_me AS SELECT g FROM generate_series(1, 20000) g;
TRUNCATE trunc_me;
INSERT INTO trunc_me VALUES (1), (2);
CREATE TABLE shrink AS SELECT g, repeat('s', 200) AS pad FROM generate_series(1, 20000) g;
DELETE FROM shrink WHERE g > 100;
VACUUM shrink;

CREATE TABLE toasty (id int PRIMARY KEY, big text);
INSERT INTO toasty
  SELECT g, (SELECT string_agg(md5((g * 1000 + i)::text), '') FROM generate_series(1, 300) i)
  FROM generate_series(1, 60) g;
UPDATE toasty SET big = big || 'more' WHERE id % 2 = 0;
DELETE FROM toasty WHERE id % 5 = 0;

CREATE SEQUENCE counter;
SELECT count(nextval('counter')) FROM generate_series(1, 500);
CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 5000) g;
CREATE INDEX scratch_g ON scratch (g);

BEGIN;
INSERT INTO hot VALUES (100001, 1, 'a');
SAVEPOINT a;
INSERT INTO hot VALUES (100002, 1, 'b');
ROLLBACK TO a;
SAVEPOINT b;
INSERT INTO hot VALUES (100003, 1, 'c');
RELEASE b;
COMMIT;

DO $$
BEGIN
  FOR i IN 1..100 LOOP
    BEGIN
      INSERT INTO hot VALUES (200000 + i, i, 'sub');
      IF i % 10 = 0 THEN RAISE EXCEPTION 'roll back this one'; END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
  END LOOP;
END $$;

BEGIN;
SELECT id FROM hot WHERE id = 1 FOR SHARE;
SAVEPOINT s;
UPDATE hot SET v = 99 WHERE id = 1;
COMMIT;

BEGIN;
INSERT INTO hot VALUES (300001, 1, '2pc');
PREPARE TRANSACTION 'p1';
COMMIT PREPARED 'p1';
BEGIN;
INSERT INTO hot VALUES (300002, 1, '2pc');
PREPARE TRANSACTION 'p2';
ROLLBACK PREPARED 'p2';

CREATE DATABASE kept_db;
CREATE DATABASE copied_db STRATEGY file_copy;
CREATE DATABASE gone_db;
DROP DATABASE gone_db;
";

const KEPT_DB_WORKLOAD: &str = r"
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
CREATE TEMP TABLE tmp AS SELECT g FROM generate_series(1, 1000) g;
UPDATE t SET v = 'x' WHERE id < 100;
";

fn env_number(name: &str, default: u32) -> Result<u32> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

fn run_oracle(full_page_writes: bool, restart_midway: bool) -> Result<()> {
    let scale = env_number("QUIRE_ORACLE_SCALE", 10)?;
    let seconds = env_number("QUIRE_ORACLE_SECONDS", 60)?;
    let install = pg_install()?;
    let options = PgClusterOptions::default()
        .setting("wal_keep_size", "'16GB'")
        .setting("max_wal_size", "'4GB'")
        .setting("max_prepared_transactions", "5")
        .setting(
            "full_page_writes",
            if full_page_writes { "on" } else { "off" },
        );
    let mut pg = PgCluster::create(&install, options)?;
    let datadir = pg.datadir();
    let base = datadir.with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(&datadir).arg(&base),
        Duration::from_secs(60),
    )
    .context("copy the freshly initdb'ed cluster")?;

    pg.start()?;
    let began = Instant::now();
    let init = run_checked(
        pg.client("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string()]),
        Duration::from_secs(600),
    )
    .context("pgbench -i")?;
    drop(init);
    let bench = run_checked(
        pg.client("pgbench")
            .args(["-c", "4", "-j", "2", "-T", &seconds.to_string()]),
        Duration::from_secs(u64::from(seconds) + 300),
    )
    .context("pgbench")?;
    let summary = PgbenchSummary::parse(&String::from_utf8_lossy(&bench.stdout))?;
    let wal_after_pgbench = pg.psql("postgres", "SELECT pg_current_wal_lsn() - '0/0'")?;
    println!(
        "pgbench scale {scale}, {seconds} s, 4 clients: {:.0} tps, {} transactions; WAL position {} bytes after {:.1} s",
        summary.tps,
        summary.transactions,
        wal_after_pgbench.trim(),
        began.elapsed().as_secs_f64()
    );
    pg.psql_script("postgres", WORKLOAD)?;
    pg.psql_script("kept_db", KEPT_DB_WORKLOAD)?;
    pg.psql_script("copied_db", KEPT_DB_WORKLOAD)?;
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    assert_log_clean(
        &pg,
        &[
            "roll back this one",
            "terminating autovacuum process due to administrator command",
        ],
    )?;

    let extra: &[&str] = if restart_midway {
        &["--restart-midway"]
    } else {
        &[]
    };
    let run = quire_verify_with(&base, &datadir, extra)?;
    let _ = std::fs::remove_dir_all(&base);
    ensure!(
        !restart_midway || run.stdout.contains("\nrestarted midway: ingested to "),
        "no line says where ingest restarted:\n{}",
        run.stdout
    );
    ensure!(
        run.compared > 2_000 * u64::from(scale),
        "too few pages compared: {}",
        run.summary
    );
    ensure!(
        run.different == 0 && run.compared == run.identical && run.status.success(),
        "pages differ: {} (exit {:?})",
        run.summary,
        run.status
    );
    Ok(())
}

/// What `quire verify` printed and its summary line's counts.
struct VerifyRun {
    stdout: String,
    summary: String,
    compared: u64,
    identical: u64,
    different: u64,
    status: std::process::ExitStatus,
}

/// Runs `quire verify --base BASE --pgdata DATADIR` and reads its last line,
/// `verify: N pages compared, N identical, N different`.
fn quire_verify(base: &Path, datadir: &Path) -> Result<VerifyRun> {
    quire_verify_with(base, datadir, &[])
}

/// [`quire_verify`] with `extra` options.
fn quire_verify_with(base: &Path, datadir: &Path, extra: &[&str]) -> Result<VerifyRun> {
    let quire = env!("CARGO_BIN_EXE_quire");
    let started = Instant::now();
    let output = run_bounded(
        Command::new(quire)
            .arg("verify")
            .arg("--base")
            .arg(base)
            .arg("--pgdata")
            .arg(datadir)
            .args(extra),
        Duration::from_secs(1800),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    println!("quire verify took {:.1} s", started.elapsed().as_secs_f64());
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    let counts: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let &[compared, identical, different] = &counts[..] else {
        anyhow::bail!("last line is not the summary: {summary}");
    };
    ensure!(
        summary.starts_with("verify: "),
        "last line is not the summary: {summary}"
    );
    Ok(VerifyRun {
        stdout,
        summary,
        compared,
        identical,
        different,
        status: output.status,
    })
}

#[test]
fn every_page_is_identical_with_full_page_writes() -> Result<()> {
    run_oracle(true, false)
}

#[test]
fn every_page_is_identical_without_full_page_writes_across_a_restart_midway() -> Result<()> {
    run_oracle(false, true)
}

/// A psql session in a REPEATABLE READ transaction, its snapshot taken:
/// while it lives, no tuple inserted after it is visible to all.
struct SnapshotHolder {
    psql: Child,
    stdin: Option<ChildStdin>,
}

impl SnapshotHolder {
    fn start(pg: &PgCluster) -> Result<SnapshotHolder> {
        let mut psql = pg
            .client("psql")
            .args(["--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("start the session that holds a snapshot")?;
        let stdin = psql.stdin.take();
        let mut holder = SnapshotHolder { psql, stdin };
        let stdin = holder.stdin.as_mut().context("psql's stdin")?;
        stdin.write_all(b"BEGIN ISOLATION LEVEL REPEATABLE READ;\nSELECT 1;\n")?;
        stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xmin IS NOT NULL",
            )?
            .trim()
            != "1"
        {
            ensure!(
                Instant::now() < deadline,
                "the holding session took no snapshot"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(holder)
    }

    /// Commits and waits for psql to exit.
    fn release(mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("psql's stdin")?;
        stdin.write_all(b"COMMIT;\n")?;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "the holding session did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for SnapshotHolder {
    fn drop(&mut self) {
        if matches!(self.psql.try_wait(), Ok(None)) {
            let _ = self.psql.kill();
            let _ = self.psql.wait();
        }
    }
}

/// The count on verify's line `... N all-zero pages past a relation's WAL-logged end`.
fn zero_pages_skipped(stdout: &str) -> Option<u64> {
    let line = stdout
        .lines()
        .find(|l| l.ends_with("all-zero pages past a relation's WAL-logged end"))?;
    let before = line.strip_suffix(" all-zero pages past a relation's WAL-logged end")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// VACUUM while another session's snapshot keeps every new tuple from being
/// visible to all creates the table's visibility-map fork as one all-zero
/// page that no WAL record names (Postgres extends the fork without WAL, and
/// its recovery would not have the page either): not a difference. The same
/// fork with a byte set is one.
#[test]
fn a_visibility_map_fork_no_wal_names_is_no_difference_unless_written() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default().setting("wal_keep_size", "'1GB'");
    let mut pg = PgCluster::create(&install, options)?;
    let datadir = pg.datadir();
    let base = datadir.with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(&datadir).arg(&base),
        Duration::from_secs(60),
    )
    .context("copy the freshly initdb'ed cluster")?;
    pg.start()?;

    let holder = SnapshotHolder::start(&pg)?;

    pg.psql_script(
        "postgres",
        r"
CREATE TABLE held (id int, pad text) WITH (autovacuum_enabled = off);
INSERT INTO held SELECT g, repeat('v', 100) FROM generate_series(1, 2000) g;
VACUUM held;
",
    )?;
    let vm_size = pg.psql("postgres", "SELECT pg_relation_size('held', 'vm')")?;
    let all_visible = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_class WHERE relname = 'held' AND relallvisible > 0",
    )?;
    let vm_path = datadir.join(format!(
        "{}_vm",
        pg.psql("postgres", "SELECT pg_relation_filepath('held')")?
            .trim()
    ));
    holder.release()?;
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    assert_log_clean(&pg, &[])?;
    ensure!(
        vm_size.trim() == "8192" && all_visible.trim() == "0",
        "the workload no longer makes a one-page map with no bit set: {} bytes, {} all-visible",
        vm_size.trim(),
        all_visible.trim()
    );
    let vm = std::fs::read(&vm_path).with_context(|| format!("read {}", vm_path.display()))?;
    ensure!(
        vm.len() == 8192 && vm.iter().all(|&b| b == 0),
        "{} is not one all-zero page",
        vm_path.display()
    );

    let run = quire_verify(&base, &datadir)?;
    ensure!(
        run.different == 0 && run.compared == run.identical && run.status.success(),
        "pages differ: {} (exit {:?})",
        run.summary,
        run.status
    );
    ensure!(
        zero_pages_skipped(&run.stdout) >= Some(1),
        "the map's page is not counted as skipped:\n{}",
        run.stdout
    );

    // A byte set in that page is a page the WAL should have reached.
    let mut written = vm;
    written[100] = 0x01;
    std::fs::write(&vm_path, &written).with_context(|| format!("write {}", vm_path.display()))?;
    let run = quire_verify(&base, &datadir)?;
    let _ = std::fs::remove_dir_all(&base);
    ensure!(
        run.different == 1 && !run.status.success(),
        "the written page is not a difference: {} (exit {:?})",
        run.summary,
        run.status
    );
    ensure!(
        run.stdout
            .contains("fork vm: 1 blocks in Postgres, unknown to Quire"),
        "no line names the fork:\n{}",
        run.stdout
    );
    Ok(())
}
