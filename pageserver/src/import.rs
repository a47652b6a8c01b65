//! Bootstrap: a timeline from a cluster's data directory.
//!
//! Used for a cluster fresh from initdb (cleanly stopped): every WAL-logged
//! relation fork's blocks, the relmapper files, the `pg_xact` and multixact
//! SLRU pages and `pg_control` become images at the cluster's checkpoint
//! LSN, with every fork's size, and so does the control file's copy of
//! that checkpoint under the checkpoint key (where ingest keeps it running,
//! [`crate::ingest::checkpoint`]). WAL after that checkpoint then goes through
//! [`crate::ingest`]. Unlogged and temporary relations are not imported.
//!
//! A shard of a sharded tenant reads every file but stores only the
//! relation blocks it owns, and every other key ([`crate::shard_filter`]);
//! the sizes it returns cover every relation fork.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use quire_postgres::control::{CheckPoint, ControlFileData, DbState};
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, RELSEG_SIZE, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::keyspace::size_value;
use quire_shard::{Timeline, Value};
use zerocopy::IntoBytes;

use crate::datadir::{self, SLRU_PAGES_PER_SEGMENT};
use crate::ingest::slru_key;
use crate::shard_filter::ShardFilter;

/// What an import produced.
#[derive(Debug)]
pub struct Imported {
    /// The LSN of the images: the cluster's last checkpoint.
    pub lsn: Lsn,
    /// Forks and sizes in blocks.
    pub sizes: HashMap<RelTag, u32>,
    /// SLRU pages present.
    pub slru_pages: HashSet<(SlruKind, u32)>,
    /// Pages stored (relation and SLRU).
    pub pages: u64,
    /// Relation pages read but not stored: another shard owns them.
    pub pages_not_owned: u64,
    /// The control file's `checkPointCopy`: the shutdown checkpoint at
    /// `lsn`, for ingest to keep running ([`crate::ingest::WalIngest::new`]).
    pub checkpoint: CheckPoint,
}

/// The control file of `pgdata`.
pub fn read_control(pgdata: &Path) -> Result<ControlFileData> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    ControlFileData::decode(&bytes).with_context(|| format!("decode {}", path.display()))
}

/// The `pg_control` an import stored in `timeline`, read at `lsn`. Only an
/// import writes it (ingest never does), so it is the same at every LSN of
/// the timeline and of its branches.
pub async fn stored_control(timeline: &Timeline, lsn: Lsn) -> Result<ControlFileData> {
    let inputs = timeline
        .get(Key::control_file(), lsn)
        .await
        .with_context(|| format!("read the stored pg_control at {lsn}"))?;
    let Some((_, bytes)) = inputs.image.filter(|_| inputs.records.is_empty()) else {
        bail!("the timeline holds no pg_control image at {lsn}");
    };
    ControlFileData::decode(&bytes)
        .with_context(|| format!("decode the stored pg_control at {lsn}"))
}

/// Imports `pgdata` (cleanly shut down) into an empty `timeline`, keeping
/// what `shard` keeps.
pub async fn import_datadir(
    timeline: &Timeline,
    pgdata: &Path,
    shard: ShardFilter,
) -> Result<Imported> {
    let control = read_control(pgdata)?;
    if control.state.get() != DbState::Shutdowned as u32 {
        bail!(
            "{} was not shut down cleanly (state {}); import needs a clean stop",
            pgdata.display(),
            control.state.get()
        );
    }
    let lsn = control.checkpoint_lsn();
    let dir = datadir::scan(pgdata)?;
    let mut imported = Imported {
        lsn,
        sizes: HashMap::new(),
        slru_pages: HashSet::new(),
        pages: 0,
        pages_not_owned: 0,
        checkpoint: control.checkpoint_copy,
    };
    for files in dir.relations.values() {
        let mut blocks = 0u32;
        for (segment, path) in &files.segments {
            let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            if bytes.len() % BLCKSZ != 0 {
                bail!("{} is not a whole number of pages", path.display());
            }
            for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
                // A segment number from a file name can reach past the last block.
                let block = u32::try_from(i)
                    .ok()
                    .and_then(|i| segment.checked_mul(RELSEG_SIZE)?.checked_add(i))
                    .map(BlockNo)
                    .with_context(|| format!("{} reaches past block 2^32", path.display()))?;
                let key = Key::try_rel_block(files.rel, block)
                    .with_context(|| format!("{} reaches past the last block", path.display()))?;
                let value = Value::Image(Rc::from(page));
                if shard.put(timeline, key, lsn, value).await? {
                    imported.pages += 1;
                } else {
                    imported.pages_not_owned += 1;
                }
                // block ≤ MaxBlockNumber (the key is valid): no overflow.
                blocks = blocks.max(block.0.saturating_add(1));
            }
        }
        shard
            .put(timeline, Key::rel_size(files.rel), lsn, size_value(blocks))
            .await?;
        imported.sizes.insert(files.rel, blocks);
    }
    for (&(spc, db), path) in &dir.relmaps {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let value = Value::Image(bytes.into());
        shard
            .put(timeline, Key::rel_map(spc, db), lsn, value)
            .await?;
    }
    for (&(kind, segment), path) in &dir.slru_segments {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
            let page_no = u32::try_from(i)
                .ok()
                .and_then(|i| segment.checked_mul(SLRU_PAGES_PER_SEGMENT)?.checked_add(i))
                .with_context(|| format!("{} reaches past SLRU page 2^32", path.display()))?;
            let value = Value::Image(Rc::from(page));
            shard
                .put(timeline, slru_key(kind, page_no), lsn, value)
                .await?;
            imported.slru_pages.insert((kind, page_no));
            imported.pages += 1;
        }
        let pages = u32::try_from(bytes.len() / BLCKSZ).context("SLRU segment too large")?;
        shard
            .put(
                timeline,
                Key::slru_segment_size(kind, segment),
                lsn,
                size_value(pages),
            )
            .await?;
    }
    shard
        .put(
            timeline,
            Key::control_file(),
            lsn,
            Value::Image(Rc::from(control.encode())),
        )
        .await?;
    shard
        .put(
            timeline,
            Key::checkpoint(),
            lsn,
            Value::Image(Rc::from(control.checkpoint_copy.as_bytes())),
        )
        .await?;
    timeline.advance(lsn);
    Ok(imported)
}
