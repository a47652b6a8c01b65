//! `quire verify --primary`: the WAL receiver follows a running Postgres 17
//! primary as a physical replication client with a slot, from the base's
//! checkpoint until the primary shuts down, and every page Quire rebuilds
//! must be the page Postgres wrote.
//!
//! One run: pgbench and DDL on the primary while verify follows it, through
//! a slot the test made before (reused), then a clean stop, which must end
//! the stream at the shutdown checkpoint. Another: an idle primary whose
//! slot verify creates (the URI form of the connection string), and a
//! primary of another cluster, refused at once by name without a slot left
//! behind.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_bounded, run_checked};
use quire_tests::{assert_log_clean, pg_install};

const DDL: &str = r"
CREATE TABLE docs (id serial PRIMARY KEY, body text, tags text[]);
INSERT INTO docs (body, tags)
  SELECT md5(g::text), ARRAY[(g % 10)::text] FROM generate_series(1, 5000) g;
CREATE INDEX docs_body ON docs (body);
CREATE INDEX docs_tags ON docs USING gin (tags);
DELETE FROM docs WHERE id % 3 = 0;
VACUUM docs;
ALTER TABLE docs ADD COLUMN extra int DEFAULT 7;
CREATE TABLE gone AS SELECT g FROM generate_series(1, 10000) g;
TRUNCATE gone;
DROP TABLE gone;
CREATE DATABASE second_db;
";

fn options() -> PgClusterOptions {
    PgClusterOptions::default()
        .setting("wal_keep_size", "'1GB'")
        .setting("max_wal_size", "'1GB'")
}

/// A cluster (not started) and a copy of it right after initdb.
fn cluster_with_base() -> Result<(PgCluster, std::path::PathBuf)> {
    let pg = PgCluster::create(&pg_install()?, options())?;
    let base = pg.datadir().with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(pg.datadir()).arg(&base),
        Duration::from_secs(60),
    )
    .context("copy the freshly initdb'ed cluster")?;
    Ok((pg, base))
}

fn verify_command(base: &Path, pg: &PgCluster, connstr: &str, slot: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quire"));
    command
        .arg("verify")
        .arg("--base")
        .arg(base)
        .arg("--pgdata")
        .arg(pg.datadir())
        .arg("--primary")
        .arg(connstr);
    if let Some(slot) = slot {
        command.arg("--slot").arg(slot);
    }
    command
}

/// A `quire verify` running in the background.
struct Background {
    child: Child,
}

impl Background {
    fn start(mut command: Command) -> Result<Background> {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start quire verify")?;
        Ok(Background { child })
    }

    /// Waits for it to exit (killing it after `limit`): status, stdout, stderr.
    fn finish(mut self, limit: Duration) -> Result<(ExitStatus, String, String)> {
        let mut stdout = self.child.stdout.take().context("stdout")?;
        let mut stderr = self.child.stderr.take().context("stderr")?;
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let began = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if began.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("quire verify did not finish in {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        print!("{stdout}");
        eprint!("{stderr}");
        Ok((status, stdout, stderr))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until a walsender streams to `slot`.
fn wait_streaming(pg: &PgCluster, slot: &str, verify: &mut Background) -> Result<()> {
    let began = Instant::now();
    loop {
        let active = pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
            ),
        )?;
        if active.trim() == "1" {
            return Ok(());
        }
        if let Some(status) = verify.child.try_wait()? {
            bail!("quire verify exited ({status}) before it streamed");
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "quire verify did not start streaming from slot {slot} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The counts of `verify: N pages compared, N identical, N different`.
fn summary(stdout: &str) -> Result<(u64, u64, u64)> {
    let last = stdout.lines().last().unwrap_or_default();
    ensure!(
        last.starts_with("verify: "),
        "last line is not the summary: {last}"
    );
    let counts: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let &[compared, identical, different] = &counts[..] else {
        bail!("last line is not the summary: {last}");
    };
    Ok((compared, identical, different))
}

#[test]
fn verify_follows_a_primary_through_pgbench_and_ddl_on_a_reused_slot() -> Result<()> {
    let (mut pg, base) = cluster_with_base()?;
    pg.start()?;
    // The slot exists before verify starts (verify must reuse it); reserved
    // at once, it keeps the WAL from BASE's checkpoint on.
    pg.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('quire_verify', true)",
    )?;
    let connstr = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let mut verify = Background::start(verify_command(&base, &pg, &connstr, None))?;
    wait_streaming(&pg, "quire_verify", &mut verify)?;
    run_checked(
        pg.client("pgbench").args(["-i", "-q", "-s", "2"]),
        Duration::from_secs(300),
    )
    .context("pgbench -i")?;
    run_checked(
        pg.client("pgbench")
            .args(["-c", "2", "-j", "2", "-T", "10"]),
        Duration::from_secs(300),
    )
    .context("pgbench")?;
    pg.psql_script("postgres", DDL)?;
    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    let (status, stdout, _) = verify.finish(Duration::from_secs(900))?;
    let _ = std::fs::remove_dir_all(&base);
    assert_log_clean(&pg, &[])?;
    ensure!(
        stdout.contains("slot quire_verify (reused)"),
        "the slot was not reused"
    );
    let (compared, identical, different) = summary(&stdout)?;
    ensure!(compared > 1_000, "too few pages compared: {compared}");
    ensure!(
        different == 0 && identical == compared && status.success(),
        "pages differ: {compared} compared, {identical} identical, {different} different ({status})"
    );
    Ok(())
}

#[test]
fn an_idle_primary_gets_a_slot_and_another_cluster_is_refused() -> Result<()> {
    let (mut pg, base) = cluster_with_base()?;
    let mut other = PgCluster::create(&pg_install()?, options())?;
    pg.start()?;
    other.start()?;

    // Another cluster: refused at once (not retried), naming both clusters.
    let theirs = other.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )?;
    let ours = pg.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )?;
    let wrong = format!("postgresql://postgres@127.0.0.1:{}/postgres", other.port());
    let refused = run_bounded(
        &mut verify_command(&base, &pg, &wrong, Some("fresh")),
        Duration::from_secs(120),
    )?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprint!("{stderr}");
    ensure!(!refused.status.success(), "another cluster was followed");
    let expected = format!(
        "is cluster {}, the timeline's is {}",
        theirs.trim(),
        ours.trim()
    );
    ensure!(stderr.contains(&expected), "no clear refusal: {stderr}");
    let slots = other.psql("postgres", "SELECT count(*) FROM pg_replication_slots")?;
    ensure!(slots.trim() == "0", "a slot was left on the other cluster");
    other.stop()?;

    // The right one, idle: verify creates its slot and ends at the shutdown.
    let uri = format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port());
    let mut verify = Background::start(verify_command(&base, &pg, &uri, Some("fresh")))?;
    wait_streaming(&pg, "fresh", &mut verify)?;
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    )?;
    pg.stop()?;
    let (status, stdout, _) = verify.finish(Duration::from_secs(600))?;
    let _ = std::fs::remove_dir_all(&base);
    assert_log_clean(&pg, &[])?;
    ensure!(
        stdout.contains("slot fresh (created)"),
        "the slot was not created"
    );
    let (compared, identical, different) = summary(&stdout)?;
    ensure!(
        compared > 100 && different == 0 && identical == compared && status.success(),
        "pages differ: {compared} compared, {identical} identical, {different} different ({status})"
    );
    Ok(())
}
