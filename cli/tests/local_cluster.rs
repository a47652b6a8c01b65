//! `quire start`, `quire status`, `quire compute stop|start` and `quire
//! stop` on a local cluster, as a user runs them.
//!
//! `quire start --dir D` brings the cluster up and prints the compute's
//! connection string; psql creates a table and fills it; `quire status`
//! shows every process up; the compute is stopped and a new one started
//! from an empty data directory, which sees the rows and takes more; the
//! `quire branch create` at the LSN after the first rows starts a compute
//! that sees only those, and the branch's writes and the parent's stay
//! apart; the whole cluster is stopped and started again (the pageserver
//! re-reads the WAL across the computes' starts), and every row is there,
//! on the branch too; a `quire start` on the running cluster is refused;
//! `quire stop` twice is harmless. No log holds an unexpected ERROR, FATAL or PANIC.
//!
//! The default compute reads its relations through `quire_smgr`; the
//! local-data mode (`--full-basebackup`) runs the same steps with the
//! relation files in the basebackup.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgInstall, run_bounded};
use quire_tests::pg_install;

/// The longest one `quire` command of the test may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// Runs `quire args…` (bounded): its stdout, or an error with its output.
fn quire(args: &[&str]) -> Result<String> {
    let output = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_quire"))
            .args(args)
            .env("RUST_BACKTRACE", "0"),
        COMMAND_DEADLINE,
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("$ quire {}\n{stdout}", args.join(" "));
    ensure!(
        output.status.success(),
        "quire {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(stdout)
}

/// The connection string on the `compute: postgresql://…` line.
fn compute_url(output: &str) -> Result<String> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("compute: "))
        .filter(|url| url.starts_with("postgresql://"))
        .map(str::to_owned)
        .with_context(|| format!("no `compute: postgresql://…` line in:\n{output}"))
}

/// Runs `sql` with psql against `url` (bounded); its output, tuples only.
fn psql(install: &PgInstall, url: &str, sql: &str) -> Result<String> {
    let output = run_bounded(
        Command::new(install.bin("psql"))
            .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
            .args([
                "--set",
                "ON_ERROR_STOP=1",
                "--dbname",
                url,
                "--command",
                sql,
            ]),
        Duration::from_secs(120),
    )?;
    ensure!(
        output.status.success(),
        "psql {sql:?} on {url}: {}",
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Stops the cluster when the test ends, passing or failing, so no
/// process outlives it.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn dir(&self) -> &str {
        self.dir.to_str().unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = quire(&["stop", "--dir", self.dir()]) {
            eprintln!("quire stop at the end: {error:#}");
        }
    }
}

/// `quire status` shows each of `processes` up and none down.
fn check_status(cluster: &Cluster, processes: &[&str]) -> Result<String> {
    let status = quire(&["status", "--dir", cluster.dir()])?;
    for process in processes {
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{process}: ")))
            .with_context(|| format!("no {process} line in:\n{status}"))?;
        ensure!(line.starts_with(&format!("{process}: up")), "{line}");
    }
    ensure!(
        !status.contains("down") && !status.contains("receiver stopped"),
        "quire status:\n{status}"
    );
    Ok(status)
}

/// Log lines of `dir/logs` with an ERROR, FATAL or PANIC (or a Rust
/// panic) that contain none of `expected`.
fn unexpected_log_lines(dir: &Path, expected: &[&str]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir.join("logs"))? {
        let path = entry?.path();
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        for line in text.lines() {
            let bad = ["ERROR:", "FATAL:", "PANIC:", "panicked"]
                .iter()
                .any(|level| line.contains(level));
            if bad && !expected.iter().any(|allowed| line.contains(allowed)) {
                found.push(format!("{}: {line}", path.display()));
            }
        }
    }
    Ok(found)
}

/// The connection string on the `branch NAME: compute: postgresql://…` line.
fn branch_url(output: &str, name: &str) -> Result<String> {
    let prefix = format!("branch {name}: compute: ");
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
        .with_context(|| format!("no `{prefix}…` line in:\n{output}"))
}

/// sk1's flush LSN of the main timeline, from `quire status`.
fn sk1_flush(status: &str) -> Result<String> {
    let line = status
        .lines()
        .find(|l| l.starts_with("sk1: up"))
        .with_context(|| format!("no sk1 line in:\n{status}"))?;
    let (_, rest) = line
        .split_once("main: ")
        .with_context(|| format!("no main timeline in {line}"))?;
    let flush = rest
        .split(", ")
        .find_map(|part| part.strip_prefix("flush "))
        .with_context(|| format!("no flush LSN in {line}"))?;
    Ok(flush.to_owned())
}

/// `pg_waldump` reads sk1's WAL of the main timeline from its start up
/// to `flushed` with every record's back link checked: the computes'
/// first records link to the records before them.
fn waldump_reads_across_computes(
    install: &PgInstall,
    cluster: &Cluster,
    flushed: &str,
) -> Result<()> {
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.dir.join("cluster.json"))?)?;
    let field = |name: &str| {
        file["cluster"][name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name} in cluster.json"))
    };
    let wal = cluster
        .dir
        .join("safekeepers/sk1")
        .join(field("tenant_id")?)
        .join(field("timeline_id")?);
    let output = run_bounded(
        Command::new(install.bin("pg_waldump"))
            .arg("--path")
            .arg(&wal)
            .args(["--start", &field("timeline_start_lsn")?, "--end", flushed]),
        Duration::from_secs(60),
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "pg_waldump over {}: {}",
        wal.display(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    let checkpoints = stdout
        .lines()
        .filter(|l| l.contains("CHECKPOINT_SHUTDOWN"))
        .count();
    // The import's, then each compute's start and stop.
    ensure!(
        checkpoints >= 4,
        "{checkpoints} shutdown checkpoints in sk1's WAL:\n{stdout}"
    );
    Ok(())
}

/// The rows of the ledger: `count|max(phase)`.
const LEDGER: &str = "SELECT count(*), max(phase) FROM ledger";

fn run_scenario(mode: &[&str]) -> Result<()> {
    let install = pg_install()?;
    let root = tempfile::tempdir()?;
    // Postgres runs as the unprivileged user, which must reach the cluster.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let cluster = Cluster {
        dir: root.path().join("cluster"),
    };
    let mut start = vec!["start", "--dir", cluster.dir()];
    start.extend(mode);
    let url = compute_url(&quire(&start)?)?;
    let processes = ["sk1", "sk2", "sk3", "pageserver", "compute"];
    check_status(&cluster, &processes)?;
    psql(
        &install,
        &url,
        "CREATE TABLE ledger (id int PRIMARY KEY, phase int NOT NULL); \
         INSERT INTO ledger SELECT g, 1 FROM generate_series(1, 5000) g",
    )?;
    let branch_point = psql(&install, &url, "SELECT pg_current_wal_insert_lsn()")?;

    // A new compute from an empty data directory.
    let compute_dir = cluster.dir.join("compute");
    let stopped = quire(&[
        "compute",
        "stop",
        "--dir",
        compute_dir.to_str().context("path")?,
    ])?;
    ensure!(stopped.contains(": stopped"), "{stopped}");
    let status = quire(&["status", "--dir", cluster.dir()])?;
    ensure!(status.contains("compute: down"), "{status}");
    let url = compute_url(&quire(&["compute", "start", "--cluster", cluster.dir()])?)?;
    let rows = psql(&install, &url, LEDGER)?;
    ensure!(rows == "5000|1", "after the compute restart: {rows}");
    psql(
        &install,
        &url,
        "INSERT INTO ledger SELECT g, 2 FROM generate_series(5001, 6000) g",
    )?;

    // A branch at the LSN after the first phase sees that moment; its
    // writes and the parent's stay apart.
    let created = quire(&[
        "branch",
        "create",
        "past",
        "--at",
        &branch_point,
        "--dir",
        cluster.dir(),
    ])?;
    let branch = branch_url(&created, "past")?;
    let rows = psql(&install, &branch, LEDGER)?;
    ensure!(rows == "5000|1", "the branch at {branch_point}: {rows}");
    psql(
        &install,
        &branch,
        "INSERT INTO ledger SELECT g, 3 FROM generate_series(9001, 9010) g",
    )?;
    let rows = psql(&install, &url, LEDGER)?;
    ensure!(
        rows == "6000|2",
        "the parent after the branch's writes: {rows}"
    );
    let status = check_status(&cluster, &processes)?;
    ensure!(
        status.contains("branch past (timeline") && status.contains("compute: up"),
        "{status}"
    );

    restart_and_stop(&install, &cluster, &processes)
}

/// The whole cluster stopped and started again with every row there, a
/// second start refused, two stops, clean logs.
fn restart_and_stop(install: &PgInstall, cluster: &Cluster, processes: &[&str]) -> Result<()> {
    // The whole cluster stopped and started again.
    let stopped = quire(&["stop", "--dir", cluster.dir()])?;
    ensure!(
        stopped.lines().filter(|l| l.ends_with(": stopped")).count() == 6,
        "{stopped}"
    );
    let started = quire(&["start", "--dir", cluster.dir()])?;
    let url = compute_url(&started)?;
    let rows = psql(install, &url, LEDGER)?;
    ensure!(rows == "6000|2", "after the cluster restart: {rows}");
    let branch = branch_url(&started, "past")?;
    let rows = psql(install, &branch, "SELECT count(*) FROM ledger")?;
    ensure!(
        rows == "5010",
        "the branch after the cluster restart: {rows}"
    );
    let status = check_status(cluster, processes)?;
    let flushed = sk1_flush(&status)?;

    // A running cluster is not started twice.
    let again = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_quire")).args(["start", "--dir", cluster.dir()]),
        COMMAND_DEADLINE,
    )?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.contains("is running"),
        "quire start on a running cluster: {}: {stderr}",
        again.status
    );

    quire(&["stop", "--dir", cluster.dir()])?;
    waldump_reads_across_computes(install, cluster, &flushed)?;
    let second = quire(&["stop", "--dir", cluster.dir()])?;
    ensure!(
        second
            .lines()
            .filter(|l| l.ends_with(": was not running"))
            .count()
            == 6,
        "the second quire stop: {second}"
    );
    let unexpected = unexpected_log_lines(
        &cluster.dir,
        &[
            // psql's probes while Postgres starts, and the safekeepers'
            // reconnects while it stops.
            "the database system is starting up",
            "the database system is shutting down",
            "terminating connection due to administrator command",
        ],
    )?;
    if !unexpected.is_empty() {
        bail!("unexpected log lines:\n{}", unexpected.join("\n"));
    }
    Ok(())
}

#[test]
fn a_local_cluster_keeps_its_rows_across_compute_and_cluster_restarts() -> Result<()> {
    run_scenario(&[])
}

#[test]
fn a_local_cluster_in_local_data_mode_keeps_its_rows_across_restarts() -> Result<()> {
    run_scenario(&["--full-basebackup"])
}
