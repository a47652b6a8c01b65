//! The test-cluster helper itself: clusters start, restart, stop within their
//! bounds, run as an unprivileged user, and keep durable data across a crash.

use anyhow::{Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_tests::{assert_log_clean, pg_install};

#[test]
fn cluster_survives_restart_and_crash_and_cleans_up() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
    let root = pg.datadir();
    pg.start()?;
    let version = pg.psql("postgres", "SHOW server_version_num")?;
    ensure!(
        version.trim().starts_with("17"),
        "not Postgres 17: {version}"
    );
    let user = pg.psql("postgres", "SELECT current_setting('data_directory'), usesuper FROM pg_user WHERE usename = current_user")?;
    ensure!(
        user.trim().ends_with("|t"),
        "not connected as a superuser: {user}"
    );

    pg.psql(
        "postgres",
        "CREATE TABLE ledger (id int); INSERT INTO ledger VALUES (1), (2)",
    )?;
    pg.restart()?;
    // An immediate stop is a crash: committed rows must come back by WAL replay.
    pg.psql("postgres", "INSERT INTO ledger VALUES (3)")?;
    pg.stop_immediate()?;
    pg.start()?;
    let sum = pg.psql("postgres", "SELECT sum(id) FROM ledger")?;
    ensure!(
        sum.trim() == "6",
        "rows lost across restart and crash: {sum}"
    );
    assert_log_clean(&pg, &[])?;
    pg.stop()?;
    drop(pg);
    ensure!(
        !root.exists(),
        "{} left behind after a passing test",
        root.display()
    );
    Ok(())
}

#[test]
fn two_clusters_run_side_by_side() -> Result<()> {
    let install = pg_install()?;
    let mut a = PgCluster::create(&install, PgClusterOptions::default())?;
    let mut b = PgCluster::create(&install, PgClusterOptions::default())?;
    a.start()?;
    b.start()?;
    ensure!(a.port() != b.port(), "both clusters on port {}", a.port());
    a.psql("postgres", "CREATE TABLE only_in_a (x int)")?;
    let in_b = b.psql(
        "postgres",
        "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'",
    )?;
    ensure!(in_b.trim() == "0", "clusters share state: {in_b}");
    a.stop()?;
    b.stop()
}

#[test]
fn a_bad_setting_fails_start_with_the_server_log() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default().setting("shared_buffers", "'not a size'");
    let mut pg = PgCluster::create(&install, options)?;
    let error = format!(
        "{:#}",
        pg.start().expect_err("start with an invalid setting")
    );
    ensure!(
        error.contains("shared_buffers"),
        "the start error does not show the log: {error}"
    );
    Ok(())
}

#[test]
fn a_failing_test_keeps_the_cluster_directory_and_log() -> Result<()> {
    let install = pg_install()?;
    let (sender, receiver) = std::sync::mpsc::channel();
    let failing_test = std::thread::spawn(move || {
        let mut pg = PgCluster::create(&install, PgClusterOptions::default()).unwrap();
        pg.start().unwrap();
        sender.send((pg.datadir(), pg.log_path())).unwrap();
        panic!("a test fails while its cluster runs");
    });
    ensure!(
        failing_test.join().is_err(),
        "the failing test did not fail"
    );
    let (datadir, log) = receiver.recv()?;
    ensure!(
        datadir.join("PG_VERSION").is_file(),
        "{} was removed",
        datadir.display()
    );
    let log_text = std::fs::read_to_string(&log)?;
    ensure!(
        log_text.contains("database system is ready to accept connections"),
        "the kept log is not the server's: {log_text}"
    );
    ensure!(
        !datadir.join("postmaster.pid").exists(),
        "the server of the failed test still runs"
    );
    if let Some(root) = datadir.parent() {
        std::fs::remove_dir_all(root)?;
    }
    Ok(())
}
