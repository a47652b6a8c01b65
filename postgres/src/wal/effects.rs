//! What the storage must do for each WAL record.
//!
//! Every block reference becomes a page update: the restored full-page
//! image (with the page LSN set to the record's end, as redo sets it), or
//! "apply this record" (with its will-init flag, which says no base page is
//! needed). Records that change more than pages also yield [`Effect`]s:
//! relation forks created and truncated, databases created and dropped,
//! relmapper files, transaction status for `pg_xact` (with subtransactions
//! and two-phase commit), prepared-transaction state, multixacts,
//! visibility-map bits cleared without a block reference, checkpoints, OID
//! counters, and the compute's relation-size messages
//! ([`super::relsize`]). Layouts are Postgres 17's (little-endian); a main
//! data that does not parse is an [`EffectError`], never a panic.

use crate::control::CheckPoint;
use crate::lsn::Lsn;
use crate::timestamp::TimestampTz;
use crate::types::{
    BLCKSZ, BlockNo, ForkNumber, MultiXactId, Oid, RelFileLocator, RelTag, TransactionId,
};
use crate::wal::image::ImageError;
use crate::wal::record::DecodedRecord;
use crate::wal::relsize::{RelSizeMalformed, logical_message_effects};
use crate::wal::rmgr::{
    RM_CLOG_ID, RM_DBASE_ID, RM_HEAP_ID, RM_HEAP2_ID, RM_LOGICALMSG_ID, RM_MULTIXACT_ID,
    RM_RELMAP_ID, RM_SMGR_ID, RM_XACT_ID, RM_XLOG_ID,
};
use zerocopy::FromBytes;

/// A page's new state after a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageUpdate {
    /// The whole page, restored from the record's image, page LSN set.
    Image(Box<[u8; BLCKSZ]>),
    /// Apply the record to the page; `will_init` records need no base page.
    Apply {
        /// `BKPBLOCK_WILL_INIT`.
        will_init: bool,
    },
}

/// One block reference's update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageEffect {
    /// The relation fork.
    pub rel: RelTag,
    /// The block.
    pub block: BlockNo,
    /// What happens to it.
    pub update: PageUpdate,
}

/// How a database was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbCreateStrategy {
    /// `STRATEGY wal_log`: its relations follow as ordinary WAL.
    WalLog,
    /// `STRATEGY file_copy`: files copied from a template, not in the WAL.
    FileCopy {
        /// Template database.
        src_db_oid: Oid,
        /// Template tablespace.
        src_spc_oid: Oid,
    },
}

/// Final status of a transaction in `pg_xact`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XactStatus {
    /// Committed.
    Committed,
    /// Aborted.
    Aborted,
}

/// A non-page change a record makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A relation fork was created (empty).
    RelCreate(RelTag),
    /// A relation was truncated (`XLOG_SMGR_TRUNCATE`): the main fork to
    /// `blocks` if `main`, and the FSM and VM forks to match if flagged.
    RelTruncate {
        /// The relation.
        rel: RelFileLocator,
        /// New size of the main fork in blocks.
        blocks: u32,
        /// `SMGR_TRUNCATE_HEAP`.
        main: bool,
        /// `SMGR_TRUNCATE_VM`.
        vm: bool,
        /// `SMGR_TRUNCATE_FSM`.
        fsm: bool,
    },
    /// Relations dropped (every fork) at commit or abort.
    RelDrop(Vec<RelFileLocator>),
    /// A database was created in a tablespace.
    DbCreate {
        /// Database.
        db_oid: Oid,
        /// Tablespace.
        spc_oid: Oid,
        /// How.
        strategy: DbCreateStrategy,
    },
    /// A database was dropped from these tablespaces.
    DbDrop {
        /// Database.
        db_oid: Oid,
        /// Tablespaces.
        spc_oids: Vec<Oid>,
    },
    /// A relmapper file was rewritten (524 bytes, CRC included).
    RelMapUpdate {
        /// Database (0: the shared map).
        db_oid: Oid,
        /// Tablespace.
        spc_oid: Oid,
        /// The whole file.
        file: Vec<u8>,
    },
    /// Transactions reached a final status (`pg_xact` bits).
    XactStatus {
        /// Committed or aborted.
        status: XactStatus,
        /// The top-level transaction (the prepared one for 2PC).
        xid: TransactionId,
        /// Its subtransactions.
        subxacts: Vec<TransactionId>,
        /// For COMMIT/ABORT PREPARED: the prepared transaction whose state file goes away.
        prepared: bool,
        /// The record's `xact_time`: when the transaction committed or aborted.
        time: TimestampTz,
    },
    /// A transaction was prepared: its `pg_twophase` state file contents
    /// (the record's main data plus the CRC Postgres appends to the file).
    TwoPhasePrepare {
        /// The prepared transaction.
        xid: TransactionId,
        /// The state file as Postgres writes it at a checkpoint.
        file: Vec<u8>,
    },
    /// A multixact was created.
    MultiXactCreate {
        /// The multixact.
        mid: MultiXactId,
        /// Its first member's offset.
        offset: u32,
        /// Members as `(xid, status)`.
        members: Vec<(TransactionId, u32)>,
    },
    /// Multixacts were truncated away.
    MultiXactTruncate {
        /// `oldestMultiDB`.
        oldest_multi_db: Oid,
        /// First multixact removed.
        start_multi: u32,
        /// First multixact kept.
        end_multi: u32,
        /// First member offset removed.
        start_offset: u32,
        /// First member offset kept.
        end_offset: u32,
    },
    /// An SLRU page was zeroed (`pg_xact`, multixact offsets or members).
    SlruZeroPage {
        /// Which SLRU.
        slru: crate::key::SlruKind,
        /// The page number (64-bit in Postgres 17).
        page: i64,
    },
    /// `pg_xact` pages before `page` were truncated away.
    ClogTruncate {
        /// First page kept.
        page: i64,
        /// `oldestXact`.
        oldest_xid: TransactionId,
        /// `oldestXactDb`.
        oldest_xid_db: Oid,
    },
    /// Visibility-map bits of a heap block were cleared by a record without a
    /// block reference for the map page (WAL written before 17.x registered it).
    VmClear {
        /// The heap relation.
        rel: RelFileLocator,
        /// The heap block whose bits are cleared.
        heap_block: BlockNo,
        /// Bits cleared: 0x01 all-visible, 0x02 all-frozen.
        bits: u8,
    },
    /// A checkpoint record.
    Checkpoint {
        /// The checkpoint's state.
        checkpoint: Box<CheckPoint>,
        /// Shutdown (true) or online.
        shutdown: bool,
    },
    /// `XLOG_NEXTOID`: the OID counter advanced.
    NextOid(Oid),
    /// The compute's `quire.relsize` logical message: the fork has at least
    /// `blocks` blocks (some perhaps extended with zeros and never logged).
    RelSizeAtLeast {
        /// The relation fork.
        rel: RelTag,
        /// Its size is at least this.
        blocks: u32,
    },
    /// A `quire.relsize` logical message off its layout: storage ignores it.
    RelSizeMessageMalformed(RelSizeMalformed),
}

/// A record whose contents do not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    /// The main data is shorter than its layout needs.
    #[error("{record}: main data is {len} bytes, shorter than its layout")]
    Truncated {
        /// Which record kind.
        record: &'static str,
        /// Bytes present.
        len: usize,
    },
    /// A field holds an impossible value.
    #[error("{record}: {what}")]
    Invalid {
        /// Which record kind.
        record: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A full-page image does not restore.
    #[error("block {id}: {source}")]
    Image {
        /// Block id.
        id: u8,
        /// Why.
        source: ImageError,
    },
}

/// The page updates of a record, one per block reference.
pub fn page_effects(record: &DecodedRecord<'_>, end: Lsn) -> Result<Vec<PageEffect>, EffectError> {
    record
        .blocks()
        .map(|block| {
            let update = match &block.image {
                Some(image) if image.is_applied() => {
                    let mut page = Box::new([0u8; BLCKSZ]);
                    image
                        .restore(&mut page)
                        .map_err(|source| EffectError::Image {
                            id: block.id,
                            source,
                        })?;
                    // Redo stamps the record's end LSN on a restored page
                    // unless the page is new (`PageIsNew`: pd_upper is 0).
                    if page[14..16] != [0, 0] {
                        set_page_lsn(&mut page, end);
                    }
                    PageUpdate::Image(page)
                }
                _ => PageUpdate::Apply {
                    will_init: block.will_init,
                },
            };
            Ok(PageEffect {
                rel: RelTag::new(block.rel, block.fork),
                block: block.block,
                update,
            })
        })
        .collect()
}

/// Writes `pd_lsn` (two little-endian u32 halves, high first).
pub fn set_page_lsn(page: &mut [u8; BLCKSZ], lsn: Lsn) {
    let high = u32::try_from(lsn.0 >> 32).unwrap_or(u32::MAX);
    let low = u32::try_from(lsn.0 & 0xFFFF_FFFF).unwrap_or(u32::MAX);
    page[0..4].copy_from_slice(&high.to_le_bytes());
    page[4..8].copy_from_slice(&low.to_le_bytes());
}

/// The non-page effects of a record.
pub fn record_effects(record: &DecodedRecord<'_>) -> Result<Vec<Effect>, EffectError> {
    let info = record.header.rmgr_info();
    let data = record.main_data;
    match record.header.rmid {
        RM_XLOG_ID => xlog_effects(info, data),
        RM_XACT_ID => crate::wal::xact::xact_effects(record.header.info, record.header.xid, data),
        RM_SMGR_ID => smgr_effects(info, data),
        RM_DBASE_ID => dbase_effects(info, data),
        RM_RELMAP_ID => relmap_effects(info, data),
        RM_CLOG_ID => clog_effects(info, data),
        RM_MULTIXACT_ID => multixact_effects(info, data),
        RM_HEAP_ID | RM_HEAP2_ID => Ok(heap_vm_effects(record)),
        RM_LOGICALMSG_ID => Ok(logical_message_effects(info, data)),
        _ => Ok(Vec::new()),
    }
}

/// Little-endian field reads over a main data.
pub(crate) struct Fields<'a> {
    pub(crate) record: &'static str,
    pub(crate) data: &'a [u8],
}

impl Fields<'_> {
    pub(crate) fn bytes(&self, at: usize, len: usize) -> Result<&[u8], EffectError> {
        at.checked_add(len)
            .and_then(|end| self.data.get(at..end))
            .ok_or(EffectError::Truncated {
                record: self.record,
                len: self.data.len(),
            })
    }

    pub(crate) fn u8(&self, at: usize) -> Result<u8, EffectError> {
        Ok(self.bytes(at, 1)?[0])
    }

    pub(crate) fn u32(&self, at: usize) -> Result<u32, EffectError> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i64(&self, at: usize) -> Result<i64, EffectError> {
        let b = self.bytes(at, 8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(i64::from_le_bytes(raw))
    }

    /// A non-negative C `int` count.
    pub(crate) fn count(&self, at: usize) -> Result<usize, EffectError> {
        let raw = self.u32(at)?;
        usize::try_from(i32::from_le_bytes(raw.to_le_bytes())).map_err(|_| EffectError::Invalid {
            record: self.record,
            what: format!("negative count {}", i32::from_le_bytes(raw.to_le_bytes())),
        })
    }

    pub(crate) fn locator(&self, at: usize) -> Result<RelFileLocator, EffectError> {
        Ok(RelFileLocator {
            spc_oid: self.u32(at)?,
            db_oid: self.u32(at + 4)?,
            rel_number: self.u32(at + 8)?,
        })
    }

    pub(crate) fn invalid(&self, what: String) -> EffectError {
        EffectError::Invalid {
            record: self.record,
            what,
        }
    }
}

const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
const XLOG_NEXTOID: u8 = 0x30;

fn xlog_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    match info {
        XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
            let (checkpoint, _) =
                CheckPoint::read_from_prefix(data).map_err(|_| EffectError::Truncated {
                    record: "CHECKPOINT",
                    len: data.len(),
                })?;
            Ok(vec![Effect::Checkpoint {
                checkpoint: Box::new(checkpoint),
                shutdown: info == XLOG_CHECKPOINT_SHUTDOWN,
            }])
        }
        XLOG_NEXTOID => Ok(vec![Effect::NextOid(
            Fields {
                record: "NEXTOID",
                data,
            }
            .u32(0)?,
        )]),
        _ => Ok(Vec::new()),
    }
}

const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;

fn smgr_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    match info {
        XLOG_SMGR_CREATE => {
            let fields = Fields {
                record: "SMGR_CREATE",
                data,
            };
            let fork_number = fields.u32(12)?;
            let fork = u8::try_from(fork_number)
                .ok()
                .and_then(ForkNumber::from_u8)
                .ok_or_else(|| fields.invalid(format!("fork number {fork_number}")))?;
            Ok(vec![Effect::RelCreate(RelTag::new(
                fields.locator(0)?,
                fork,
            ))])
        }
        XLOG_SMGR_TRUNCATE => {
            let fields = Fields {
                record: "SMGR_TRUNCATE",
                data,
            };
            let flags = fields.u32(16)?;
            Ok(vec![Effect::RelTruncate {
                rel: fields.locator(4)?,
                blocks: fields.u32(0)?,
                main: flags & 0x1 != 0,
                vm: flags & 0x2 != 0,
                fsm: flags & 0x4 != 0,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

const XLOG_DBASE_CREATE_FILE_COPY: u8 = 0x00;
const XLOG_DBASE_CREATE_WAL_LOG: u8 = 0x10;
const XLOG_DBASE_DROP: u8 = 0x20;

fn dbase_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    match info {
        XLOG_DBASE_CREATE_FILE_COPY => {
            let fields = Fields {
                record: "DBASE_CREATE_FILE_COPY",
                data,
            };
            Ok(vec![Effect::DbCreate {
                db_oid: fields.u32(0)?,
                spc_oid: fields.u32(4)?,
                strategy: DbCreateStrategy::FileCopy {
                    src_db_oid: fields.u32(8)?,
                    src_spc_oid: fields.u32(12)?,
                },
            }])
        }
        XLOG_DBASE_CREATE_WAL_LOG => {
            let fields = Fields {
                record: "DBASE_CREATE_WAL_LOG",
                data,
            };
            Ok(vec![Effect::DbCreate {
                db_oid: fields.u32(0)?,
                spc_oid: fields.u32(4)?,
                strategy: DbCreateStrategy::WalLog,
            }])
        }
        XLOG_DBASE_DROP => {
            let fields = Fields {
                record: "DBASE_DROP",
                data,
            };
            let count = fields.count(4)?;
            let spc_oids = (0..count)
                .map(|i| fields.u32(8 + 4 * i))
                .collect::<Result<_, _>>()?;
            Ok(vec![Effect::DbDrop {
                db_oid: fields.u32(0)?,
                spc_oids,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

/// `sizeof(RelMapFile)`.
pub const RELMAP_FILE_SIZE: usize = 524;

fn relmap_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    if info != 0x00 {
        return Ok(Vec::new());
    }
    let fields = Fields {
        record: "RELMAP_UPDATE",
        data,
    };
    let nbytes = fields.count(8)?;
    if nbytes != RELMAP_FILE_SIZE {
        return Err(fields.invalid(format!(
            "relmapper file of {nbytes} bytes, expected {RELMAP_FILE_SIZE}"
        )));
    }
    Ok(vec![Effect::RelMapUpdate {
        db_oid: fields.u32(0)?,
        spc_oid: fields.u32(4)?,
        file: fields.bytes(12, nbytes)?.to_vec(),
    }])
}

const CLOG_ZEROPAGE: u8 = 0x00;
const CLOG_TRUNCATE: u8 = 0x10;

fn clog_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    use crate::key::SlruKind;
    match info {
        CLOG_ZEROPAGE => Ok(vec![Effect::SlruZeroPage {
            slru: SlruKind::Clog,
            page: Fields {
                record: "CLOG_ZEROPAGE",
                data,
            }
            .i64(0)?,
        }]),
        CLOG_TRUNCATE => {
            let fields = Fields {
                record: "CLOG_TRUNCATE",
                data,
            };
            Ok(vec![Effect::ClogTruncate {
                page: fields.i64(0)?,
                oldest_xid: TransactionId(fields.u32(8)?),
                oldest_xid_db: fields.u32(12)?,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

const XLOG_MULTIXACT_ZERO_OFF_PAGE: u8 = 0x00;
const XLOG_MULTIXACT_ZERO_MEM_PAGE: u8 = 0x10;
const XLOG_MULTIXACT_CREATE_ID: u8 = 0x20;
const XLOG_MULTIXACT_TRUNCATE_ID: u8 = 0x30;

fn multixact_effects(info: u8, data: &[u8]) -> Result<Vec<Effect>, EffectError> {
    use crate::key::SlruKind;
    match info {
        XLOG_MULTIXACT_ZERO_OFF_PAGE | XLOG_MULTIXACT_ZERO_MEM_PAGE => {
            let slru = if info == XLOG_MULTIXACT_ZERO_OFF_PAGE {
                SlruKind::MultiXactOffsets
            } else {
                SlruKind::MultiXactMembers
            };
            Ok(vec![Effect::SlruZeroPage {
                slru,
                page: Fields {
                    record: "MULTIXACT_ZERO_PAGE",
                    data,
                }
                .i64(0)?,
            }])
        }
        XLOG_MULTIXACT_CREATE_ID => {
            let fields = Fields {
                record: "MULTIXACT_CREATE_ID",
                data,
            };
            let count = fields.count(8)?;
            let members = (0..count)
                .map(|i| {
                    Ok((
                        TransactionId(fields.u32(12 + 8 * i)?),
                        fields.u32(16 + 8 * i)?,
                    ))
                })
                .collect::<Result<_, EffectError>>()?;
            Ok(vec![Effect::MultiXactCreate {
                mid: MultiXactId(fields.u32(0)?),
                offset: fields.u32(4)?,
                members,
            }])
        }
        XLOG_MULTIXACT_TRUNCATE_ID => {
            let fields = Fields {
                record: "MULTIXACT_TRUNCATE_ID",
                data,
            };
            Ok(vec![Effect::MultiXactTruncate {
                oldest_multi_db: fields.u32(0)?,
                start_multi: fields.u32(4)?,
                end_multi: fields.u32(8)?,
                start_offset: fields.u32(12)?,
                end_offset: fields.u32(16)?,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

/// Visibility-map clears that the record makes without a VM block
/// reference: WAL from Postgres 17 releases that did not register the map
/// page. (When the map page is a block reference, it is a page update.)
fn heap_vm_effects(record: &DecodedRecord<'_>) -> Vec<Effect> {
    const ALL_VISIBLE_AND_FROZEN: u8 = 0x03;
    const ALL_FROZEN: u8 = 0x02;
    if record.blocks().any(|b| b.fork == ForkNumber::VisibilityMap) {
        return Vec::new();
    }
    let heap_block = |id: u8| {
        record
            .blocks()
            .find(|b| b.id == id && b.fork == ForkNumber::Main)
    };
    let fields = Fields {
        record: "HEAP",
        data: record.main_data,
    };
    let opcode = record.header.info & 0x70;
    let mut clears: Vec<(u8, u8)> = Vec::new(); // (block id, bits)
    if record.header.rmid == RM_HEAP_ID {
        match opcode {
            // INSERT: flags at 2, bit 0x01.
            0x00 if fields.u8(2).is_ok_and(|f| f & 0x01 != 0) => {
                clears.push((0, ALL_VISIBLE_AND_FROZEN));
            }
            // DELETE: flags at 7, bit 0x01.
            0x10 if fields.u8(7).is_ok_and(|f| f & 0x01 != 0) => {
                clears.push((0, ALL_VISIBLE_AND_FROZEN));
            }
            // UPDATE / HOT_UPDATE: flags at 7; 0x01 old page (block 1, or 0
            // when the tuple stays on its page), 0x02 new page (block 0).
            0x20 | 0x40 => {
                if let Ok(flags) = fields.u8(7) {
                    if flags & 0x01 != 0 {
                        let old = u8::from(heap_block(1).is_some());
                        clears.push((old, ALL_VISIBLE_AND_FROZEN));
                    }
                    if flags & 0x02 != 0 {
                        clears.push((0, ALL_VISIBLE_AND_FROZEN));
                    }
                }
            }
            // LOCK: flags at 7, bit 0x01 clears all-frozen only.
            0x60 if fields.u8(7).is_ok_and(|f| f & 0x01 != 0) => clears.push((0, ALL_FROZEN)),
            _ => {}
        }
    } else {
        match opcode {
            // MULTI_INSERT: flags at 0, bit 0x01.
            0x50 if fields.u8(0).is_ok_and(|f| f & 0x01 != 0) => {
                clears.push((0, ALL_VISIBLE_AND_FROZEN));
            }
            // LOCK_UPDATED: flags at 7, bit 0x01 clears all-frozen only.
            0x60 if fields.u8(7).is_ok_and(|f| f & 0x01 != 0) => clears.push((0, ALL_FROZEN)),
            _ => {}
        }
    }
    let mut effects: Vec<Effect> = Vec::new();
    for (id, bits) in clears {
        if let Some(block) = heap_block(id) {
            let effect = Effect::VmClear {
                rel: block.rel,
                heap_block: block.block,
                bits,
            };
            if !effects.contains(&effect) {
                effects.push(effect);
            }
        }
    }
    effects
}
