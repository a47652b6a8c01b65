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
//! commands are refused, an unlogged table lives on local disk, and the
//! storage manager's counters show the reads it sent.

mod pageserver_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, free_port};
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::wire::TimelineKey;
use quire_tests::pg_install;
use quire_tests::safekeepers::{Safekeeper, on_executor, start_safekeepers};

use pageserver_support::{
    Imported, Pageserver, import_with, lsn_field, quire, quire_binary, timeline_show,
};

const LEDGER_SCRIPT: &str = r"\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO ledger VALUES (:client_id, :aid);
END;
";

const AMCHECK: &str = r"
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) v
  WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't';
SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_class c
  JOIN pg_am a ON a.oid = c.relam
  WHERE a.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence <> 't') s;
";

/// Everything but the compute.
struct Stack {
    install: PgInstall,
    safekeepers: Vec<Safekeeper>,
    addresses: Vec<String>,
    server: Pageserver,
    timeline: Imported,
    key: TimelineKey,
    script: PathBuf,
    root: tempfile::TempDir,
}

impl Stack {
    fn start() -> Result<Stack> {
        let install = pg_install()?;
        let root = tempfile::tempdir()?;
        let (safekeepers, addresses) = start_safekeepers(Path::new(quire_binary()), root.path())?;
        let mut init = PgCluster::create(&install, PgClusterOptions::default())?;
        init.start()?;
        let system_id: u64 = init
            .psql(
                "postgres",
                "SELECT system_identifier FROM pg_control_system()",
            )?
            .trim()
            .parse()?;
        init.stop()?;
        let server = Pageserver::start(&root.path().join("ps"), &["--cores", "1"])?;
        let list = addresses.join(",");
        let timeline = import_with(
            &server,
            &init.datadir(),
            &[],
            &["--safekeepers", &list],
            None,
        )?;
        let key: TimelineKey = format!("{}/{}", timeline.tenant_text(), timeline.timeline_text())
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let (sk, start) = (addresses.clone(), timeline.lsn);
        on_executor(move || async move {
            compute_control::create_timeline(&sk, None, key, start, 16 << 20, system_id).await
        })
        .context("create the safekeepers' timeline")?;
        let script = root.path().join("ledger.sql");
        std::fs::write(&script, LEDGER_SCRIPT)?;
        quire_cluster::RunAs::detect()?.give(&script)?;
        Ok(Stack {
            install,
            safekeepers,
            addresses,
            server,
            timeline,
            key,
            script,
            root,
        })
    }

    /// What compute control does at a start; the running compute.
    fn start_compute(&self) -> Result<PgCluster> {
        let began = Instant::now();
        let port = free_port()?;
        let (sk, key) = (self.addresses.clone(), self.key);
        let compute = format!("127.0.0.1:{port}");
        let won = on_executor(move || async move {
            compute_control::elect(&sk, None, key, &compute, 16 << 20).await
        })
        .context("election")?;
        let elected = began.elapsed();
        self.wait_ingested(won.start)?;
        let caught_up = began.elapsed();
        let unpacked = self.root.path().join(format!("basebackup-{port}"));
        let (start, prev) = (won.start.to_string(), won.prev_record.to_string());
        let mut args = vec![
            "timeline",
            "basebackup",
            "--lsn",
            &start,
            "--out",
            unpacked.to_str().context("path")?,
        ];
        let (tenant, timeline) = (self.timeline.tenant_text(), self.timeline.timeline_text());
        args.extend(["--tenant", &tenant, "--timeline", &timeline]);
        if won.prev_record != Lsn::INVALID {
            args.extend(["--prev-lsn", &prev]);
        }
        args.extend(self.server.api());
        quire(&args)?;
        let fetched = began.elapsed();
        let options = PgClusterOptions::default()
            .port(port)
            .setting("shared_preload_libraries", "'quire_smgr'")
            .setting("quire.pageserver", &format!("'{}'", self.server.page))
            .setting("quire.tenant", &format!("'{tenant}'"))
            .setting("quire.timeline", &format!("'{timeline}'"))
            .setting("synchronous_standby_names", "'ANY 2 (sk1, sk2, sk3)'")
            .setting("max_wal_senders", "10")
            .setting("max_replication_slots", "10")
            .setting("shared_buffers", "'2MB'")
            .setting("restart_after_crash", "off");
        let mut pg = PgCluster::adopt(&self.install, options, |data| {
            std::fs::rename(&unpacked, data).context("move the basebackup")
        })?;
        pg.start()?;
        pg.psql("postgres", "SELECT 1")?;
        println!(
            "compute on {port} from {} (term {}): elected {elected:?}, caught up {caught_up:?}, basebackup {fetched:?}, answering {:?}",
            won.start,
            won.term,
            began.elapsed()
        );
        Ok(pg)
    }

    fn wait_ingested(&self, lsn: Lsn) -> Result<()> {
        let began = Instant::now();
        loop {
            let shown = timeline_show(&self.server, &self.timeline)?;
            if lsn_field(&shown, "last_record_lsn")? >= lsn {
                return Ok(());
            }
            ensure!(
                began.elapsed() < Duration::from_secs(60),
                "the pageserver did not reach {lsn}: {shown}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts pgbench's ledger script for `seconds` with 4 clients.
    fn ledger_spawn(&self, pg: &PgCluster, seconds: u32) -> Result<std::process::Child> {
        let script = self.script.to_str().context("path")?;
        pg.client("pgbench")
            .args([
                "-n",
                "-c",
                "4",
                "-T",
                &seconds.to_string(),
                "-f",
                script,
                "postgres",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start pgbench")
    }

    /// pgbench's ledger script for `seconds` with 4 clients; the
    /// transactions it reports as processed (acknowledged).
    fn ledger_run(&self, pg: &PgCluster, seconds: u32) -> Result<u64> {
        ledger_wait(self.ledger_spawn(pg, seconds)?, seconds)
    }
}

/// Waits (bounded) for a pgbench started by `ledger_spawn`; what it
/// reports as processed.
fn ledger_wait(child: std::process::Child, seconds: u32) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 120);
    let mut child = child;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("pgbench ran past its deadline");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .context("pgbench printed no transaction count")?
        .trim()
        .parse()?;
    let tps = text.lines().find(|l| l.starts_with("tps")).unwrap_or("");
    println!("pgbench: {processed} transactions, {tps}");
    Ok(processed)
}

fn number(pg: &PgCluster, sql: &str) -> Result<i64> {
    let text = pg.psql("postgres", sql)?;
    text.trim()
        .parse()
        .with_context(|| format!("{sql} gave {text:?}"))
}

/// Every acknowledged transaction is in the ledger (a killed compute may
/// have committed up to one in-flight transaction per client more), and
/// the books balance.
fn check_books(pg: &PgCluster, acknowledged: u64, in_doubt: u64) -> Result<u64> {
    let ledger = u64::try_from(number(pg, "SELECT count(*) FROM ledger")?)?;
    ensure!(
        ledger >= acknowledged && ledger <= acknowledged + in_doubt,
        "{ledger} ledger rows for {acknowledged} acknowledged transactions (+{in_doubt} in doubt)"
    );
    let history = u64::try_from(number(pg, "SELECT count(*) FROM pgbench_history")?)?;
    ensure!(
        history == ledger,
        "{history} history rows, {ledger} ledger rows"
    );
    let accounts = number(
        pg,
        "SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts",
    )?;
    let deltas = number(pg, "SELECT coalesce(sum(delta), 0) FROM pgbench_history")?;
    ensure!(
        accounts == deltas,
        "the accounts sum to {accounts}, the history to {deltas}: a change was lost or a stale page read"
    );
    println!("books: {ledger} ledger rows, balance {accounts}");
    Ok(ledger)
}

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
    let amcheck = pg.psql_script("postgres", AMCHECK)?;
    let mut lines = amcheck.lines().filter(|l| !l.trim().is_empty());
    let problems: u64 = lines.next().context("amcheck output")?.trim().parse()?;
    let indexes: u64 = lines.next().context("amcheck output")?.trim().parse()?;
    ensure!(problems == 0, "verify_heapam found {problems} problems");
    ensure!(indexes >= 20, "only {indexes} B-trees were checked");
    println!("amcheck: 0 heap problems, {indexes} B-trees clean");

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

/// file_copy is refused; an unlogged table works and stays on local disk.
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

/// The storage manager's counters show its reads.
fn check_counters(pg: &PgCluster) -> Result<()> {
    pg.psql("postgres", "CREATE EXTENSION IF NOT EXISTS quire_smgr")?;
    let reads = number(
        pg,
        "SELECT value FROM quire_smgr_stats() WHERE name = 'read_pages'",
    )?;
    ensure!(reads > 100, "only {reads} pages read from the pageserver");
    let latency = pg.psql(
        "postgres",
        "SELECT requests, p50_us, p99_us FROM quire_getpage_latency()",
    )?;
    println!("compute-side GetPage: {}", latency.trim());
    Ok(())
}
