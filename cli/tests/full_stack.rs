//! The full stack on loopback: the patched Postgres 17 (data on its local
//! disk), three `quire safekeeper`s with `synchronous_standby_names =
//! 'ANY 2 (sk1, sk2, sk3)'`, and the pageserver's WAL receiver.
//!
//! pgbench runs TPC-B with 4 clients (60 s by default) through a script
//! that also inserts `(client, n)` into a ledger in each transaction;
//! pgbench's per-transaction log is the client-side record of every
//! acknowledged transaction. During the run one safekeeper is killed with
//! SIGKILL and restarted, later another; then two are down at once, when
//! commits must stop, and resume when one returns. Afterwards every
//! acknowledged transaction is in the ledger, the three safekeepers hold
//! identical WAL, and `quire verify` — its WAL taken from the safekeepers
//! through the WAL receiver, with one safekeeper killed while it runs —
//! finds every page identical to Postgres' after a CHECKPOINT and a clean
//! stop. `QUIRE_FULL_STACK_SCALE` / `QUIRE_FULL_STACK_SECONDS` shrink it.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, run_bounded, run_checked};
use quire_postgres::Lsn;
use quire_tests::pg_install;
use quire_tests::safekeepers::{
    KEY_TEXT, Safekeeper, bootstrap, check_safekeepers_agree, start_safekeepers,
};

const SCRIPT: &str = r"\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
\set n :n + 1
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO ledger VALUES (:client_id, :n);
END;
";

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

/// The fault schedule, as fractions of the run: `(when, safekeeper, up)`.
const FAULTS: [(f64, usize, bool); 6] = [
    (0.15, 0, false),
    (0.30, 0, true),
    (0.40, 1, false),
    (0.55, 2, false),
    (0.68, 2, true),
    (0.80, 1, true),
];

/// Runs the fault schedule against the safekeepers while pgbench runs;
/// returns when each fault happened (seconds into the run).
fn run_faults(safekeepers: &mut [Safekeeper], seconds: u64, began: Instant) -> Result<Vec<f64>> {
    let mut at = Vec::new();
    for (fraction, index, up) in FAULTS {
        let when = Duration::from_secs(seconds).mul_f64(fraction);
        if let Some(wait) = when.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
        at.push(began.elapsed().as_secs_f64());
        if up {
            safekeepers[index].start()?;
        } else {
            safekeepers[index].kill();
        }
        println!(
            "{:>5.1} s: sk{} {}",
            began.elapsed().as_secs_f64(),
            index + 1,
            if up { "restarted" } else { "killed (SIGKILL)" }
        );
    }
    Ok(at)
}

/// `(second, tps)` from pgbench's `--progress` lines.
fn progress(stderr: &str) -> Vec<(f64, f64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("progress: ")?;
            let (second, rest) = rest.split_once(" s, ")?;
            let (tps, _) = rest.split_once(" tps")?;
            Some((second.parse().ok()?, tps.parse().ok()?))
        })
        .collect()
}

/// Every `(client, n)` pgbench logged as done (its logged transaction
/// number and the script's `n` both count from 1).
fn acknowledged(dir: &Path) -> Result<HashSet<(u32, u32)>> {
    let mut done = HashSet::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ledger"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let mut fields = line.split_whitespace();
            let client: u32 = fields.next().context("log line")?.parse()?;
            let number: u32 = fields.next().context("log line")?.parse()?;
            done.insert((client, number));
        }
    }
    Ok(done)
}

fn check_ledger(pg: &PgCluster, logs: &Path) -> Result<usize> {
    let acknowledged = acknowledged(logs)?;
    let rows: HashSet<(u32, u32)> = pg
        .psql("postgres", "SELECT client, seq FROM ledger")?
        .lines()
        .filter_map(|l| {
            let (c, n) = l.split_once('|')?;
            Some((c.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let missing: Vec<_> = acknowledged.difference(&rows).take(10).collect();
    ensure!(
        missing.is_empty(),
        "acknowledged transactions missing from the ledger: {missing:?}"
    );
    println!(
        "ledger: all {} acknowledged transactions present ({} rows)",
        acknowledged.len(),
        rows.len()
    );
    Ok(acknowledged.len())
}

/// TPC-B plus the ledger insert for `seconds`, while the fault schedule
/// runs; checks that commits stopped with two safekeepers down and
/// resumed after.
fn pgbench_under_faults(
    pg: &PgCluster,
    safekeepers: &mut [Safekeeper],
    logs: &Path,
    scale: u64,
    seconds: u64,
) -> Result<()> {
    std::fs::create_dir_all(logs)?;
    std::fs::write(logs.join("script.sql"), SCRIPT)?;
    let began = Instant::now();
    let bench = pg
        .client("pgbench")
        .current_dir(logs)
        .args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "--progress",
            "1",
        ])
        .args(["-l", "--log-prefix=ledger", "-D", "n=0", "-f", "script.sql"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let faults = run_faults(safekeepers, seconds, began)?;
    let output = bench.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "pgbench failed: {stderr}");
    let (two_down, back) = (faults[3], faults[4]);
    let samples = progress(&stderr);
    let stalled: Vec<_> = samples
        .iter()
        .filter(|(s, _)| *s > two_down + 1.5 && *s < back - 0.5)
        .collect();
    ensure!(
        !stalled.is_empty(),
        "no progress lines while two safekeepers were down"
    );
    ensure!(
        stalled.iter().all(|(_, tps)| *tps == 0.0),
        "commits went on with two of three safekeepers down: {stalled:?}"
    );
    let after: f64 = samples
        .iter()
        .filter(|(s, _)| *s > back + 2.0)
        .map(|(_, t)| t)
        .sum();
    ensure!(
        after > 0.0,
        "commits did not resume after a safekeeper returned"
    );
    println!(
        "pgbench {seconds} s at scale {scale}: 0 tps for {} progress seconds with 2 of 3 down; {}",
        stalled.len(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with("tps"))
            .unwrap_or("")
    );
    Ok(())
}

/// `quire verify` with its WAL from the safekeepers; `victim` is killed
/// while it runs. With `must_switch`, the receiver must have changed
/// safekeeper.
fn verify_through_safekeepers(
    quire: &Path,
    base: &Path,
    pg: &PgCluster,
    addresses: &[String],
    victim: &mut Safekeeper,
    must_switch: bool,
) -> Result<()> {
    // The pageserver follows the safekeepers; one dies under it.
    let verify = Command::new(quire)
        .arg("verify")
        .arg("--base")
        .arg(base)
        .arg("--pgdata")
        .arg(pg.datadir())
        .arg("--safekeepers")
        .arg(addresses.join(","))
        .args(["--timeline", KEY_TEXT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Its first line comes when the base is imported and the WAL stream
    // starts; the victim dies half a second into the stream.
    let mut verify = verify;
    let reader = std::io::BufReader::new(verify.stdout.take().context("verify's stdout")?);
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let collector = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
            if lines.is_empty() {
                let _ = first_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    let _ = first_rx.recv_timeout(Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(500));
    victim.kill();
    let output = run_bounded_wait(verify)?;
    let stdout = collector
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))?
        .join("\n");
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    ensure!(
        output.status.success() && last.ends_with(" 0 different"),
        "quire verify through the safekeepers: {last}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // At full size the stream outlasts the kill: the receiver must have
    // moved to another safekeeper (sk1 is the first pick when all are
    // equal, as they are after the compute stopped).
    let line = stdout
        .lines()
        .find(|l| l.starts_with("WAL from the safekeepers"))
        .unwrap_or_default();
    let connections: u64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if must_switch {
        ensure!(
            connections >= 2,
            "the WAL receiver never switched safekeeper: {line}"
        );
    }
    Ok(())
}

#[test]
fn acknowledged_commits_survive_safekeeper_kills_and_the_pageserver_matches() -> Result<()> {
    let scale = env_number("QUIRE_FULL_STACK_SCALE", 10)?;
    let seconds = env_number("QUIRE_FULL_STACK_SECONDS", 60)?;
    let install = pg_install()?;
    let options = quire_tests::safekeepers::compute_options().setting("max_wal_size", "'4GB'");
    let mut pg = PgCluster::create(&install, options)?;
    let base = pg.datadir().with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(pg.datadir()).arg(&base),
        Duration::from_secs(60),
    )?;
    let root = tempfile::tempdir()?;
    let quire = Path::new(env!("CARGO_BIN_EXE_quire"));
    let (mut safekeepers, addresses) = start_safekeepers(quire, root.path())?;
    pg.start()?;
    let won = bootstrap(&pg, &addresses)?;
    println!("elected term {} at {}", won.term, won.start);
    run_checked(
        pg.client("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string()]),
        Duration::from_secs(900),
    )?;
    pg.psql(
        "postgres",
        "CREATE TABLE ledger (client int, seq int, PRIMARY KEY (client, seq))",
    )?;
    let logs = root.path().join("logs");
    pgbench_under_faults(&pg, &mut safekeepers, &logs, scale, seconds)?;
    check_ledger(&pg, &logs)?;

    pg.psql("postgres", "CHECKPOINT")?;
    pg.stop()?;
    let control = quire_pageserver::import::read_control(&pg.datadir())?;
    let checkpoint: Lsn = control.checkpoint_lsn();
    check_safekeepers_agree(&safekeepers, won.start, checkpoint)?;
    println!(
        "the 3 safekeepers hold identical WAL {}..{checkpoint}",
        won.start
    );

    verify_through_safekeepers(
        quire,
        &base,
        &pg,
        &addresses,
        &mut safekeepers[0],
        scale >= 10 && seconds >= 60,
    )?;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// Waits for a spawned process (at most 20 minutes).
fn run_bounded_wait(child: std::process::Child) -> Result<std::process::Output> {
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let began = Instant::now();
    while !waiter.is_finished() {
        if began.elapsed() > Duration::from_secs(1200) {
            let _ = run_bounded(
                Command::new("kill").arg("-9").arg(pid.to_string()),
                Duration::from_secs(5),
            );
            anyhow::bail!("quire verify did not finish in 20 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiter panicked"))?
        .map_err(Into::into)
}
