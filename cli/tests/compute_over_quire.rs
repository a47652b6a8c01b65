//! A stateless compute: Postgres 17 with `quire_smgr` reading every page
//! of its permanent relations from `quire pageserver`, its WAL going to
//! three `quire safekeeper`s (commits wait for two), nothing of its own
//! kept between starts.
//!
//! A cluster made by initdb is imported into the pageserver (the timeline
//! follows the safekeepers from the import LSN) and the safekeepers'
//! timeline starts at that LSN. Each compute start is what compute control
//! does: an election on the safekeepers, the pageserver caught up to the
//! elected start, a basebackup at it (its checkpoint record linked to the
//! record before) into an empty directory, Postgres with `quire_smgr`
//! preloaded and 2 MB of shared buffers, so that most reads go to the
//! pageserver.
//!
//! pgbench runs a ledger script (an account update, a history row and a
//! ledger row per transaction) while, in turn: the compute is stopped and
//! a new one starts from an empty directory; the pageserver is killed with
//! SIGKILL and restarted mid-run; a safekeeper is killed; the compute is
//! killed with SIGKILL and a new one starts. After each step every
//! acknowledged transaction is in the ledger and the books balance (the
//! accounts' sum equals the history's, which a lost or stale page breaks);
//! at the end amcheck finds nothing on any heap or B-tree, file-copying
//! commands and `DROP TABLESPACE` are refused, `pg_relation_size` answers
//! from the storage manager, an unlogged table lives on local disk, and the
//! storage manager's counters show the reads it sent.

mod compute_support;
mod pageserver_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use quire_cluster::PgCluster;

use compute_support::{Stack, amcheck_clean, check_books, ledger_wait, number};

#[test]
fn a_compute_keeps_nothing_and_loses_nothing() -> Result<()> {
    let mut stack = Stack::start()?;
    let mut pg = stack.start_compute()?;
    run_checked_pgbench_init(&pg)?;
    pg.psql("postgres", "CREATE TABLE ledger (client int, aid int)")?;

    let mut acknowledged = stack.ledger_run(&pg, 8)?;
    acknowledged = check_books(&pg, acknowledged, 0)?;

    // A clean stop, and a new compute from an empty directory.
    pg.stop()?;
    let pg = stack.start_compute()?;
    check_books(&pg, acknowledged, 0)?;

    // The pageserver killed and restarted under load: reads wait, none is wrong.
    let run = stack.ledger_spawn(&pg, 8)?;
    std::thread::sleep(Duration::from_secs(3));
    stack.server.kill();
    std::thread::sleep(Duration::from_millis(500));
    stack.server.restart_on_same_ports()?;
    acknowledged += ledger_wait(run, 8)?;
    acknowledged = check_books(&pg, acknowledged, 0)?;

    // A safekeeper down: commits go on with two of three.
    stack.safekeepers[0].kill();
    acknowledged += stack.ledger_run(&pg, 4)?;
    stack.safekeepers[0].start()?;
    acknowledged = check_books(&pg, acknowledged, 0)?;

    // The compute killed with SIGKILL mid-run; a new one on the timeline.
    let run = stack.ledger_spawn(&pg, 6)?;
    std::thread::sleep(Duration::from_secs(3));
    kill_compute_at(&pg.datadir())?;
    // pgbench fails when its server dies: what it committed is unknown, but
    // everything acknowledged before this run is.
    let _ = ledger_wait(run, 6);
    drop(pg);
    let pg = stack.start_compute()?;
    let ledger = u64::try_from(number(&pg, "SELECT count(*) FROM ledger")?)?;
    ensure!(
        ledger >= acknowledged,
        "{ledger} ledger rows after the kill, {acknowledged} acknowledged before it"
    );
    check_books(&pg, ledger, 0)?;

    // amcheck on every heap and B-tree, after most reads went remote.
    amcheck_clean(&pg, 20)?;

    check_refusals_and_locals(&pg)?;
    check_counters(&pg)?;
    Ok(())
}

fn run_checked_pgbench_init(pg: &PgCluster) -> Result<()> {
    quire_cluster::run_checked(
        pg.client("pgbench")
            .args(["-i", "-s", "3", "-q", "postgres"]),
        Duration::from_secs(300),
    )
    .context("pgbench -i")?;
    Ok(())
}

fn kill_compute_at(datadir: &Path) -> Result<()> {
    let pid_file = std::fs::read_to_string(datadir.join("postmaster.pid"))?;
    let pid = pid_file
        .lines()
        .next()
        .context("empty postmaster.pid")?
        .trim();
    let status = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()?;
    ensure!(status.success(), "kill -9 {pid}");
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// `file_copy` and `DROP TABLESPACE` are refused; a tablespace, `pg_relation_size`
/// and an unlogged table (on local disk) work.
fn check_refusals_and_locals(pg: &PgCluster) -> Result<()> {
    let refused = pg
        .psql("postgres", "CREATE DATABASE copied STRATEGY file_copy")
        .err()
        .context("CREATE DATABASE ... STRATEGY file_copy succeeded")?;
    ensure!(
        format!("{refused:#}").contains("not supported on a Quire compute"),
        "file_copy refused with: {refused:#}"
    );
    pg.psql("postgres", "CREATE DATABASE copied STRATEGY wal_log")?;
    pg.psql_script(
        "postgres",
        "SET allow_in_place_tablespaces = true;\nCREATE TABLESPACE elsewhere LOCATION '';\n",
    )?;
    pg.psql(
        "postgres",
        "CREATE TABLE moved TABLESPACE elsewhere AS SELECT g FROM generate_series(1, 3000) g",
    )?;
    let refused = pg
        .psql("postgres", "DROP TABLESPACE elsewhere")
        .err()
        .context("DROP TABLESPACE of a tablespace holding a table succeeded")?;
    ensure!(
        format!("{refused:#}").contains("DROP TABLESPACE is not supported"),
        "DROP TABLESPACE refused with: {refused:#}"
    );
    ensure!(
        number(pg, "SELECT count(*) FROM moved")? == 3000,
        "rows in the tablespace"
    );
    // pgbench -i -s 3 writes 300,000 accounts: about 40 MB of heap.
    let size = number(pg, "SELECT pg_relation_size('pgbench_accounts')")?;
    ensure!(
        size > 30 << 20,
        "pg_relation_size says {size} bytes: not from the storage manager"
    );
    pg.psql(
        "postgres",
        "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 5000) g",
    )?;
    ensure!(
        number(pg, "SELECT count(*) FROM scratch")? == 5000,
        "unlogged rows"
    );
    let path = pg.psql("postgres", "SELECT pg_relation_filepath('scratch')")?;
    let file = pg.datadir().join(path.trim());
    let size = std::fs::metadata(&file)
        .with_context(|| format!("the unlogged table's file {}", file.display()))?
        .len();
    ensure!(size > 0, "the unlogged table's local file is empty");
    let path = pg.psql(
        "postgres",
        "SELECT pg_relation_filepath('pgbench_accounts')",
    )?;
    ensure!(
        !pg.datadir().join(path.trim()).exists(),
        "a permanent table has a local file"
    );
    Ok(())
}

/// The storage manager's counters show its reads, from the pageserver and
/// from the local cache.
fn check_counters(pg: &PgCluster) -> Result<()> {
    pg.psql("postgres", "CREATE EXTENSION IF NOT EXISTS quire_smgr")?;
    let reads = number(
        pg,
        "SELECT value FROM quire_smgr_stats() WHERE name = 'read_pages'",
    )?;
    ensure!(reads > 100, "only {reads} pages read from the pageserver");
    // The 4 MB local cache both served reads and evicted pages.
    let hits = number(
        pg,
        "SELECT value FROM quire_smgr_stats() WHERE name = 'local_cache_hits'",
    )?;
    let evictions = number(
        pg,
        "SELECT value FROM quire_smgr_stats() WHERE name = 'local_cache_evictions'",
    )?;
    println!("local cache: {hits} hits, {evictions} evictions");
    ensure!(hits > 0, "no read served by the local cache");
    ensure!(evictions > 0, "the 4 MB local cache never evicted");
    let latency = pg.psql(
        "postgres",
        "SELECT requests, p50_us, p99_us FROM quire_getpage_latency()",
    )?;
    println!("compute-side GetPage: {}", latency.trim());
    Ok(())
}
