//! `quire waldump` against `pg_waldump`, on WAL that real workloads wrote.
//!
//! Each configuration runs a workload on the patched Postgres 17 (pgbench;
//! tables, indexes, a database created and dropped; TRUNCATE; VACUUM;
//! rows large enough to be stored out of line; subtransactions; two-phase commit; a logical message larger
//! than a WAL segment; a WAL switch), stops the server cleanly, and compares
//! every record both tools decode from the same segment files: LSN, resource
//! manager, total length, and each block reference's relation, fork, block
//! and image flag. Configurations vary `wal_level`, `wal_compression`, and
//! the segment size (1 MiB segments make records cross segments often).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_bounded, run_checked};
use quire_tests::waldump_oracle::{pg_waldump_lines, wal_segments};
use quire_tests::{assert_log_clean, pg_install};

const TIMEOUT: Duration = Duration::from_secs(300);

struct Config {
    name: &'static str,
    wal_level: &'static str,
    compression: &'static str,
    segment_mib: u32,
    /// Size of the logical message, in MiB: more than a segment.
    message_mib: u32,
}

fn workload(message_mib: u32) -> String {
    format!(
        r"
CREATE TABLE items (id int PRIMARY KEY, v text);
INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE INDEX items_v ON items (v);
CHECKPOINT;
UPDATE items SET v = v || 'x' WHERE id % 7 = 0;
DELETE FROM items WHERE id % 11 = 0;
VACUUM items;
CREATE TABLE docs (id int, body text);
INSERT INTO docs SELECT g, (SELECT string_agg(md5(random()::text || h::text), '') FROM generate_series(1, 3000) h)
  FROM generate_series(1, 8) g;
CREATE TABLE scratch AS SELECT * FROM items WHERE id < 5000;
TRUNCATE scratch;
CREATE DATABASE other;
DROP DATABASE other;
BEGIN;
INSERT INTO items VALUES (100001, 'a');
SAVEPOINT one;
INSERT INTO items VALUES (100002, 'b');
SAVEPOINT two;
INSERT INTO items VALUES (100003, 'c');
ROLLBACK TO two;
RELEASE one;
COMMIT;
DO $$ BEGIN FOR i IN 1..100 LOOP BEGIN INSERT INTO items VALUES (200000 + i, 'sub'); EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$;
BEGIN; INSERT INTO items VALUES (300001, 'p'); PREPARE TRANSACTION 'p1';
COMMIT PREPARED 'p1';
BEGIN; INSERT INTO items VALUES (300002, 'q'); PREPARE TRANSACTION 'p2';
ROLLBACK PREPARED 'p2';
CREATE UNLOGGED TABLE fleeting (x int);
INSERT INTO fleeting SELECT generate_series(1, 1000);
CHECKPOINT;
UPDATE items SET v = 'after checkpoint' WHERE id % 13 = 0;
SELECT pg_logical_emit_message(true, 'quire', repeat('m', {message_mib} * 1024 * 1024));
DROP TABLE scratch;
SELECT pg_switch_wal();
INSERT INTO items VALUES (400001, 'after switch');
"
    )
}

fn compare(config: &Config) -> Result<usize> {
    let install = pg_install()?;
    let options = PgClusterOptions::default()
        .initdb_arg(&format!("--wal-segsize={}", config.segment_mib))
        .setting("wal_level", config.wal_level)
        .setting("wal_compression", config.compression)
        .setting("wal_keep_size", "'4GB'")
        .setting("max_wal_size", "'4GB'")
        .setting("max_prepared_transactions", "10");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;
    run_checked(
        pg.client("pgbench")
            .args(["--initialize", "--quiet", "--scale", "2"]),
        TIMEOUT,
    )?;
    run_checked(
        pg.client("pgbench").args(["--client", "2", "--time", "3"]),
        TIMEOUT,
    )?;
    pg.psql_script("postgres", &workload(config.message_mib))?;
    assert_log_clean(&pg, &[])?;
    pg.stop()?;

    let segments = wal_segments(&pg.datadir())?;
    ensure!(segments.len() >= 2, "only {} WAL segments", segments.len());
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        bail!("no WAL segments");
    };
    let theirs = run_bounded(
        Command::new(install.bin("pg_waldump"))
            .arg("--bkp-details")
            .arg(first)
            .arg(last),
        TIMEOUT,
    )?;
    let expected = pg_waldump_lines(&String::from_utf8_lossy(&theirs.stdout))?;

    let ours = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_quire"))
            .arg("waldump")
            .args(&segments),
        TIMEOUT,
    )?;
    let ours_text = String::from_utf8(ours.stdout).context("quire waldump output is not UTF-8")?;
    let actual: Vec<&str> = ours_text
        .lines()
        .filter(|line| !line.starts_with("error: "))
        .collect();

    for (index, (ours, theirs)) in actual.iter().zip(&expected).enumerate() {
        ensure!(
            ours == theirs,
            "{}: record {index} differs\n  quire:      {ours}\n  pg_waldump: {theirs}",
            config.name
        );
    }
    ensure!(
        actual.len() == expected.len(),
        "{}: quire decoded {} records, pg_waldump {} (quire's last line: {:?}; pg_waldump: {})",
        config.name,
        actual.len(),
        expected.len(),
        ours_text.lines().last(),
        String::from_utf8_lossy(&theirs.stderr).trim()
    );
    let kinds = |needle: &str| expected.iter().filter(|line| line.contains(needle)).count();
    ensure!(
        kinds("rmgr=LogicalMessage") >= 1,
        "{}: no logical message decoded",
        config.name
    );
    ensure!(
        kinds(" fpi") >= 100,
        "{}: only {} records with images",
        config.name,
        kinds(" fpi")
    );
    println!(
        "{}: {} records identical to pg_waldump ({} with full-page images) over {} segments",
        config.name,
        expected.len(),
        kinds(" fpi"),
        segments.len()
    );
    Ok(expected.len())
}

#[test]
fn quire_waldump_matches_pg_waldump() -> Result<()> {
    let configs = [
        Config {
            name: "replica/pglz/16MiB",
            wal_level: "replica",
            compression: "pglz",
            segment_mib: 16,
            message_mib: 20,
        },
        Config {
            name: "logical/lz4/1MiB",
            wal_level: "logical",
            compression: "lz4",
            segment_mib: 1,
            message_mib: 3,
        },
        Config {
            name: "replica/zstd/1MiB",
            wal_level: "replica",
            compression: "zstd",
            segment_mib: 1,
            message_mib: 2,
        },
        Config {
            name: "replica/off/16MiB",
            wal_level: "replica",
            compression: "off",
            segment_mib: 16,
            message_mib: 17,
        },
    ];
    let mut total = 0;
    for config in &configs {
        total += compare(config)?;
    }
    println!("waldump oracle: {total} records compared, 100% identical");
    Ok(())
}
