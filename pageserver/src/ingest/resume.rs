//! Resuming ingest on a timeline that already holds WAL (after a restart,
//! or on a branch): [`WalIngest::resume`] rebuilds what [`WalIngest`]
//! keeps beside the timeline from the timeline's own keys, and
//! [`wal_restart_lsn`] says where the WAL must be read from again.
//!
//! What ingest keeps and how it comes back, at the last record LSN:
//! - relation fork sizes: every fork's size key read as a size (this
//!   timeline's and its ancestors' below the branch point). A dropped fork's
//!   size key holds its drop marker and stays out (a fork created again
//!   reads the marker's size from the timeline, [`super::cut`]); a
//!   truncated fork has its new size there, and the blocks it cut off their
//!   cut markers, which need no state; a database created
//!   by `file_copy` got a size key per copied fork.
//! - SLRU pages: every SLRU block key (pages are never removed, see
//!   [`crate::ingest`]); segment sizes follow from them as in
//!   [`WalIngest::new`].
//! - the running checkpoint ([`super::checkpoint`]): the value of
//!   [`Key::checkpoint`] at that LSN (none there, a timeline ingested
//!   without an import: it waits for the next checkpoint record). Every
//!   change is stored at the record that made it, so the stored value is
//!   the running one; a `nextXid` stored rounded up stays rounded up.
//!
//! A shard of a sharded tenant holds all of these keys, not only shard
//! 0 ([`crate::shard_filter`]), so every shard resumes this way.
//!
//! Not rebuilt: the counters (they start at zero) and the verification-only
//! [`WalIngest::vm_pages_without_map`], which a restart loses.
//!
//! Reading the keys reads the index of every layer (not values but the
//! size keys): a cost paid once per start.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;

use anyhow::{Context, Result, anyhow, bail};
use quire_postgres::control::CheckPoint;
use quire_postgres::key::{KeyKind, SlruKind, kind};
use quire_postgres::types::RelTag;
use quire_postgres::{Key, Lsn};
use quire_redo::{RedoPool, TenantKey};
use quire_shard::Timeline;
use zerocopy::FromBytes;

use super::WalIngest;
use crate::datadir::SLRU_PAGES_PER_SEGMENT;

impl WalIngest {
    /// Ingest into `timeline` from where it stands, its state rebuilt from
    /// its keys at its last record LSN (after [`Timeline::load`], the
    /// disk-consistent LSN). Feed it WAL from [`wal_restart_lsn`]: records
    /// the timeline already holds are skipped. `redo` as for
    /// [`WalIngest::new`].
    pub async fn resume(
        timeline: Rc<Timeline>,
        redo: Option<(Rc<RedoPool>, TenantKey)>,
    ) -> Result<WalIngest> {
        let lsn = timeline.last_record_lsn();
        let mut sizes = HashMap::new();
        for key in timeline
            .size_keys_at(lsn, kind_range(kind::RELATION))
            .await
            .with_context(|| format!("list the relation keys at {lsn}"))?
        {
            let Ok(KeyKind::RelSize(rel)) = key.describe() else {
                continue;
            };
            if let Some(blocks) = rel_size(&timeline, rel, lsn).await? {
                sizes.insert(rel, blocks);
            }
        }
        let mut slru_pages = HashSet::new();
        for key in timeline
            .keys_at(lsn, kind_range(kind::SLRU))
            .await
            .with_context(|| format!("list the SLRU keys at {lsn}"))?
        {
            if let Ok(KeyKind::SlruBlock(slru, segment, block)) = key.describe() {
                slru_pages.insert((slru, slru_page(slru, segment, block)?));
            }
        }
        let checkpoint = stored_checkpoint(&timeline, lsn).await?;
        Ok(WalIngest::new(
            timeline, sizes, slru_pages, checkpoint, redo,
        ))
    }
}

/// The `CheckPoint` stored under [`Key::checkpoint`] at `lsn`, if any.
async fn stored_checkpoint(timeline: &Timeline, lsn: Lsn) -> Result<Option<CheckPoint>> {
    let key = Key::checkpoint();
    let inputs = timeline
        .get(key, lsn)
        .await
        .with_context(|| format!("read the checkpoint at {lsn}"))?;
    if !inputs.records.is_empty() {
        bail!("the checkpoint key holds a record at {lsn}, not an image");
    }
    let Some((_, bytes)) = inputs.image else {
        return Ok(None);
    };
    let checkpoint = CheckPoint::read_from_bytes(&bytes).map_err(|_| {
        anyhow!(
            "the checkpoint at {lsn} is {} bytes, not {}",
            bytes.len(),
            size_of::<CheckPoint>()
        )
    })?;
    Ok(Some(checkpoint))
}

/// Where to start decoding WAL of `segment_size`-byte segments for a
/// timeline whose last record LSN is `last_record_lsn`: the start of the
/// segment holding it (the ingest skips the records before).
///
/// Not `last_record_lsn` itself: after a flush and a reload it is one past
/// the last record's end (an L0 layer's exclusive end), never a record
/// boundary; and when the last record was `XLOG_SWITCH`, its end lies in
/// the zeros that fill the rest of its segment, where no record starts. A
/// record end at a page or segment boundary would do (the decoder reads the
/// page header there; see the tests), but the segment start covers every
/// case, as a Postgres standby restarting replication does.
pub fn wal_restart_lsn(last_record_lsn: Lsn, segment_size: u32) -> Lsn {
    Lsn(last_record_lsn.0 - u64::from(last_record_lsn.segment_offset(segment_size)))
}

/// [`wal_restart_lsn`] for a timeline whose own WAL begins at `wal_start`
/// (an import's LSN, where its first record starts), if known: never below
/// it. A WAL source holds nothing of the timeline below its start (the
/// safekeepers' copy of a compute started at the import LSN begins there
/// and refuses reads below), so a timeline restarted before it flushed
/// anything past its import would otherwise ask, forever, for WAL from the
/// start of the segment holding the import LSN.
pub fn wal_resume_lsn(last_record_lsn: Lsn, segment_size: u32, wal_start: Option<Lsn>) -> Lsn {
    let restart = wal_restart_lsn(last_record_lsn, segment_size);
    match wal_start {
        Some(start) if start <= last_record_lsn => restart.max(start),
        _ => restart,
    }
}

/// The keys of one kind byte.
fn kind_range(kind: u8) -> Range<Key> {
    let start = Key {
        kind,
        field1: 0,
        field2: 0,
        field3: 0,
        field4: 0,
        field5: 0,
    };
    let end = Key {
        kind: kind.saturating_add(1),
        ..start
    };
    start..end
}

async fn rel_size(timeline: &Timeline, rel: RelTag, lsn: Lsn) -> Result<Option<u32>> {
    timeline
        .rel_size(rel, lsn)
        .await
        .with_context(|| format!("read the size of {rel} at {lsn}"))
}

/// The page number (from the SLRU's start) of block `block` of `segment`.
fn slru_page(slru: SlruKind, segment: u32, block: u32) -> Result<u32> {
    segment
        .checked_mul(SLRU_PAGES_PER_SEGMENT)
        .and_then(|first| first.checked_add(block))
        .filter(|_| block < SLRU_PAGES_PER_SEGMENT)
        .with_context(|| {
            format!(
                "{} segment {segment} block {block} is no SLRU page",
                slru.directory()
            )
        })
}

#[cfg(test)]
mod tests;
