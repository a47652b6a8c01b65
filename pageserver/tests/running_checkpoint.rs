//! The running checkpoint on a real Postgres 17 cluster's WAL: after every
//! record, the `CheckPoint` stored under the checkpoint key is one
//! Postgres could start from there, checked against `pg_waldump`'s reading
//! of the same WAL:
//! - `nextXid` is past every xid the records so far carry (`tx:`, and the
//!   subtransactions commit records list), within a step of the highest;
//! - `nextOid` is the last `NEXTOID` (or the import's, before the first);
//! - `nextMulti` and `nextMultiOffset` are past every multixact created.
//!
//! The workload: a few thousand transactions while another session
//! checkpoints over and over (online checkpoints older than the xids
//! logged before them), a hundred and fifty
//! subtransactions (SAVEPOINTs and PL/pgSQL exception blocks), a multixact
//! from two sessions' `SELECT ... FOR SHARE` of one row, more than 8192
//! OIDs (large objects and tables: `NEXTOID` twice). Midway the ingest is flushed, its timeline reloaded and the
//! ingest resumed: the running checkpoint comes back as it was. After the
//! clean stop the stored value is the shutdown checkpoint `pg_controldata`
//! prints.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use quire_cluster::wal_segment_files;
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, run_bounded, run_checked};
use quire_pageserver::import::{import_datadir, read_control};
use quire_pageserver::ingest::WalIngest;
use quire_pageserver::ingest::checkpoint::XID_STEP;
use quire_pageserver::shard_filter::ShardFilter;
use quire_postgres::control::CheckPoint;
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::stream::{RawRecord, WalStreamDecoder};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, Timeline};
use zerocopy::FromBytes;

const TENANT: [u8; 16] = [3; 16];
const TIMELINE: [u8; 16] = [4; 16];
const CACHE_BYTES: usize = 64 << 20;

/// The table the workload changes.
const TABLE: &str = r"
CREATE TABLE t (id int PRIMARY KEY, v int);
INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g;
";

/// Transactions while another session checkpoints.
const UPDATES: &str = r"
DO $$ BEGIN FOR i IN 1..4000 LOOP UPDATE t SET v = v + 1 WHERE id = i % 100 + 1; COMMIT; END LOOP; END $$;
";

/// Before the two sessions: subtransactions, OIDs.
const BEFORE: &str = r"
BEGIN;
INSERT INTO t VALUES (1001, 1);
SAVEPOINT a;
INSERT INTO t VALUES (1002, 2);
SAVEPOINT b;
INSERT INTO t VALUES (1003, 3);
RELEASE b;
ROLLBACK TO a;
INSERT INTO t VALUES (1004, 4);
COMMIT;
DO $$ BEGIN FOR i IN 1..150 LOOP BEGIN INSERT INTO t VALUES (2000 + i, i); IF i % 3 = 0 THEN RAISE EXCEPTION 'undo'; END IF; EXCEPTION WHEN raise_exception THEN NULL; END; END LOOP; END $$;
SELECT count(lo_create(0)) FROM generate_series(1, 9000);
CHECKPOINT;
CREATE TABLE flag (f int);
";

/// After the multixact: more OIDs and transactions.
const AFTER: &str = r"
DO $$ BEGIN FOR i IN 1..40 LOOP EXECUTE format('CREATE TABLE many_%s (a int, b text)', i); COMMIT; END LOOP; END $$;
DO $$ BEGIN FOR i IN 1..600 LOOP INSERT INTO t VALUES (5000 + i, i); COMMIT; END LOOP; END $$;
";

/// [`UPDATES`] while a second session checkpoints over and over: online
/// checkpoints whose counters, read at their start, are older than xids
/// the WAL carries before their record.
fn updates_across_checkpoints(pg: &PgCluster) -> Result<()> {
    let mut checkpoints = pg.client("psql");
    checkpoints.args(["--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1"]);
    for _ in 0..15 {
        checkpoints.args(["-c", "CHECKPOINT", "-c", "SELECT pg_sleep(0.02)"]);
    }
    let mut child = checkpoints
        .stdout(Stdio::null())
        .spawn()
        .context("start the checkpointing session")?;
    let updated = pg.psql_script("postgres", UPDATES);
    let status = wait(&mut child, Duration::from_secs(120))?;
    updated?;
    ensure!(
        status.success(),
        "the checkpointing session failed: {status}"
    );
    Ok(())
}

/// `child`'s exit, or an error (and the child killed) after `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if began.elapsed() > timeout {
            child.kill()?;
            bail!("a session did not finish in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn install() -> Result<PgInstall> {
    PgInstall::locate().context("locate the patched Postgres build")
}

/// Two sessions share-lock row 1 of `t` at once: the second lock makes a
/// multixact of both lockers. The first waits in a loop until `flag` has a
/// row, so the second runs while it holds its lock.
fn multixact_from_two_sessions(pg: &PgCluster) -> Result<()> {
    let mut first = pg
        .client("psql")
        .args(["--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1"])
        .args([
            "-c",
            "BEGIN",
            "-c",
            "SELECT id FROM t WHERE id = 1 FOR SHARE",
        ])
        .args([
            "-c",
            "DO $$ BEGIN FOR i IN 1..1200 LOOP EXIT WHEN EXISTS (SELECT 1 FROM flag); \
             PERFORM pg_sleep(0.05); END LOOP; END $$",
            "-c",
            "COMMIT",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("start the first session")?;
    let waited = (|| {
        let began = Instant::now();
        loop {
            let holding = pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DO $$ BEGIN FOR i IN 1..1200%' \
                 AND state = 'active'",
            )?;
            if holding.trim() == "1" {
                return Ok(());
            }
            if began.elapsed() > Duration::from_secs(30) {
                bail!("the first session never held its lock");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let second = waited.and_then(|()| {
        pg.psql_script(
            "postgres",
            "BEGIN; SELECT id FROM t WHERE id = 1 FOR SHARE; COMMIT;",
        )
    });
    let flagged = pg.psql("postgres", "INSERT INTO flag VALUES (1)");
    let status = wait(&mut first, Duration::from_secs(90))?;
    second?;
    flagged?;
    ensure!(status.success(), "the first session failed: {status}");
    Ok(())
}

/// What `pg_waldump` says a record carries.
#[derive(Debug, Default)]
struct Dumped {
    start: Lsn,
    /// `tx:`, the subtransactions of a commit or abort, multixact members.
    xids: Vec<u32>,
    /// `NEXTOID`, or a shutdown checkpoint's `oid`.
    next_oid: Option<u32>,
    /// `CREATE_ID`: (mid, offset, member count).
    multixact: Option<(u32, u32, u32)>,
}

fn number_after<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let at = line.find(label)? + label.len();
    line.get(at..)?
        .split([',', ' ', ';', ':'])
        .find(|w| !w.is_empty())
}

fn parse_dump_line(line: &str) -> Result<Dumped> {
    let bad = || anyhow!("pg_waldump line {line:?}");
    let start: Lsn = number_after(line, "lsn: ").ok_or_else(bad)?.parse()?;
    let tx: u32 = number_after(line, "tx: ").ok_or_else(bad)?.parse()?;
    let mut dumped = Dumped {
        start,
        xids: vec![tx],
        ..Dumped::default()
    };
    let desc = line.split_once("desc: ").ok_or_else(bad)?.1;
    if let Some((_, subxacts)) = desc.split_once("; subxacts:") {
        let list = subxacts.split(';').next().unwrap_or("");
        for xid in list.split_whitespace() {
            dumped.xids.push(xid.parse().with_context(bad)?);
        }
    }
    if desc.starts_with("CHECKPOINT_SHUTDOWN ") {
        let oid = number_after(desc, "; oid ").ok_or_else(bad)?;
        dumped.next_oid = Some(oid.parse().with_context(bad)?);
    }
    if let Some(oid) = desc.strip_prefix("NEXTOID ") {
        dumped.next_oid = Some(oid.trim().parse().with_context(bad)?);
    }
    if let Some(create) = desc.strip_prefix("CREATE_ID ") {
        let (head, members) = create.split_once(": ").ok_or_else(bad)?;
        let fields: Vec<u32> = head
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [mid, offset, count] = fields[..] else {
            bail!("CREATE_ID fields in {line:?}");
        };
        dumped.multixact = Some((mid, offset, count));
        for member in members.split_whitespace().filter(|w| !w.starts_with('(')) {
            dumped.xids.push(member.parse().with_context(bad)?);
        }
    }
    Ok(dumped)
}

/// `pg_waldump` of `pgdata`'s WAL from `from` to its end.
fn waldump(install: &PgInstall, pgdata: &Path, from: Lsn) -> Result<Vec<Dumped>> {
    // It exits 1 where the WAL ends; what it printed counts.
    let output = run_bounded(
        Command::new(install.bin("pg_waldump"))
            .arg("--path")
            .arg(pgdata.join("pg_wal"))
            .arg("--start")
            .arg(from.to_string()),
        Duration::from_secs(120),
    )?;
    String::from_utf8(output.stdout)?
        .lines()
        .filter(|l| l.starts_with("rmgr: "))
        .map(parse_dump_line)
        .collect()
}

/// `pg_controldata`'s next xid (epoch, xid), OID, multixact and offset.
fn controldata(install: &PgInstall, pgdata: &Path) -> Result<(u64, u32, u32, u32)> {
    let output = run_checked(
        Command::new(install.bin("pg_controldata")).arg(pgdata),
        Duration::from_secs(30),
    )?;
    let text = String::from_utf8(output.stdout)?;
    let field = |name: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("{name} in pg_controldata output"))
    };
    let (epoch, xid) = field("Latest checkpoint's NextXID:")?
        .split_once(':')
        .context("NextXID epoch:xid")?;
    let next_xid = (epoch.parse::<u64>()? << 32) | xid.parse::<u64>()?;
    Ok((
        next_xid,
        field("Latest checkpoint's NextOID:")?.parse()?,
        field("Latest checkpoint's NextMultiXactId:")?.parse()?,
        field("Latest checkpoint's NextMultiOffset:")?.parse()?,
    ))
}

/// The records of `pgdata`'s `pg_wal` from the start of the segment
/// holding `from` to the end of the WAL.
fn wal_records(pgdata: &Path, from: Lsn) -> Result<Vec<RawRecord>> {
    let mut decoder: Option<WalStreamDecoder> = None;
    let mut records = Vec::new();
    for path in wal_segment_files(&pgdata.join("pg_wal"))? {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let header = read_segment_header(&bytes).with_context(|| format!("{}", path.display()))?;
        if Lsn(header.start.0 + u64::from(header.segment_size)) <= from {
            continue;
        }
        let decoder =
            decoder.get_or_insert_with(|| WalStreamDecoder::new(header.start, header.segment_size));
        ensure!(
            decoder.position() == header.start,
            "WAL missing before {}",
            path.display()
        );
        decoder.feed_owned(bytes);
        // A record torn at the WAL's end is an error here: stop at it.
        while let Ok(Some(record)) = decoder.next_record() {
            records.push(record.to_raw());
        }
    }
    Ok(records)
}

/// What the WAL up to a record implies, from `pg_waldump`.
struct Implied {
    /// Highest xid carried so far (none past the import's in epoch 0).
    max_xid: Option<u32>,
    next_oid: u32,
    next_multi: Option<(u32, u32)>,
}

impl Implied {
    fn add(&mut self, dumped: &Dumped) {
        for &xid in dumped.xids.iter().filter(|&&x| x >= 3) {
            self.max_xid = Some(self.max_xid.map_or(xid, |m| m.max(xid)));
        }
        if let Some(oid) = dumped.next_oid {
            self.next_oid = oid;
        }
        if let Some((mid, offset, count)) = dumped.multixact {
            let (multi, off) = self.next_multi.unwrap_or((0, 0));
            self.next_multi = Some((multi.max(mid + 1), off.max(offset + count)));
        }
    }

    /// The stored value `cp` at the end of a record is safe by this.
    fn check(&self, cp: &CheckPoint, import: &CheckPoint, at: Lsn) -> Result<()> {
        let next = cp.next_xid.get();
        ensure!(next >> 32 == 0, "epoch {} at {at}", next >> 32);
        if let Some(max) = self.max_xid {
            ensure!(
                next > u64::from(max),
                "nextXid {next} at {at}, xid {max} seen"
            );
            let floor = import.next_xid.get().max(u64::from(max) + 1);
            ensure!(
                next <= floor + XID_STEP,
                "nextXid {next} at {at}: more than a step past {floor}"
            );
        }
        ensure!(
            cp.next_oid.get() == self.next_oid,
            "nextOid {} at {at}, the WAL says {}",
            cp.next_oid.get(),
            self.next_oid
        );
        if let Some((multi, offset)) = self.next_multi {
            ensure!(
                cp.next_multi.get() >= multi && cp.next_multi_offset.get() >= offset,
                "nextMulti {} offset {} at {at}, the WAL says {multi} offset {offset}",
                cp.next_multi.get(),
                cp.next_multi_offset.get()
            );
        }
        Ok(())
    }
}

async fn stored(timeline: &Timeline, lsn: Lsn) -> Result<CheckPoint> {
    let (_, bytes) = timeline
        .get(Key::checkpoint(), lsn)
        .await?
        .image
        .with_context(|| format!("no checkpoint stored at {lsn}"))?;
    CheckPoint::read_from_bytes(&bytes).map_err(|_| anyhow!("checkpoint of {} bytes", bytes.len()))
}

/// The records from `start` to the end of `pgdata`'s WAL, and what
/// `pg_waldump` says of each; the workload made what the test needs.
fn read_wal(
    install: &PgInstall,
    pgdata: &Path,
    start: Lsn,
) -> Result<(Vec<RawRecord>, Vec<Dumped>)> {
    let dumped = waldump(install, pgdata, start)?;
    let records: Vec<RawRecord> = wal_records(pgdata, start)?
        .into_iter()
        .filter(|r| r.start >= start)
        .collect();
    ensure!(
        dumped.len() == records.len()
            && dumped.iter().zip(&records).all(|(d, r)| d.start == r.start),
        "pg_waldump read {} records, the decoder {}",
        dumped.len(),
        records.len()
    );
    ensure!(
        dumped.iter().filter(|d| d.next_oid.is_some()).count() >= 2,
        "fewer than two NEXTOID"
    );
    ensure!(
        dumped.iter().any(|d| d.multixact.is_some()),
        "no multixact created"
    );
    ensure!(
        dumped.iter().any(|d| d.xids.len() > 100),
        "no commit with many subtransactions"
    );
    Ok((records, dumped))
}

#[test]
fn the_stored_checkpoint_is_safe_to_start_from_after_every_record() -> Result<()> {
    let install = install()?;
    let options = PgClusterOptions::default().setting("wal_keep_size", "'1GB'");
    let mut pg = PgCluster::create(&install, options)?;
    let base = pg.datadir().with_file_name("base-copy");
    run_checked(
        Command::new("cp").arg("-a").arg(pg.datadir()).arg(&base),
        Duration::from_secs(60),
    )?;
    pg.start()?;
    pg.psql_script("postgres", TABLE)?;
    updates_across_checkpoints(&pg)?;
    pg.psql_script("postgres", BEFORE)?;
    multixact_from_two_sessions(&pg)?;
    pg.psql_script("postgres", AFTER)?;
    pg.stop()?;
    let unexpected = pg.unexpected_log_errors(&[])?;
    ensure!(unexpected.is_empty(), "server log: {unexpected:?}");

    let start = read_control(&base)?.checkpoint_lsn();
    let (records, dumped) = read_wal(&install, &pg.datadir(), start)?;
    let control = controldata(&install, &pg.datadir())?;
    let shutdown = read_control(&pg.datadir())?.checkpoint_copy;

    let work = tempfile::tempdir()?;
    let dir = work.path().join("timeline");
    let result = quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        let timeline =
            Timeline::create(&dir, TENANT, TIMELINE, start, CoreContext::new(CACHE_BYTES)).await?;
        let imported = import_datadir(&timeline, &base, ShardFilter::unsharded()).await?;
        let import = imported.checkpoint;
        ensure!(
            stored(&timeline, start).await? == import,
            "the import's checkpoint"
        );
        let mut ingest = WalIngest::new(
            Rc::new(timeline),
            imported.sizes,
            imported.slru_pages,
            Some(import),
            None,
        );
        let mut implied = Implied {
            max_xid: None,
            next_oid: import.next_oid.get(),
            next_multi: None,
        };
        let half = records.len() / 2;
        for (i, (record, dump)) in records.iter().zip(&dumped).enumerate() {
            let end = ingest
                .ingest_record(record.start, record.end, &record.bytes)
                .await?;
            implied.add(dump);
            let cp = stored(ingest.timeline(), end).await?;
            ensure!(
                Some(&cp) == ingest.checkpoint(),
                "stored and running differ at {end}"
            );
            implied.check(&cp, &import, end)?;
            if i == half {
                ingest = resumed(ingest, &dir).await?;
            }
        }
        let last = stored(ingest.timeline(), ingest.timeline().last_record_lsn()).await?;
        ensure!(
            last == shutdown,
            "after the stop: {last:?}, pg_control has {shutdown:?}"
        );
        let ours = (
            last.next_xid.get(),
            last.next_oid.get(),
            last.next_multi.get(),
            last.next_multi_offset.get(),
        );
        ensure!(ours == control, "ours {ours:?}, pg_controldata {control:?}");
        println!(
            "{} records; at the end nextXid, nextOid, nextMulti, offset {ours:?}",
            records.len()
        );
        Ok(())
    });
    let _ = std::fs::remove_dir_all(pg.datadir().with_file_name("base-copy"));
    result.map_err(|e| anyhow!("{e}"))?
}

/// `ingest` flushed, its timeline reloaded from disk and resumed: the
/// running checkpoint is the one it had.
async fn resumed(mut ingest: WalIngest, dir: &Path) -> Result<WalIngest> {
    ingest.flush().await?;
    let before = *ingest.checkpoint().context("no running checkpoint")?;
    drop(ingest);
    let timeline =
        Timeline::load(dir, TENANT, TIMELINE, CoreContext::new(CACHE_BYTES), None).await?;
    let ingest = WalIngest::resume(Rc::new(timeline), None).await?;
    ensure!(
        ingest.checkpoint() == Some(&before),
        "resumed {:?}, had {before:?}",
        ingest.checkpoint()
    );
    Ok(ingest)
}
