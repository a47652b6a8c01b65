//! Back-pressure from the pageserver's ingest on a compute over Quire: a
//! compute whose pages are all in its caches must still not write WAL more
//! than `quire.max_ingest_lag` ahead of what the pageserver ingested (else
//! its later reads fail with `WalNotIngested`). With the pageserver stopped
//! (SIGSTOP), a bulk insert waits; when it runs again the insert finishes
//! and the lag is back under the limit. A pageserver that does not come
//! back within `quire.retry_timeout` makes the writer fail with an error,
//! losing nothing acknowledged.

mod compute_support;
mod pageserver_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use compute_support::{Stack, number};

/// About 9 MB of WAL: far past a 1 MB limit.
const BULK_INSERT: &str =
    "INSERT INTO bulk SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g";

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

#[test]
fn a_compute_waits_for_a_pageserver_that_falls_behind() -> Result<()> {
    let stack = Stack::start()?;
    // Every page this test touches stays in shared buffers or the cache.
    let pg = stack.start_compute_with("32MB", "64MB")?;
    pg.psql("postgres", "ALTER SYSTEM SET quire.max_ingest_lag = '1MB'")?;
    pg.psql("postgres", "SELECT pg_reload_conf()")?;
    pg.psql("postgres", "CREATE EXTENSION quire_smgr")?;
    pg.psql("postgres", "CREATE TABLE bulk (id int, filler text)")?;
    let pid = stack.server.pid().context("the pageserver's pid")?;

    // The pageserver stopped: the insert waits instead of running ahead.
    signal(pid, "STOP")?;
    let mut insert = pg
        .client("psql")
        .args([
            "--no-psqlrc",
            "--set",
            "ON_ERROR_STOP=1",
            "--command",
            BULK_INSERT,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(4));
    let still_waiting = insert.try_wait()?.is_none();
    signal(pid, "CONT")?;
    ensure!(
        still_waiting,
        "the insert finished with the pageserver stopped"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = insert.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "the insert did not finish after the pageserver came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        status.success(),
        "the insert failed after the pageserver came back"
    );
    ensure!(number(&pg, "SELECT count(*) FROM bulk")? == 40_000);
    let probes = number(
        &pg,
        "SELECT value FROM quire_smgr_stats() WHERE name = 'ingest_probes'",
    )?;
    // Without the limit nothing asks (a read would block on the stopped
    // pageserver too, but only back-pressure asks what it ingested).
    ensure!(probes >= 1, "no backend asked what the pageserver ingested");
    // The insert committed within the limit of the pageserver's progress.
    let lag = number(
        &pg,
        "SELECT (pg_current_wal_insert_lsn() - ('0/0'::pg_lsn + value::numeric))::bigint \
         FROM quire_smgr_stats() WHERE name = 'pageserver_ingested_lsn'",
    )?;
    ensure!(
        lag <= 2 << 20,
        "the compute ended {lag} bytes ahead of the pageserver"
    );

    // A pageserver that stays away: the writer gives up with an error.
    signal(pid, "STOP")?;
    let started = Instant::now();
    let failed = pg.psql(
        "postgres",
        &format!("SET quire.request_timeout = '1s'; SET quire.retry_timeout = '3s'; {BULK_INSERT}"),
    );
    let took = started.elapsed();
    signal(pid, "CONT")?;
    let error = format!(
        "{:#}",
        failed
            .err()
            .context("the insert succeeded with the pageserver away")?
    );
    ensure!(took < Duration::from_secs(60), "the writer waited {took:?}");
    ensure!(
        error.contains("pageserver"),
        "the error does not name the pageserver: {error}"
    );
    ensure!(
        number(&pg, "SELECT count(*) FROM bulk")? == 40_000,
        "the failed insert left rows behind"
    );
    Ok(())
}
