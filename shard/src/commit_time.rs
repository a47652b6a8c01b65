//! The commit-time index: from a timestamp to the LSN of the last commit at
//! or before it, for a branch at a timestamp and the PITR horizon of GC.
//!
//! Ingest stores one version of [`Key::commit_time`] per commit record, at
//! the record's end LSN: the commit's `xact_time` and that LSN (the engine's
//! encoding, [`commit_time_value`]; the LSN is in the value because an image
//! layer re-stores the value at its own LSN). So the value read at `L` is
//! the last commit at or before `L`. Commit times grow with LSN (a backend
//! takes its `xact_time` just before inserting the record, so neighbours can
//! be out of order by the time the insertion takes), which makes "the last
//! commit at or before `L` is at or before `T`" true up to a point and false
//! after it; a binary search over readable LSNs finds that point in about
//! 64 reads, each one key lookup.

use quire_postgres::timestamp::TimestampTz;
use quire_postgres::{Key, Lsn};

use crate::timeline::{Timeline, TimelineError};
use crate::value::Value;

/// Bytes of a commit-time value: `xact_time` then the commit's end LSN,
/// both little-endian.
const VALUE_BYTES: usize = 16;

/// A commit: where its record ends, and its `xact_time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPoint {
    /// The end LSN of the commit record: a read there sees the commit.
    pub lsn: Lsn,
    /// When it committed.
    pub time: TimestampTz,
}

/// The value stored under [`Key::commit_time`] for a commit ending at `lsn`.
pub fn commit_time_value(lsn: Lsn, time: TimestampTz) -> Value {
    let mut bytes = Vec::with_capacity(VALUE_BYTES);
    bytes.extend_from_slice(&time.0.to_le_bytes());
    bytes.extend_from_slice(&lsn.0.to_le_bytes());
    Value::Image(bytes.into())
}

impl Timeline {
    /// The last commit at or before `lsn` that this timeline (or its
    /// ancestors, below the branch point) recorded.
    pub async fn last_commit_at(&self, lsn: Lsn) -> Result<Option<CommitPoint>, TimelineError> {
        let inputs = self.get(Key::commit_time(), lsn).await?;
        let bad = |what| TimelineError::BadCommitTime { lsn, what };
        if !inputs.records.is_empty() {
            return Err(bad("a record where an image belongs"));
        }
        let Some((_, bytes)) = inputs.image else {
            return Ok(None);
        };
        let raw: [u8; VALUE_BYTES] = (*bytes).try_into().map_err(|_| bad("not 16 bytes"))?;
        let (time, at) = raw.split_at(8);
        let time = i64::from_le_bytes(time.try_into().map_err(|_| bad("not 16 bytes"))?);
        let at = u64::from_le_bytes(at.try_into().map_err(|_| bad("not 16 bytes"))?);
        if at > lsn.0 {
            return Err(bad("a commit past the LSN it was read at"));
        }
        Ok(Some(CommitPoint {
            lsn: Lsn(at),
            time: TimestampTz(time),
        }))
    }

    /// The lowest LSN a read may ask for: the GC cutoff, or where the read
    /// reaches into an ancestor, the ancestor's (never above the branch
    /// point, which is always kept).
    pub fn lowest_readable_lsn(&self) -> Lsn {
        let cutoff = self.gc_cutoff_lsn();
        match self.ancestor() {
            Some((parent, at)) if cutoff < *at => cutoff.max(parent.lowest_readable_lsn()).min(*at),
            _ => cutoff,
        }
    }

    /// The last commit at or before `time` among the readable history up
    /// to the last ingested record; `None` if every commit recorded there
    /// is later (or there is none). A commit below the lowest readable LSN
    /// (GC has passed it, and no commit came between) is answered at that
    /// LSN instead, which has the same committed state and can be read.
    pub async fn commit_at_or_before(
        &self,
        time: TimestampTz,
    ) -> Result<Option<CommitPoint>, TimelineError> {
        // A GC that raises the cutoff during the search makes a probe
        // unreadable: search again once from the new cutoff.
        match self.search_commit(time).await {
            Err(TimelineError::BelowGcCutoff { .. }) => self.search_commit(time).await,
            other => other,
        }
    }

    async fn search_commit(&self, time: TimestampTz) -> Result<Option<CommitPoint>, TimelineError> {
        let fits = |commit: Option<CommitPoint>| commit.is_none_or(|c| c.time <= time);
        let mut high = self.ingested_lsn();
        let lowest = self.lowest_readable_lsn().min(high);
        let readable = |commit: Option<CommitPoint>| {
            commit.map(|c| CommitPoint {
                lsn: c.lsn.max(lowest),
                ..c
            })
        };
        let newest = self.last_commit_at(high).await?;
        if fits(newest) {
            return Ok(readable(newest));
        }
        let mut low = lowest;
        let mut below = self.last_commit_at(low).await?;
        if !fits(below) {
            return Ok(None);
        }
        // `fits` holds at `low` and not at `high`.
        while high.0 - low.0 > 1 {
            let middle = Lsn(low.0 + (high.0 - low.0) / 2);
            let commit = self.last_commit_at(middle).await?;
            if fits(commit) {
                low = middle;
                below = commit;
            } else {
                high = middle;
            }
        }
        Ok(readable(below))
    }
}
