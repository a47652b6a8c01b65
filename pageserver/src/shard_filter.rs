//! Which values a shard of a sharded tenant stores, and the one way import
//! and ingest store a value.
//!
//! Every shard takes the tenant's whole WAL stream (and imports the whole
//! data directory) but keeps only the relation blocks it owns by the
//! stripe rule of `docs/format/keys.md` ("Sharding"). Every other key
//! (relation sizes, relation and database directories, SLRU pages and
//! sizes, relmapper and two-phase files, the control file, the checkpoint)
//! is kept on every shard, although shard 0 alone answers for them: a
//! shard's ingest state comes back after a restart from its own keys
//! ([`WalIngest::resume`] reads the size and SLRU keys), so each shard
//! needs them, and they are a small fraction of the data. A key kind added
//! later is kept everywhere too: only relation blocks are filtered.
//!
//! What a shard cannot ingest from its own keys is refused, never stored
//! wrong: `CREATE DATABASE ... STRATEGY file_copy` copies the template's
//! blocks to a new relation whose blocks the stripe rule deals out
//! differently, so the shard owning a copied block generally holds no
//! version of its source ([`ShardedFileCopy`]).
//!
//! An unsharded tenant (one shard) keeps everything.
//!
//! [`WalIngest::resume`]: crate::ingest::WalIngest::resume

use std::cell::Cell;
use std::rc::Rc;

use quire_net::id::ShardIdentity;
use quire_postgres::types::ForkNumber;
use quire_postgres::{Key, Lsn};
use quire_shard::{ReconstructInputs, Timeline, TimelineError, Value};

/// The values one shard keeps: its own relation blocks and every key that
/// is not a relation block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardFilter {
    identity: ShardIdentity,
}

impl ShardFilter {
    /// The filter of `identity`.
    pub fn new(identity: ShardIdentity) -> ShardFilter {
        ShardFilter { identity }
    }

    /// An unsharded tenant's: everything is kept.
    pub fn unsharded() -> ShardFilter {
        ShardFilter::new(ShardIdentity::unsharded())
    }

    /// The shard filtered for.
    pub fn identity(self) -> ShardIdentity {
        self.identity
    }

    /// Whether the tenant has more than one shard (something is dropped).
    pub fn is_sharded(self) -> bool {
        self.identity.count() > 1
    }

    /// Whether this shard stores `key`: its own blocks, every block of an
    /// init fork (a few per unlogged relation, which shard 0 puts into
    /// every basebackup) and every key that is not a relation block.
    pub fn keeps(self, key: &Key) -> bool {
        !key.is_rel_block() || key.field4 == ForkNumber::Init as u8 || self.identity.owns(key)
    }

    /// `CREATE DATABASE ... STRATEGY file_copy` at `lsn`: refused when the
    /// tenant is sharded.
    pub fn refuse_file_copy(self, lsn: Lsn) -> Result<(), ShardedFileCopy> {
        if self.is_sharded() {
            return Err(ShardedFileCopy {
                lsn,
                shard: self.identity,
            });
        }
        Ok(())
    }

    /// Stores `value` under `key` at `lsn` in `timeline` if this shard
    /// keeps `key`; whether it did. Every value import and ingest write
    /// goes through here.
    pub async fn put(
        self,
        timeline: &Timeline,
        key: Key,
        lsn: Lsn,
        value: Value,
    ) -> Result<bool, TimelineError> {
        if !self.keeps(&key) {
            return Ok(false);
        }
        timeline.put(key, lsn, value).await?;
        Ok(true)
    }
}

/// `CREATE DATABASE ... STRATEGY file_copy` on a shard of a sharded
/// tenant: the copy needs template blocks other shards hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "CREATE DATABASE ... STRATEGY file_copy (the Database/CREATE_FILE_COPY record ending at {lsn}) \
     cannot be ingested on {shard}: \
     the copied blocks belong to other shards than their template blocks, and this shard holds only its own; \
     a sharded tenant's databases must be created with STRATEGY wal_log"
)]
pub struct ShardedFileCopy {
    /// The end of the record (rounded up to 8), where the copy would be.
    pub lsn: Lsn,
    /// The shard that refused it.
    pub shard: ShardIdentity,
}

/// The timeline ingest writes, seen through its shard's filter: `put` is
/// [`ShardFilter::put`], so no value of ingest bypasses the filter; the
/// rest is the timeline's own. Counts the values it did not keep.
pub(crate) struct ShardTimeline {
    timeline: Rc<Timeline>,
    filter: ShardFilter,
    not_kept: Cell<u64>,
}

impl ShardTimeline {
    pub(crate) fn new(timeline: Rc<Timeline>, filter: ShardFilter) -> ShardTimeline {
        ShardTimeline {
            timeline,
            filter,
            not_kept: Cell::new(0),
        }
    }

    pub(crate) fn rc(&self) -> &Rc<Timeline> {
        &self.timeline
    }

    pub(crate) fn filter(&self) -> ShardFilter {
        self.filter
    }

    pub(crate) fn set_filter(&mut self, filter: ShardFilter) {
        self.filter = filter;
    }

    /// Values dropped because another shard owns their block.
    pub(crate) fn not_kept(&self) -> u64 {
        self.not_kept.get()
    }

    /// [`ShardFilter::put`].
    pub(crate) async fn put(&self, key: Key, lsn: Lsn, value: Value) -> Result<(), TimelineError> {
        if !self.filter.put(&self.timeline, key, lsn, value).await? {
            self.not_kept.set(self.not_kept.get() + 1);
        }
        Ok(())
    }

    pub(crate) async fn get(&self, key: Key, lsn: Lsn) -> Result<ReconstructInputs, TimelineError> {
        self.timeline.get(key, lsn).await
    }

    pub(crate) fn last_record_lsn(&self) -> Lsn {
        self.timeline.last_record_lsn()
    }

    pub(crate) fn advance(&self, lsn: Lsn) {
        self.timeline.advance(lsn);
    }

    pub(crate) fn open_layer_bytes(&self) -> usize {
        self.timeline.open_layer_bytes()
    }

    pub(crate) fn freeze(&self) {
        self.timeline.freeze();
    }

    pub(crate) async fn flush(&self) -> Result<usize, TimelineError> {
        self.timeline.flush().await
    }
}

#[cfg(test)]
mod tests;
