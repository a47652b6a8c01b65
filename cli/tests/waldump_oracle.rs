//! `quire waldump` against `pg_waldump`, on WAL that real workloads wrote.
//!
//! Each configuration runs a workload on the patched Postgres 17 (pgbench;
//! tables, indexes, a database created and dropped; TRUNCATE; VACUUM;
//! rows large enough to be stored out of line; subtransactions; two-phase commit; a logical message larger
//! than a WAL segment; the compute's relation-size message, well-formed and
//! not; a WAL switch), stops the server cleanly, and compares
//! every record both tools decode from the same segment files: LSN, resource
//! manager, total length, and each block reference's relation, fork, block
//! and image flag. Configurations vary `wal_level`, `wal_compression`, and
//! the segment size (1 MiB segments make records cross segments often).
//!
//! The same WAL then goes through `quire_postgres::wal::effects`: every
//! record's page updates and non-page effects must extract without error,
//! and each non-page effect must agree with the description `pg_waldump`
//! prints for its record (relations, subtransactions, databases, relmapper,
//! multixact members, checkpoints, OIDs, relation-size messages).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_bounded, run_checked};
use quire_postgres::wal::effects::{Effect, page_effects, record_effects};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_tests::effects_oracle::{EffectCounts, check_against_desc, kind};
use quire_tests::waldump_oracle::{pg_waldump_descs, pg_waldump_lines, wal_segments};
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
BEGIN;
SELECT * FROM items WHERE id = 1 FOR SHARE;
SAVEPOINT lockers;
UPDATE items SET v = 'multixact' WHERE id = 1;
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
SELECT pg_logical_emit_message(false, 'quire.relsize', '\x7f06000005000000064000000200000087d61200'::bytea);
SELECT pg_logical_emit_message(false, 'quire.relsize', '\x7f060000050000000640000002000000'::bytea);
DROP TABLE scratch;
SELECT pg_switch_wal();
INSERT INTO items VALUES (400001, 'after switch');
"
    )
}

fn compare(config: &Config, effect_counts: &mut EffectCounts) -> Result<usize> {
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
            .env("TZ", "UTC")
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
    let theirs_text = String::from_utf8_lossy(&theirs.stdout);
    let counts = check_effects(
        config.name,
        &segments,
        &pg_waldump_descs(&theirs_text)?,
        &mut *effect_counts,
    )?;
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
        "{}: {} records identical to pg_waldump ({} with full-page images) over {} segments; \
         {} page updates and {} other effects agree",
        config.name,
        expected.len(),
        kinds(" fpi"),
        segments.len(),
        counts.0,
        counts.1
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
    let mut effect_counts = EffectCounts::new();
    for config in &configs {
        total += compare(config, &mut effect_counts)?;
    }
    println!("waldump oracle: {total} records compared, 100% identical");
    println!("effects checked against pg_waldump's descriptions: {effect_counts:?}");
    for required in [
        "rel create",
        "rel truncate",
        "rel drop",
        "db create",
        "db drop",
        "relmap update",
        "commit",
        "abort",
        "commit prepared",
        "abort prepared",
        "prepare",
        "multixact create",
        "checkpoint",
        "next oid",
        "rel size at least",
        "rel size message malformed",
    ] {
        ensure!(
            effect_counts.get(required).is_some_and(|n| *n > 0),
            "no {required} effect in any workload"
        );
    }
    Ok(())
}

/// Extracts every record's effects from `segments` and checks each non-page
/// effect against `pg_waldump`'s description; returns (page updates, other
/// effects) and adds to `counts`.
fn check_effects(
    name: &str,
    segments: &[std::path::PathBuf],
    descs: &std::collections::HashMap<String, String>,
    counts: &mut EffectCounts,
) -> Result<(usize, usize)> {
    let first = std::fs::read(&segments[0])?;
    let header = read_segment_header(&first)?;
    let mut decoder = WalStreamDecoder::new(header.start, header.segment_size);
    let (mut pages, mut others) = (0, 0);
    'segments: for path in segments {
        decoder.feed_owned(std::fs::read(path)?);
        loop {
            let record = match decoder.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(_) => break 'segments,
            };
            let parsed = decode_record(record.bytes)?;
            pages += page_effects(&parsed, record.end)
                .with_context(|| format!("{name}: {}", record.start))?
                .len();
            let effects =
                record_effects(&parsed).with_context(|| format!("{name}: {}", record.start))?;
            let desc = descs
                .get(&record.start.to_string())
                .map_or("", String::as_str);
            for effect in &effects {
                if let Effect::TwoPhasePrepare { xid, .. } = effect {
                    ensure!(
                        *xid == parsed.header.xid,
                        "{name}: {}: prepared xid {xid:?}",
                        record.start
                    );
                }
                check_against_desc(effect, desc)
                    .map_err(|what| anyhow::anyhow!("{name}: record {}: {what}", record.start))?;
                *counts.entry(kind(effect)).or_default() += 1;
                others += 1;
            }
        }
    }
    Ok((pages, others))
}
