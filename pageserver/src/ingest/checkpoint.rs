//! The running checkpoint: the `CheckPoint` struct ingest keeps current
//! record by record and stores under [`Key::checkpoint`], so that the value
//! at any LSN X is one a vanilla Postgres can start from without recovery
//! (a basebackup at X writes it into `pg_control` and a shutdown checkpoint
//! record; Postgres then takes its counters as they are).
//!
//! What each field holds at X, following what Postgres' own recovery
//! derives from the same WAL (`xlog_redo`, `xact_redo_*`, `multixact_redo`,
//! `ApplyWalRecord` in Postgres 17):
//! - `nextXid`: past every xid the WAL up to X names: each record's
//!   `xl_xid`, the xids and subtransactions of commit and abort records,
//!   the members of multixacts. Postgres assigns an xid before any record
//!   that carries it (`GetNewTransactionId` runs when a transaction first
//!   writes), and a record written in a subtransaction carries the
//!   subtransaction's xid, so no page at X holds a later xid. An xid
//!   assigned but never written to the WAL may be handed out again: nothing
//!   durable names it. A prepared transaction's subtransactions that never
//!   wrote are covered by Postgres itself at start (it advances `nextXid`
//!   past the subxids of the `pg_twophase` files). The value goes forward in
//!   steps of [`XID_STEP`] (see there); 32-bit xids are placed in the
//!   running epoch as Postgres does, the epoch going up when an xid wraps.
//! - `nextOid`: the last `XLOG_NEXTOID` (Postgres logs a value ahead of
//!   every OID it hands out before the next such record) or shutdown
//!   checkpoint. An online checkpoint's `nextOid` is ignored, as recovery
//!   ignores it: it was read when the checkpoint began, and OIDs handed
//!   out before its record was written may lie past it.
//! - `nextMulti`, `nextMultiOffset`: past every multixact created (the
//!   next id and the offset after its members, wrapping as Postgres'
//!   counters do, 0 included: Postgres skips 0 when it assigns), only ever
//!   forward (modulo 2^32 comparison, `MultiXactIdPrecedes`).
//! - A shutdown checkpoint record replaces the whole struct: Postgres wrote
//!   it with no transaction running, so its counters are exact. An online
//!   one replaces the rest but never moves `nextXid` or `nextMulti` back,
//!   and `oldestXid`/`oldestMulti` only forward: its counters were read at
//!   its start and may be older than what ingest has seen since. A
//!   multixact truncation sets `oldestMulti` (as its redo does).
//! - An online checkpoint's `redo` and `oldestActiveXid` are kept as the
//!   record has them and mean nothing for a start at X: a basebackup
//!   overwrites `redo` with its own LSN, and a shutdown checkpoint carries
//!   no `oldestActiveXid` (Postgres writes 0 there and, starting without
//!   recovery, takes the oldest active xid from `pg_twophase`); the
//!   basebackup should write 0 too.
//!
//! `oldestXid` is not moved by `XLOG_CLOG_TRUNCATE` (recovery does not
//! either); ingest keeps every `pg_xact` segment, so an older `oldestXid`
//! reads no missing page.
//!
//! Before it has a value to start from (a timeline with neither an import
//! nor a stored checkpoint), the first checkpoint record is taken as it is
//! and nothing is stored before it.

use std::rc::Rc;

use anyhow::Result;
use quire_postgres::control::CheckPoint;
use quire_postgres::types::TransactionId;
use quire_postgres::wal::effects::Effect;
use quire_postgres::{Key, Lsn};
use quire_shard::Value;
use zerocopy::IntoBytes;

use super::WalIngest;

/// `nextXid` moves in steps: to the next multiple of this above the
/// highest xid seen, so a put is needed once per 1024 xids, not per
/// record.
///
/// Starting Postgres from a rounded-up `nextXid` N is safe for `pg_xact`:
/// Postgres zeroes a `pg_xact` page only when it assigns the page's first
/// xid (`ExtendCLOG`), and at start it reads the page holding N unless N
/// is a page's first xid (`TrimCLOG`). A page holds 32768 xids, a multiple
/// of 1024, so N either lies on the page of the highest xid seen (which
/// exists: it was zeroed, in the WAL, before that xid's first record) or is
/// the first xid of the next page, which Postgres zeroes when it assigns
/// N. Past 2^32 (a multiple of 1024 too) N is the new epoch's first normal
/// xid, 3, where Postgres zeroes page 0. `pg_subtrans` (2048 xids a page)
/// is zeroed up to N at every start.
pub const XID_STEP: u64 = 1024;

/// `FirstNormalTransactionId`.
const FIRST_NORMAL_XID: u32 = TransactionId::FIRST_NORMAL.0;

impl WalIngest {
    /// The running checkpoint after the record (header xid `xl_xid`) whose
    /// effects are `effects`, stored at `lsn` if it changed.
    pub(super) async fn note_checkpoint(
        &mut self,
        xl_xid: TransactionId,
        effects: &[Effect],
        lsn: Lsn,
    ) -> Result<()> {
        self.checkpoint.note_record(xl_xid, effects);
        if let Some(checkpoint) = self.checkpoint.take_changed() {
            let value = Value::Image(Rc::from(checkpoint.as_bytes()));
            self.timeline.put(Key::checkpoint(), lsn, value).await?;
        }
        Ok(())
    }
}

/// The `CheckPoint` ingest keeps current.
#[derive(Clone, Debug)]
pub struct RunningCheckpoint {
    /// `None` until an import, a stored value or a checkpoint record gives one.
    value: Option<CheckPoint>,
    /// Whether `value` changed since [`RunningCheckpoint::take_changed`].
    changed: bool,
}

impl RunningCheckpoint {
    /// Starting from `value` (an import's `checkPointCopy`, or the value
    /// stored at the LSN ingest resumes from), or from nothing.
    pub fn new(value: Option<CheckPoint>) -> RunningCheckpoint {
        RunningCheckpoint {
            value,
            changed: false,
        }
    }

    /// The current value.
    pub fn value(&self) -> Option<&CheckPoint> {
        self.value.as_ref()
    }

    /// The value to store, if it changed since the last call.
    pub fn take_changed(&mut self) -> Option<CheckPoint> {
        if std::mem::take(&mut self.changed) {
            self.value
        } else {
            None
        }
    }

    /// One record: its header's `xl_xid` and its effects.
    pub fn note_record(&mut self, xl_xid: TransactionId, effects: &[Effect]) {
        self.advance_xid(xl_xid);
        for effect in effects {
            self.note_effect(effect);
        }
    }

    fn note_effect(&mut self, effect: &Effect) {
        match effect {
            Effect::XactStatus { xid, subxacts, .. } => {
                self.advance_xid(*xid);
                for &sub in subxacts {
                    self.advance_xid(sub);
                }
            }
            Effect::TwoPhasePrepare { xid, .. } => self.advance_xid(*xid),
            Effect::MultiXactCreate {
                mid,
                offset,
                members,
            } => {
                for &(xid, _) in members {
                    self.advance_xid(xid);
                }
                // A member count past 2^32 cannot be in a record; wrapping
                // keeps this total as Postgres' own counters would.
                let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
                self.advance_multi(mid.0.wrapping_add(1), offset.wrapping_add(count));
            }
            Effect::MultiXactTruncate {
                oldest_multi_db,
                end_multi,
                ..
            } => self.update(|cp| {
                cp.oldest_multi.set(*end_multi);
                cp.oldest_multi_db.set(*oldest_multi_db);
            }),
            Effect::NextOid(oid) => self.update(|cp| cp.next_oid.set(*oid)),
            Effect::Checkpoint {
                checkpoint,
                shutdown,
            } => self.apply_checkpoint(checkpoint, *shutdown),
            _ => {}
        }
    }

    /// `nextXid` past `xid`, if it is not already.
    fn advance_xid(&mut self, xid: TransactionId) {
        let Some(cp) = self.value.as_mut() else {
            return;
        };
        if let Some(next) = next_xid_past(cp.next_xid.get(), xid.0) {
            cp.next_xid.set(next);
            self.changed = true;
        }
    }

    /// `nextMulti` and `nextMultiOffset` at least these (modulo 2^32).
    fn advance_multi(&mut self, multi: u32, offset: u32) {
        let Some(cp) = self.value.as_mut() else {
            return;
        };
        if precedes_mod32(cp.next_multi.get(), multi) {
            cp.next_multi.set(multi);
            self.changed = true;
        }
        if precedes_mod32(cp.next_multi_offset.get(), offset) {
            cp.next_multi_offset.set(offset);
            self.changed = true;
        }
    }

    fn update(&mut self, change: impl FnOnce(&mut CheckPoint)) {
        if let Some(cp) = self.value.as_mut() {
            let before = *cp;
            change(cp);
            self.changed |= *cp != before;
        }
    }

    fn apply_checkpoint(&mut self, record: &CheckPoint, shutdown: bool) {
        let merged = match self.value {
            Some(ours) if !shutdown => merge_online(&ours, record),
            _ => *record,
        };
        self.changed |= self.value != Some(merged);
        self.value = Some(merged);
    }
}

/// An online checkpoint record over the running value: the record's
/// fields, but counters never back and `nextOid` ours.
fn merge_online(ours: &CheckPoint, record: &CheckPoint) -> CheckPoint {
    let mut merged = *record;
    if record.next_xid.get() < ours.next_xid.get() {
        merged.next_xid = ours.next_xid;
    }
    merged.next_oid = ours.next_oid;
    if precedes_mod32(record.next_multi.get(), ours.next_multi.get()) {
        merged.next_multi = ours.next_multi;
    }
    if precedes_mod32(record.next_multi_offset.get(), ours.next_multi_offset.get()) {
        merged.next_multi_offset = ours.next_multi_offset;
    }
    if precedes_mod32(record.oldest_multi.get(), ours.oldest_multi.get()) {
        merged.oldest_multi = ours.oldest_multi;
        merged.oldest_multi_db = ours.oldest_multi_db;
    }
    if xid_precedes(record.oldest_xid.get(), ours.oldest_xid.get()) {
        merged.oldest_xid = ours.oldest_xid;
        merged.oldest_xid_db = ours.oldest_xid_db;
    }
    merged
}

/// The `nextXid` (a `FullTransactionId`) to move to once `xid` has been
/// seen with the running value `next`, or `None` if `xid` is before `next`
/// (or is no xid Postgres assigns: invalid, bootstrap, frozen).
///
/// `xid` is placed in `next`'s epoch, or the following one when it is
/// numerically below `next`'s xid yet follows it modulo 2^32 (it wrapped):
/// its distance ahead of `next` is added to the 64-bit value. The result
/// is the next multiple of [`XID_STEP`] above it, or 3 in a new epoch.
pub fn next_xid_past(next: u64, xid: u32) -> Option<u64> {
    if xid < FIRST_NORMAL_XID {
        return None;
    }
    let next_low = low_xid(next);
    if !xid_follows_or_equals(xid, next_low) {
        return None;
    }
    let full = next.checked_add(u64::from(xid.wrapping_sub(next_low)))?;
    let rounded = (full | (XID_STEP - 1)).checked_add(1)?;
    if low_xid(rounded) < FIRST_NORMAL_XID {
        return rounded.checked_add(u64::from(FIRST_NORMAL_XID));
    }
    Some(rounded)
}

/// The 32-bit xid of a `FullTransactionId`.
fn low_xid(full: u64) -> u32 {
    u32::try_from(full & u64::from(u32::MAX)).unwrap_or(u32::MAX)
}

/// `TransactionIdFollowsOrEquals`: modulo 2^32 between normal xids,
/// numeric when either is special.
fn xid_follows_or_equals(a: u32, b: u32) -> bool {
    if a < FIRST_NORMAL_XID || b < FIRST_NORMAL_XID {
        return a >= b;
    }
    !precedes_mod32(a, b)
}

/// `TransactionIdPrecedes`.
fn xid_precedes(a: u32, b: u32) -> bool {
    if a < FIRST_NORMAL_XID || b < FIRST_NORMAL_XID {
        return a < b;
    }
    precedes_mod32(a, b)
}

/// `a` before `b` modulo 2^32 (`MultiXactIdPrecedes`,
/// `MultiXactOffsetPrecedes`): the signed difference is negative.
fn precedes_mod32(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) >= 1 << 31
}

#[cfg(test)]
mod tests;
