//! The core patch's smgr hook, proven with a storage manager that forwards to
//! md.c and counts its calls (`postgres/extensions/quire_smgr_count`).
//!
//! Loaded with `shared_preload_libraries`, it must see every kind of traffic
//! the remote storage manager will have to serve: extends while a table
//! grows, writes at a checkpoint, reads after a restart empties shared
//! buffers. The hook must also learn each relation's persistence, so that
//! unlogged and temp relations can stay local.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, read_smgr_counts};
use quire_tests::{assert_log_clean, pg_install};

const ROWS: u64 = 20_000;

fn count(counts: &std::collections::BTreeMap<String, u64>, name: &str) -> Result<u64> {
    counts
        .get(name)
        .copied()
        .with_context(|| format!("no counter {name}"))
}

#[test]
fn counting_smgr_sees_extends_writes_and_reads() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default()
        .setting("shared_preload_libraries", "'quire_smgr_count'")
        // Small enough that the test table does not fit: reads must reach smgr.
        .setting("shared_buffers", "'1MB'");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;

    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, pad text); \
             INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, {ROWS}) g; \
             CREATE UNLOGGED TABLE u (id int); INSERT INTO u VALUES (1); \
             CREATE TEMP TABLE tmp (id int); INSERT INTO tmp VALUES (1);"
        ),
    )?;
    let table_blocks: u64 = pg
        .psql("postgres", "SELECT pg_relation_size('t') / 8192")?
        .trim()
        .parse()
        .context("parse the table's size")?;
    ensure!(
        table_blocks > 200,
        "the test table has only {table_blocks} blocks"
    );
    pg.psql("postgres", "CHECKPOINT")?;

    let written = read_smgr_counts(&pg)?;
    let extended = count(&written, "extend")? + count(&written, "zeroextend_blocks")?;
    ensure!(
        extended >= table_blocks,
        "{extended} blocks extended, but the table has {table_blocks}: {written:?}"
    );
    ensure!(
        count(&written, "writev_blocks")? >= table_blocks,
        "a checkpoint after the load wrote fewer blocks than the table holds: {written:?}"
    );
    for (persistence, counter) in [
        ("permanent", "chosen_permanent"),
        ("unlogged", "chosen_unlogged"),
        ("temp", "chosen_temp"),
    ] {
        ensure!(
            count(&written, counter)? > 0,
            "the hook never saw a {persistence} relation's persistence: {written:?}"
        );
    }

    // A restart empties shared buffers and resets the counters (they live in
    // shared memory): every block of the scan now comes through smgr.
    pg.restart()?;
    let rows = pg.psql("postgres", "SELECT count(*), sum(id) FROM t")?;
    ensure!(
        rows.trim() == format!("{ROWS}|{}", ROWS * (ROWS + 1) / 2),
        "the data read back through the hook is wrong: {rows}"
    );
    let read = read_smgr_counts(&pg)?;
    ensure!(
        count(&read, "readv_blocks")? >= table_blocks,
        "a full scan after a restart read fewer blocks than the table holds: {read:?}"
    );
    ensure!(count(&read, "nblocks")? > 0, "no size lookups: {read:?}");

    assert_log_clean(&pg, &[])?;
    pg.stop()
}

#[test]
fn without_the_extension_the_counters_are_unavailable() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
    pg.start()?;
    pg.psql("postgres", "CREATE EXTENSION quire_smgr_count")?;
    let error = pg
        .psql("postgres", "SELECT * FROM quire_smgr_count()")
        .expect_err("counters without the preloaded extension");
    ensure!(
        format!("{error:#}").contains("not attached to shared memory"),
        "unexpected error: {error:#}"
    );
    assert_log_clean(&pg, &["not attached to shared memory"])?;
    pg.stop()
}

/// Postgres' whole regression suite (parallel schedule, `installcheck`) on a
/// server whose every relation goes through the hook to the counting storage
/// manager: the hook must not change any result. `make check` separately
/// proves the patch inert when no extension sets the hook.
#[test]
fn regression_suite_passes_through_the_smgr_hook() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default()
        .setting("shared_preload_libraries", "'quire_smgr_count'")
        .setting("max_connections", "100");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;

    let run = quire_tests::regress::installcheck(&install, pg.port(), Duration::from_secs(900))?;
    let stdout = &run.stdout;
    if !run.passed {
        bail!(
            "the regression suite failed through the smgr hook:\n{stdout}\n{}\n{}",
            run.stderr,
            run.diffs.lines().take(100).collect::<Vec<_>>().join("\n")
        );
    }
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains("tests passed"));
    println!(
        "through the smgr hook: {}",
        summary.unwrap_or("no summary line")
    );
    ensure!(summary.is_some(), "no pass summary in:\n{stdout}");

    let counts = read_smgr_counts(&pg)?;
    for counter in [
        "readv_blocks",
        "extend",
        "writev_blocks",
        "truncate",
        "unlink",
        "chosen_unlogged",
        "chosen_temp",
    ] {
        ensure!(
            count(&counts, counter)? > 0,
            "the suite never reached {counter}: {counts:?}"
        );
    }
    pg.stop()
}
