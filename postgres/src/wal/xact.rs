//! Transaction records (`RM_XACT`): commit, abort, their two-phase forms,
//! and prepare, as storage effects (`pg_xact` status, dropped relations,
//! `pg_twophase` state).
//!
//! A commit or abort starts with `xact_time` (8 bytes); when `xl_info` has
//! `XLOG_XACT_HAS_INFO` an `xinfo` word follows, and each flag in it adds
//! one part, in this order: database info (8), subtransactions (count +
//! xids), relations to drop (count + 12-byte locators), dropped statistics
//! (count + 12 bytes each), invalidations (commit only; count + 16 bytes
//! each), the prepared xid (4) and its NUL-terminated GID, origin (16).

use crate::timestamp::TimestampTz;
use crate::types::TransactionId;
use crate::wal::effects::{Effect, EffectError, Fields, XactStatus};

const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XACT_XINFO_HAS_DBINFO: u32 = 0x001;
const XACT_XINFO_HAS_SUBXACTS: u32 = 0x002;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 0x004;
const XACT_XINFO_HAS_INVALS: u32 = 0x008;
const XACT_XINFO_HAS_TWOPHASE: u32 = 0x010;
const XACT_XINFO_HAS_GID: u32 = 0x080;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 0x100;

/// `TWOPHASE_MAGIC`: the first word of a prepared transaction's state.
const TWOPHASE_MAGIC: u32 = 0x57F9_4534;

/// The effects of a transaction record; `xid` is the record's `xl_xid`.
pub(crate) fn xact_effects(
    info: u8,
    xid: TransactionId,
    data: &[u8],
) -> Result<Vec<Effect>, EffectError> {
    match info & XLOG_XACT_OPMASK {
        op @ (XLOG_XACT_COMMIT
        | XLOG_XACT_COMMIT_PREPARED
        | XLOG_XACT_ABORT
        | XLOG_XACT_ABORT_PREPARED) => {
            let commit = op == XLOG_XACT_COMMIT || op == XLOG_XACT_COMMIT_PREPARED;
            let prepared = op == XLOG_XACT_COMMIT_PREPARED || op == XLOG_XACT_ABORT_PREPARED;
            let record = if commit { "XACT_COMMIT" } else { "XACT_ABORT" };
            completion_effects(&Fields { record, data }, info, xid, commit, prepared)
        }
        XLOG_XACT_PREPARE => {
            let fields = Fields {
                record: "XACT_PREPARE",
                data,
            };
            let magic = fields.u32(0)?;
            if magic != TWOPHASE_MAGIC {
                return Err(fields.invalid(format!("state magic {magic:#x}")));
            }
            let prepared_xid = TransactionId(fields.u32(8)?);
            let mut file = data.to_vec();
            file.extend_from_slice(&quire_checksum::crc32c(data).to_le_bytes());
            Ok(vec![Effect::TwoPhasePrepare {
                xid: prepared_xid,
                file,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

fn completion_effects(
    fields: &Fields<'_>,
    info: u8,
    record_xid: TransactionId,
    commit: bool,
    prepared: bool,
) -> Result<Vec<Effect>, EffectError> {
    let time = TimestampTz(fields.i64(0)?);
    let mut at = 8;
    let xinfo = if info & XLOG_XACT_HAS_INFO != 0 {
        at += 4;
        fields.u32(8)?
    } else {
        0
    };
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        at += 8;
    }
    let mut subxacts = Vec::new();
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let count = fields.count(at)?;
        fields.bytes(at + 4, count * 4)?;
        subxacts = (0..count)
            .map(|i| fields.u32(at + 4 + 4 * i).map(TransactionId))
            .collect::<Result<_, _>>()?;
        at += 4 + 4 * count;
    }
    let mut dropped = Vec::new();
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        let count = fields.count(at)?;
        fields.bytes(at + 4, count * 12)?;
        dropped = (0..count)
            .map(|i| fields.locator(at + 4 + 12 * i))
            .collect::<Result<_, _>>()?;
        at += 4 + 12 * count;
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        at += 4 + 12 * fields.count(at)?;
    }
    if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
        at += 4 + 16 * fields.count(at)?;
    }
    let mut xid = record_xid;
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        xid = TransactionId(fields.u32(at)?);
    } else if prepared {
        return Err(
            fields.invalid("a prepared transaction's completion without its xid".to_owned())
        );
    }
    if xinfo & XACT_XINFO_HAS_GID != 0 && xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
        return Err(fields.invalid("a GID without a prepared xid".to_owned()));
    }
    if xid == TransactionId::INVALID {
        return Err(fields.invalid("completion of transaction 0".to_owned()));
    }
    let mut effects = vec![Effect::XactStatus {
        status: if commit {
            XactStatus::Committed
        } else {
            XactStatus::Aborted
        },
        xid,
        subxacts,
        prepared,
        time,
    }];
    if !dropped.is_empty() {
        effects.push(Effect::RelDrop(dropped));
    }
    Ok(effects)
}
