//! What ingest stores for redo: the encoding of `Value::Record` bytes.
//!
//! A stored record is either a whole Postgres WAL record, replayed by a
//! `--wal-redo` process, or one of the small changes Quire applies in Rust
//! (`pg_xact` status bits, multixact offsets and members, visibility-map
//! bits). The first byte says which; all integers are little-endian.
//! docs/format/layers.md ("Values the engine gives meaning to") lists them.

use quire_postgres::Lsn;
use quire_postgres::types::TransactionId;

const TAG_POSTGRES: u8 = 1;
const TAG_CLOG_SET: u8 = 2;
const TAG_MULTIXACT_OFFSETS: u8 = 3;
const TAG_MULTIXACT_MEMBERS: u8 = 4;
const TAG_VM_CLEAR: u8 = 5;
const TAG_VM_TRUNCATE: u8 = 6;
const TAG_VM_CLEAR_LOGGED: u8 = 7;

/// A record kept for redo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedoRecord<'a> {
    /// A WAL record for Postgres' redo routines.
    Postgres {
        /// Where the record starts.
        start: Lsn,
        /// Where it ends (the LSN redo stamps on the page).
        end: Lsn,
        /// The whole record, header included.
        record: &'a [u8],
    },
    /// Set the `pg_xact` status (2 bits) of transactions on one CLOG page.
    ClogSetStatus {
        /// 1 committed, 2 aborted (`TRANSACTION_STATUS_*`).
        status: u8,
        /// Transactions whose status lives on this page.
        xids: Vec<TransactionId>,
    },
    /// Set multixact offset entries on one offsets page: `(multixact, offset)`.
    MultiXactOffsets(Vec<(u32, u32)>),
    /// Set members on one members page: `(member offset, xid, status)`.
    MultiXactMembers(Vec<(u32, TransactionId, u8)>),
    /// Clear visibility-map bits of heap blocks on one map page.
    VmClear {
        /// Heap blocks whose bits are cleared.
        heap_blocks: Vec<u32>,
        /// Bits to clear (0x01 all-visible, 0x02 all-frozen).
        bits: u8,
    },
    /// Clear visibility-map bits of heap blocks on a map page that the WAL
    /// record names (17.x logs map clears): as redo does, the page LSN
    /// becomes `lsn` if any bit changed.
    VmClearLogged {
        /// The record's end (rounded up to 8 bytes).
        lsn: Lsn,
        /// Heap blocks whose bits are cleared, all on this map page.
        heap_blocks: Vec<u32>,
        /// Bits to clear (0x03 both, or 0x02 all-frozen alone).
        bits: u8,
    },
    /// The map page that a relation truncated to `heap_blocks` ends in: clear
    /// every bit from that heap block on (`visibilitymap_prepare_truncate`).
    VmTruncate {
        /// The heap's new size in blocks.
        heap_blocks: u32,
    },
}

/// Stored record bytes that do not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored redo record does not decode: {0}")]
pub struct BadRedoRecord(pub &'static str);

impl RedoRecord<'_> {
    /// Whether Postgres (not Rust) applies this record.
    pub fn is_postgres(&self) -> bool {
        matches!(self, RedoRecord::Postgres { .. })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RedoRecord::Postgres { start, end, record } => {
                out.reserve(17 + record.len());
                out.push(TAG_POSTGRES);
                out.extend_from_slice(&start.0.to_le_bytes());
                out.extend_from_slice(&end.0.to_le_bytes());
                out.extend_from_slice(record);
            }
            RedoRecord::ClogSetStatus { status, xids } => {
                out.push(TAG_CLOG_SET);
                out.push(*status);
                for xid in xids {
                    out.extend_from_slice(&xid.0.to_le_bytes());
                }
            }
            RedoRecord::MultiXactOffsets(entries) => {
                out.push(TAG_MULTIXACT_OFFSETS);
                for (mid, offset) in entries {
                    out.extend_from_slice(&mid.to_le_bytes());
                    out.extend_from_slice(&offset.to_le_bytes());
                }
            }
            RedoRecord::MultiXactMembers(members) => {
                out.push(TAG_MULTIXACT_MEMBERS);
                for (offset, xid, status) in members {
                    out.extend_from_slice(&offset.to_le_bytes());
                    out.extend_from_slice(&xid.0.to_le_bytes());
                    out.push(*status);
                }
            }
            RedoRecord::VmClear { heap_blocks, bits } => {
                out.push(TAG_VM_CLEAR);
                out.push(*bits);
                for block in heap_blocks {
                    out.extend_from_slice(&block.to_le_bytes());
                }
            }
            RedoRecord::VmClearLogged {
                lsn,
                heap_blocks,
                bits,
            } => {
                out.push(TAG_VM_CLEAR_LOGGED);
                out.extend_from_slice(&lsn.0.to_le_bytes());
                out.push(*bits);
                for block in heap_blocks {
                    out.extend_from_slice(&block.to_le_bytes());
                }
            }
            RedoRecord::VmTruncate { heap_blocks } => {
                out.push(TAG_VM_TRUNCATE);
                out.extend_from_slice(&heap_blocks.to_le_bytes());
            }
        }
        out
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> Result<RedoRecord<'_>, BadRedoRecord> {
        let (&tag, body) = bytes.split_first().ok_or(BadRedoRecord("empty"))?;
        match tag {
            TAG_POSTGRES => {
                if body.len() < 16 {
                    return Err(BadRedoRecord("Postgres record shorter than its LSNs"));
                }
                Ok(RedoRecord::Postgres {
                    start: Lsn(u64_at(body, 0)),
                    end: Lsn(u64_at(body, 8)),
                    record: &body[16..],
                })
            }
            TAG_CLOG_SET => {
                let (&status, xids) = body.split_first().ok_or(BadRedoRecord("no status"))?;
                Ok(RedoRecord::ClogSetStatus {
                    status,
                    xids: chunks(xids, 4, "xid list")?
                        .map(|c| TransactionId(u32_at(c, 0)))
                        .collect(),
                })
            }
            TAG_MULTIXACT_OFFSETS => Ok(RedoRecord::MultiXactOffsets(
                chunks(body, 8, "offset list")?
                    .map(|c| (u32_at(c, 0), u32_at(c, 4)))
                    .collect(),
            )),
            TAG_MULTIXACT_MEMBERS => Ok(RedoRecord::MultiXactMembers(
                chunks(body, 9, "member list")?
                    .map(|c| (u32_at(c, 0), TransactionId(u32_at(c, 4)), c[8]))
                    .collect(),
            )),
            TAG_VM_CLEAR => {
                let (&bits, blocks) = body.split_first().ok_or(BadRedoRecord("no bits"))?;
                Ok(RedoRecord::VmClear {
                    heap_blocks: chunks(blocks, 4, "block list")?
                        .map(|c| u32_at(c, 0))
                        .collect(),
                    bits,
                })
            }
            TAG_VM_CLEAR_LOGGED => {
                if body.len() < 9 {
                    return Err(BadRedoRecord(
                        "logged map clear shorter than its LSN and bits",
                    ));
                }
                Ok(RedoRecord::VmClearLogged {
                    lsn: Lsn(u64_at(body, 0)),
                    bits: body[8],
                    heap_blocks: chunks(&body[9..], 4, "block list")?
                        .map(|c| u32_at(c, 0))
                        .collect(),
                })
            }
            TAG_VM_TRUNCATE => {
                if body.len() != 4 {
                    return Err(BadRedoRecord("map truncation is not 4 bytes"));
                }
                Ok(RedoRecord::VmTruncate {
                    heap_blocks: u32_at(body, 0),
                })
            }
            _ => Err(BadRedoRecord("unknown tag")),
        }
    }
}

fn chunks<'a>(
    bytes: &'a [u8],
    size: usize,
    what: &'static str,
) -> Result<std::slice::ChunksExact<'a, u8>, BadRedoRecord> {
    if bytes.len().is_multiple_of(size) {
        Ok(bytes.chunks_exact(size))
    } else {
        Err(BadRedoRecord(what))
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(buf)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let wal = [7u8; 40];
        let records = [
            RedoRecord::Postgres {
                start: Lsn(0x10),
                end: Lsn(0x40),
                record: &wal,
            },
            RedoRecord::ClogSetStatus {
                status: 1,
                xids: vec![TransactionId(3), TransactionId(900)],
            },
            RedoRecord::MultiXactOffsets(vec![(1, 1), (2, 3)]),
            RedoRecord::MultiXactMembers(vec![(1, TransactionId(5), 2)]),
            RedoRecord::VmClear {
                heap_blocks: vec![4, 5],
                bits: 3,
            },
            RedoRecord::VmTruncate { heap_blocks: 77 },
            RedoRecord::VmClearLogged {
                lsn: Lsn(0x1_2345_6788),
                heap_blocks: vec![3, 32_671],
                bits: 0x02,
            },
        ];
        for record in records {
            let bytes = record.encode();
            assert_eq!(RedoRecord::decode(&bytes), Ok(record));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &[][..],
            &[0][..],
            &[9, 1][..],
            &[2, 1, 0, 0][..],
            &[6, 1][..],
            &[1, 0][..],
        ] {
            assert!(RedoRecord::decode(bad).is_err(), "{bad:?}");
        }
    }
}
