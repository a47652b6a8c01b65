//! A two-shard tenant (stripe 8) on a real Postgres 17 cluster: each shard
//! imports the whole data directory and ingests the whole WAL stream, and
//! stores only the relation blocks it owns.
//!
//! - Import: each shard's relation block keys are its own, the two hold
//!   every block of an unsharded import between them, and both hold every
//!   other key (sizes, relmapper files, SLRU pages, the control file).
//! - WAL: a table of several hundred blocks with an index, updates across a
//!   checkpoint (full-page images, then records to replay), deletes and a
//!   VACUUM. The same holds for the keys, and every block read from its
//!   owner, rebuilt through the redo process, is the page an unsharded
//!   ingest of the same WAL rebuilds.
//! - Shard 1 flushed, reloaded from disk and resumed comes back with the
//!   relation sizes and SLRU pages it had, and ingests more WAL; both
//!   shards then refuse `CREATE DATABASE ... STRATEGY file_copy` with an
//!   error naming it, having stored nothing of it.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use quire_cluster::{
    PgCluster, PgClusterOptions, PgInstall, RunAs, run_checked, wal_segment_files,
};
use quire_net::id::ShardIdentity;
use quire_pageserver::import::{Imported, import_datadir, read_control};
use quire_pageserver::ingest::WalIngest;
use quire_pageserver::shard_filter::{ShardFilter, ShardedFileCopy};
use quire_postgres::types::{DEFAULT_TABLESPACE_OID, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::stream::{RawRecord, WalStreamDecoder};
use quire_postgres::{Key, Lsn};
use quire_redo::{RedoConfig, RedoPool};
use quire_shard::{CoreContext, Timeline};

const STRIPE: u32 = 8;
const TENANT: [u8; 16] = [7; 16];
const REDO_TENANT: u128 = 7;
const CACHE_BYTES: usize = 64 << 20;

/// Before the first stop: several hundred heap blocks (fillfactor 50) and
/// an index, then changes after a checkpoint.
const PHASE_1: &str = r"
CREATE TABLE t (id int PRIMARY KEY, v int, pad text) WITH (fillfactor = 50, autovacuum_enabled = off);
INSERT INTO t SELECT g, 0, repeat('x', 200) FROM generate_series(1, 8000) g;
CHECKPOINT;
UPDATE t SET v = v + 1 WHERE id % 7 = 0;
UPDATE t SET v = v + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 11 = 0;
VACUUM t;
";

/// After a restart: more changes, then a database copied file by file.
const PHASE_2: &str = r"
UPDATE t SET v = v + 10 WHERE id % 5 = 0;
CREATE DATABASE copied STRATEGY file_copy;
";

fn install() -> Result<PgInstall> {
    PgInstall::locate().context("locate the patched Postgres build")
}

fn shard(number: u32) -> Result<ShardFilter> {
    Ok(ShardFilter::new(ShardIdentity::new(number, 2, STRIPE)?))
}

fn on_executor<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + 'static,
{
    quire_io::run_local(&quire_io::LocalConfig::default(), test).map_err(|e| anyhow!("{e}"))?
}

/// `cp -a` of a stopped cluster's data directory.
fn copy_datadir(pg: &PgCluster, name: &str) -> Result<PathBuf> {
    let copy = pg.datadir().with_file_name(name);
    run_checked(
        Command::new("cp").arg("-a").arg(pg.datadir()).arg(&copy),
        Duration::from_secs(60),
    )
    .context("copy the data directory")?;
    Ok(copy)
}

/// An empty timeline `id` under `root`, starting at `pgdata`'s checkpoint.
async fn create(
    root: &Path,
    id: u8,
    pgdata: &Path,
    core: &Rc<CoreContext>,
) -> Result<Rc<Timeline>> {
    let lsn = read_control(pgdata)?.checkpoint_lsn();
    let timeline = Timeline::create(
        &timeline_dir(root, id),
        TENANT,
        [id; 16],
        lsn,
        Rc::clone(core),
    )
    .await?;
    Ok(Rc::new(timeline))
}

fn timeline_dir(root: &Path, id: u8) -> PathBuf {
    root.join(format!("timeline-{id}"))
}

/// The keys `timeline` holds at `lsn`: relation blocks and the rest.
async fn keys(timeline: &Timeline, lsn: Lsn) -> Result<(BTreeSet<Key>, BTreeSet<Key>)> {
    let all = timeline.keys_at(lsn, Key::MIN..Key::MAX).await?;
    Ok(all.into_iter().partition(Key::is_rel_block))
}

/// At `lsn`, each shard's blocks are its own, together they are
/// `unsharded`'s, and each holds all of `unsharded`'s other keys.
async fn check_keys(unsharded: &Timeline, shards: [&Timeline; 2], lsn: Lsn) -> Result<()> {
    let (all_blocks, all_other) = keys(unsharded, lsn).await?;
    let mut union = BTreeSet::new();
    for (number, timeline) in (0..).zip(shards) {
        let (blocks, other) = keys(timeline, lsn).await?;
        let identity = shard(number)?.identity();
        let foreign = blocks.iter().filter(|k| !identity.owns(k)).count();
        ensure!(
            foreign == 0,
            "shard {number} holds {foreign} blocks of the other shard"
        );
        ensure!(
            !blocks.is_empty() && blocks.len() < all_blocks.len(),
            "shard {number} holds {} of {} blocks",
            blocks.len(),
            all_blocks.len()
        );
        ensure!(
            other == all_other,
            "shard {number}'s other keys differ: {} of {}",
            other.len(),
            all_other.len()
        );
        union.extend(blocks);
    }
    ensure!(
        union == all_blocks,
        "the shards hold {} blocks between them, the unsharded timeline {}",
        union.len(),
        all_blocks.len()
    );
    Ok(())
}

#[test]
fn a_sharded_import_stores_only_the_blocks_of_its_shard() -> Result<()> {
    let pg = PgCluster::create(&install()?, PgClusterOptions::default())?;
    let pgdata = pg.datadir();
    let work = tempfile::tempdir()?;
    let root = work.path().to_owned();
    on_executor(move || async move {
        let core = CoreContext::new(CACHE_BYTES);
        let unsharded = create(&root, 0, &pgdata, &core).await?;
        let all = import_datadir(&unsharded, &pgdata, ShardFilter::unsharded()).await?;
        ensure!(all.pages_not_owned == 0, "unsharded: {all:?}");
        let mut shards = Vec::new();
        let mut stored = 0;
        for number in 0..2u8 {
            let timeline = create(&root, number + 1, &pgdata, &core).await?;
            let filter = shard(u32::from(number))?;
            let imported: Imported = import_datadir(&timeline, &pgdata, filter).await?;
            ensure!(imported.sizes == all.sizes && imported.slru_pages == all.slru_pages);
            ensure!(
                imported.pages + imported.pages_not_owned == all.pages,
                "shard {number}: {} stored and {} not owned of {}",
                imported.pages,
                imported.pages_not_owned,
                all.pages
            );
            stored += imported.pages;
            shards.push(timeline);
        }
        let slru_pages = all.slru_pages.len() as u64;
        ensure!(
            stored == all.pages + slru_pages,
            "each relation page once and the SLRU pages twice: {stored} of {}",
            all.pages
        );
        let lsn = all.lsn;
        check_keys(&unsharded, [&shards[0], &shards[1]], lsn).await?;
        // What a shard holds is the page: the same image.
        let (blocks, _) = keys(&unsharded, lsn).await?;
        for key in blocks {
            let owner = &shards[key.shard(2, STRIPE) as usize];
            let ours = owner.get(key, lsn).await?.image.map(|(_, page)| page);
            let theirs = unsharded.get(key, lsn).await?.image.map(|(_, page)| page);
            ensure!(ours.is_some() && ours == theirs, "block {key}");
        }
        Ok(())
    })
}

/// The records of `pgdata`'s `pg_wal` from the start of the segment
/// holding `from` through the record that starts at `through`.
fn wal_records(pgdata: &Path, from: Lsn, through: Lsn) -> Result<Vec<RawRecord>> {
    let mut decoder: Option<WalStreamDecoder> = None;
    let mut records = Vec::new();
    for path in wal_segment_files(&pgdata.join("pg_wal"))? {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let header = read_segment_header(&bytes).with_context(|| format!("{}", path.display()))?;
        let end = Lsn(header.start.0 + u64::from(header.segment_size));
        if end <= from {
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
        while let Some(record) = decoder.next_record()? {
            records.push(record.to_raw());
            if record.start >= through {
                return Ok(records);
            }
        }
    }
    bail!("the WAL ends before the record at {through}")
}

async fn ingest_all(ingest: &mut WalIngest, records: &[RawRecord]) -> Result<()> {
    for record in records {
        ingest
            .ingest_record(record.start, record.end, &record.bytes)
            .await
            .with_context(|| format!("ingest the record at {}", record.start))?;
    }
    Ok(())
}

async fn redo_pool(dir: &Path) -> Result<Rc<RedoPool>> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let config = RedoConfig {
        postgres: install()?.bin("postgres"),
        run_as: RunAs::detect()?.ids(),
        scratch_root: dir.join("redo"),
        timeout: Duration::from_secs(60),
    };
    RedoPool::new(config, 1, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// Every block of `unsharded` at `lsn`, rebuilt from the shard owning it,
/// is the page rebuilt from `unsharded`; the number of blocks rebuilt
/// through redo (not a stored image).
async fn check_pages(
    pool: &Rc<RedoPool>,
    unsharded: &Timeline,
    shards: [&Timeline; 2],
    lsn: Lsn,
) -> Result<u64> {
    let redo = pool.for_tenant(REDO_TENANT);
    let (blocks, _) = keys(unsharded, lsn).await?;
    let mut replayed = 0;
    for key in blocks {
        let owner = shards[key.shard(2, STRIPE) as usize];
        let theirs = unsharded.get(key, lsn).await?;
        let ours = owner.get(key, lsn).await?;
        if !theirs.records.is_empty() {
            replayed += 1;
        }
        let theirs = quire_shard::materialize(&redo, key, lsn, &theirs).await?;
        let ours = quire_shard::materialize(&redo, key, lsn, &ours).await?;
        ensure!(ours == theirs, "block {key} at {lsn} differs on its shard");
    }
    Ok(replayed)
}

#[test]
fn each_shard_ingests_the_whole_wal_and_stores_only_its_blocks() -> Result<()> {
    let options = PgClusterOptions::default().setting("wal_keep_size", "'1GB'");
    let mut pg = PgCluster::create(&install()?, options)?;
    let base = copy_datadir(&pg, "base-copy")?;
    pg.start()?;
    pg.psql_script("postgres", PHASE_1)?;
    let t = table_t(&pg)?;
    pg.stop()?;
    let first_stop = read_control(&pg.datadir())?.checkpoint_lsn();
    pg.start()?;
    pg.psql_script("postgres", PHASE_2)?;
    pg.stop()?;
    let unexpected = pg.unexpected_log_errors(&[])?;
    ensure!(unexpected.is_empty(), "server log: {unexpected:?}");
    let second_stop = read_control(&pg.datadir())?.checkpoint_lsn();
    let start = read_control(&base)?.checkpoint_lsn();
    let phase_1 = wal_records(&pg.datadir(), start, first_stop)?;
    let phase_2 = wal_records(&pg.datadir(), first_stop, second_stop)?;
    let work = tempfile::tempdir()?;
    let root = work.path().to_owned();
    let result = on_executor(move || async move {
        let pool = redo_pool(&root).await?;
        let checked = async {
            let [unsharded, shard_0, shard_1] = phase_one(&root, &base, &pool, t, &phase_1).await?;
            let shard_1 = resume(&root, &pool, shard_1).await?;
            phase_two(&pool, [unsharded, shard_0, shard_1], &phase_2).await
        }
        .await;
        pool.shutdown().await;
        checked
    });
    let _ = std::fs::remove_dir_all(pg.datadir().with_file_name("base-copy"));
    result
}

/// Table `t`'s main fork and its size in blocks.
fn table_t(pg: &PgCluster) -> Result<(RelTag, u32)> {
    let row = pg.psql(
        "postgres",
        "SELECT reltablespace, (SELECT oid FROM pg_database WHERE datname = current_database()), \
         pg_relation_filenode('t'), pg_relation_size('t') / 8192 FROM pg_class WHERE relname = 't'",
    )?;
    let fields: Vec<u32> = row
        .trim()
        .split('|')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("table t: {row:?}"))?;
    let [spc, db, rel_number, blocks] = fields[..] else {
        bail!("table t: {row:?}");
    };
    let locator = RelFileLocator {
        spc_oid: if spc == 0 {
            DEFAULT_TABLESPACE_OID
        } else {
            spc
        },
        db_oid: db,
        rel_number,
    };
    Ok((RelTag::new(locator, ForkNumber::Main), blocks))
}

/// Imports `base` unsharded and as each shard, ingests `records` into
/// each and checks keys and pages; the ingests (unsharded, shard 0, 1).
async fn phase_one(
    root: &Path,
    base: &Path,
    pool: &Rc<RedoPool>,
    (t, t_blocks): (RelTag, u32),
    records: &[RawRecord],
) -> Result<[WalIngest; 3]> {
    let core = CoreContext::new(CACHE_BYTES);
    let mut ingests = Vec::new();
    for (id, filter) in [
        (0, ShardFilter::unsharded()),
        (1, shard(0)?),
        (2, shard(1)?),
    ] {
        let timeline = create(root, id, base, &core).await?;
        let imported = import_datadir(&timeline, base, filter).await?;
        let redo = Some((Rc::clone(pool), REDO_TENANT));
        let mut ingest = WalIngest::new(
            timeline,
            imported.sizes,
            imported.slru_pages,
            Some(imported.checkpoint),
            redo,
        )
        .with_shard(filter);
        ingest_all(&mut ingest, records).await?;
        ingests.push(ingest);
    }
    let [unsharded, shard_0, shard_1] =
        <[WalIngest; 3]>::try_from(ingests).map_err(|_| anyhow!("three ingests"))?;
    let lsn = unsharded.timeline().last_record_lsn();
    for (number, ingest) in [(0, &shard_0), (1, &shard_1)] {
        ensure!(
            ingest.timeline().last_record_lsn() == lsn,
            "shard {number} at another LSN"
        );
        ensure!(
            ingest.relation_sizes() == unsharded.relation_sizes(),
            "shard {number}'s sizes"
        );
        ensure!(
            ingest.slru_pages() == unsharded.slru_pages(),
            "shard {number}'s SLRU pages"
        );
        ensure!(
            ingest.stats().not_owned_values > 0,
            "shard {number} dropped nothing"
        );
    }
    ensure!(t_blocks >= 300, "t has only {t_blocks} blocks");
    ensure!(
        unsharded.relation_sizes().get(&t) == Some(&t_blocks),
        "t: {t_blocks} blocks in Postgres, {:?} ingested",
        unsharded.relation_sizes().get(&t)
    );
    let replayed = check_all(pool, [&unsharded, &shard_0, &shard_1], lsn).await?;
    ensure!(replayed >= 100, "only {replayed} blocks needed redo");
    println!(
        "phase 1: {} records at {lsn}, {replayed} blocks replayed, t {t_blocks} blocks",
        records.len()
    );
    Ok([unsharded, shard_0, shard_1])
}

/// [`check_keys`] and [`check_pages`] of (unsharded, shard 0, shard 1).
async fn check_all(pool: &Rc<RedoPool>, ingests: [&WalIngest; 3], lsn: Lsn) -> Result<u64> {
    let [unsharded, shard_0, shard_1] = ingests.map(WalIngest::timeline);
    check_keys(unsharded, [shard_0, shard_1], lsn).await?;
    check_pages(pool, unsharded, [shard_0, shard_1], lsn).await
}

/// Shard 1 flushed, reloaded from disk and resumed: the state it had.
async fn resume(root: &Path, pool: &Rc<RedoPool>, mut shard_1: WalIngest) -> Result<WalIngest> {
    shard_1.flush().await?;
    let sizes = shard_1.relation_sizes().clone();
    let slru_pages = shard_1.slru_pages().clone();
    drop(shard_1);
    let reloaded = Timeline::load(
        &timeline_dir(root, 2),
        TENANT,
        [2; 16],
        CoreContext::new(CACHE_BYTES),
        None,
    )
    .await?;
    let redo = Some((Rc::clone(pool), REDO_TENANT));
    let shard_1 = WalIngest::resume(Rc::new(reloaded), redo)
        .await?
        .with_shard(shard(1)?);
    ensure!(shard_1.relation_sizes() == &sizes, "resumed sizes differ");
    ensure!(
        shard_1.slru_pages() == &slru_pages,
        "resumed SLRU pages differ"
    );
    Ok(shard_1)
}

/// `records` end in `CREATE DATABASE ... STRATEGY file_copy`, which the unsharded ingest copies and
/// each shard refuses, after ingesting everything before it.
async fn phase_two(
    pool: &Rc<RedoPool>,
    [mut unsharded, mut shard_0, mut shard_1]: [WalIngest; 3],
    records: &[RawRecord],
) -> Result<()> {
    ingest_all(&mut unsharded, records).await?;
    let mut refused_at = Vec::new();
    for (number, ingest) in [(0, &mut shard_0), (1, &mut shard_1)] {
        let before = ingest.timeline().last_record_lsn();
        let error = ingest_all(ingest, records)
            .await
            .err()
            .context("file_copy ingested by a shard")?;
        let refusal = error
            .downcast_ref::<ShardedFileCopy>()
            .with_context(|| format!("shard {number}: {error:#}"))?;
        let text = format!("{error:#}");
        ensure!(
            text.contains("STRATEGY file_copy") && text.contains(&format!("shard {number}/2")),
            "{text}"
        );
        let last = ingest.timeline().last_record_lsn();
        ensure!(
            last > before && last < refusal.lsn,
            "shard {number} stopped at {last}, refused at {}",
            refusal.lsn
        );
        refused_at.push(last);
    }
    ensure!(
        refused_at[0] == refused_at[1],
        "the shards stopped at {refused_at:?}"
    );
    let stopped = refused_at[0];
    check_all(pool, [&unsharded, &shard_0, &shard_1], stopped).await?;
    println!("phase 2: both shards refused file_copy after {stopped}; pages equal there");
    Ok(())
}
