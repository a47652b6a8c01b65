//! What the compute tests share: the stack a compute runs on (three
//! `quire safekeeper`s, a `quire pageserver` holding a timeline imported
//! from initdb that follows them, the safekeepers' timeline starting at the
//! import LSN) and a compute start as compute control does it (election,
//! the pageserver caught up, a basebackup at the elected start, Postgres
//! with `quire_smgr` preloaded), pgbench with a ledger, and the checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, free_port};
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::wire::TimelineKey;
use quire_tests::pg_install;
use quire_tests::safekeepers::{Safekeeper, on_executor, start_safekeepers};

use crate::pageserver_support::{
    Imported, Pageserver, import_with, lsn_field, quire, quire_binary, timeline_show,
};

pub const LEDGER_SCRIPT: &str = r"\set aid random(1, 100000 * :scale)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO ledger VALUES (:client_id, :aid);
END;
";

pub const AMCHECK: &str = r"
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) v
  WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence <> 't';
SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_class c
  JOIN pg_am a ON a.oid = c.relam
  WHERE a.amname = 'btree' AND c.relkind = 'i' AND c.relpersistence <> 't') s;
";

/// Runs [`AMCHECK`] on `pg`: no heap problem, and at least `min_indexes`
/// B-trees checked clean; how many were.
pub fn amcheck_clean(pg: &PgCluster, min_indexes: u64) -> Result<u64> {
    let amcheck = pg.psql_script("postgres", AMCHECK)?;
    let mut lines = amcheck.lines().filter(|l| !l.trim().is_empty());
    let problems: u64 = lines.next().context("amcheck output")?.trim().parse()?;
    let indexes: u64 = lines.next().context("amcheck output")?.trim().parse()?;
    ensure!(problems == 0, "verify_heapam found {problems} problems");
    ensure!(
        indexes >= min_indexes,
        "only {indexes} B-trees were checked"
    );
    println!("amcheck: 0 heap problems, {indexes} B-trees clean");
    Ok(indexes)
}

/// Everything but the compute.
pub struct Stack {
    pub install: PgInstall,
    pub safekeepers: Vec<Safekeeper>,
    pub addresses: Vec<String>,
    pub server: Pageserver,
    pub timeline: Imported,
    pub key: TimelineKey,
    pub script: PathBuf,
    pub root: tempfile::TempDir,
}

impl Stack {
    pub fn start() -> Result<Stack> {
        Stack::start_with(&["--cores", "1"], &[])
    }

    /// [`Stack::start`] with the pageserver started with `server_args`
    /// and `server_env`.
    pub fn start_with(server_args: &[&str], server_env: &[(&str, String)]) -> Result<Stack> {
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
        let server = Pageserver::start_with_env(&root.path().join("ps"), server_args, server_env)?;
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
    /// Its local page cache is small too (4 MB), so it both evicts and
    /// leaves most reads to the pageserver.
    pub fn start_compute(&self) -> Result<PgCluster> {
        self.start_compute_with("2MB", "4MB")
    }

    /// A compute start with `shared_buffers` and `quire.local_cache_size`.
    pub fn start_compute_with(&self, shared_buffers: &str, local_cache: &str) -> Result<PgCluster> {
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
            .setting("shared_buffers", &format!("'{shared_buffers}'"))
            .setting("quire.local_cache_size", &format!("'{local_cache}'"))
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

    pub fn wait_ingested(&self, lsn: Lsn) -> Result<()> {
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
    pub fn ledger_spawn(&self, pg: &PgCluster, seconds: u32) -> Result<std::process::Child> {
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
    pub fn ledger_run(&self, pg: &PgCluster, seconds: u32) -> Result<u64> {
        ledger_wait(self.ledger_spawn(pg, seconds)?, seconds)
    }
}

/// `pgbench -i -s 3` (bounded) and the ledger table the script fills.
pub fn pgbench_init_with_ledger(pg: &PgCluster) -> Result<()> {
    quire_cluster::run_checked(
        pg.client("pgbench")
            .args(["-i", "-s", "3", "-q", "postgres"]),
        Duration::from_secs(300),
    )
    .context("pgbench -i")?;
    pg.psql("postgres", "CREATE TABLE ledger (client int, aid int)")?;
    Ok(())
}

/// Waits (bounded) for a pgbench started by `ledger_spawn`; what it
/// reports as processed.
pub fn ledger_wait(child: std::process::Child, seconds: u32) -> Result<u64> {
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

pub fn number(pg: &PgCluster, sql: &str) -> Result<i64> {
    let text = pg.psql("postgres", sql)?;
    text.trim()
        .parse()
        .with_context(|| format!("{sql} gave {text:?}"))
}

/// Every acknowledged transaction is in the ledger (a killed compute may
/// have committed up to one in-flight transaction per client more), and
/// the books balance.
pub fn check_books(pg: &PgCluster, acknowledged: u64, in_doubt: u64) -> Result<u64> {
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
