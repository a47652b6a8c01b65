//! The storage key space: one fixed-width key for everything the pageserver
//! stores about a cluster. Specified in `docs/format/keys.md`.
//!
//! A key is 18 bytes: a kind byte and five fields. Encoded big-endian, byte
//! order is key order, so layer files compare keys with `memcmp`; the derived
//! `Ord` of [`Key`] is the same order. A relation fork's blocks and its size
//! share a prefix and the size sorts right after the last possible block.

use std::fmt;

use crate::types::{BlockNo, ForkNumber, Oid, RelTag};

/// The encoded size of a key.
pub const KEY_SIZE: usize = 18;

/// Kind bytes, in key order.
pub mod kind {
    /// A relation block (field 5 the block) or, with field 5 = `u32::MAX`, its fork's size.
    pub const RELATION: u8 = 0x00;
    /// The set of relations of one database (fields 1, 2: tablespace, database).
    pub const REL_DIRECTORY: u8 = 0x01;
    /// The set of databases.
    pub const DB_DIRECTORY: u8 = 0x02;
    /// A relmapper file `pg_filenode.map` (fields 1, 2: tablespace, database).
    pub const REL_MAP: u8 = 0x03;
    /// An SLRU block (field 1 the SLRU, 2 the segment, 5 the block) or a segment's size.
    pub const SLRU: u8 = 0x04;
    /// The set of segments of one SLRU (field 1).
    pub const SLRU_DIRECTORY: u8 = 0x05;
    /// The set of prepared transactions.
    pub const TWOPHASE_DIRECTORY: u8 = 0x06;
    /// A `pg_twophase` state file (fields 1, 2: epoch and xid).
    pub const TWOPHASE_FILE: u8 = 0x07;
    /// `global/pg_control`.
    pub const CONTROL_FILE: u8 = 0x08;
    /// The last checkpoint record's `CheckPoint` struct.
    pub const CHECKPOINT: u8 = 0x09;
    /// The last commit's `xact_time`, one version per commit: the index
    /// that turns a timestamp into an LSN.
    pub const COMMIT_TIME: u8 = 0x0A;
}

/// The SLRUs the pageserver keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum SlruKind {
    /// `pg_xact`: commit status of each transaction.
    Clog = 0,
    /// `pg_multixact/offsets`.
    MultiXactOffsets = 1,
    /// `pg_multixact/members`.
    MultiXactMembers = 2,
}

impl SlruKind {
    /// The directory Postgres keeps this SLRU in.
    pub fn directory(self) -> &'static str {
        match self {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
        }
    }

    fn from_u32(n: u32) -> Option<SlruKind> {
        match n {
            0 => Some(SlruKind::Clog),
            1 => Some(SlruKind::MultiXactOffsets),
            2 => Some(SlruKind::MultiXactMembers),
            _ => None,
        }
    }
}

/// The field-5 value that turns a block key into a size key.
const SIZE_MARKER: u32 = u32::MAX;

/// A storage key. Fields are named by position; the constructors and
/// [`Key::describe`] give them meaning per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The kind byte ([`kind`]).
    pub kind: u8,
    /// Field 1.
    pub field1: u32,
    /// Field 2.
    pub field2: u32,
    /// Field 3.
    pub field3: u32,
    /// Field 4.
    pub field4: u8,
    /// Field 5.
    pub field5: u32,
}

/// What a key names, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A block of a relation fork.
    RelBlock(RelTag, BlockNo),
    /// The size in blocks of a relation fork.
    RelSize(RelTag),
    /// The relations of a database.
    RelDirectory {
        /// Tablespace.
        spc_oid: Oid,
        /// Database.
        db_oid: Oid,
    },
    /// The databases.
    DbDirectory,
    /// A relmapper file.
    RelMap {
        /// Tablespace.
        spc_oid: Oid,
        /// Database (0 with the global tablespace: the shared map).
        db_oid: Oid,
    },
    /// A block of an SLRU segment.
    SlruBlock(SlruKind, u32, u32),
    /// The size in blocks of an SLRU segment.
    SlruSegmentSize(SlruKind, u32),
    /// The segments of an SLRU.
    SlruDirectory(SlruKind),
    /// The prepared transactions.
    TwoPhaseDirectory,
    /// A prepared transaction's state file.
    TwoPhaseFile {
        /// The xid's epoch.
        epoch: u32,
        /// The xid.
        xid: u32,
    },
    /// `pg_control`.
    ControlFile,
    /// The last checkpoint.
    Checkpoint,
    /// The last commit's time.
    CommitTime,
}

/// Bytes that are not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {bytes:02x?}: {what}")]
pub struct InvalidKey {
    /// The encoded key.
    pub bytes: [u8; KEY_SIZE],
    /// What is wrong.
    pub what: &'static str,
}

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key {
        kind: 0,
        field1: 0,
        field2: 0,
        field3: 0,
        field4: 0,
        field5: 0,
    };
    /// The largest key.
    pub const MAX: Key = Key {
        kind: u8::MAX,
        field1: u32::MAX,
        field2: u32::MAX,
        field3: u32::MAX,
        field4: u8::MAX,
        field5: u32::MAX,
    };

    fn of(kind: u8, field1: u32, field2: u32, field3: u32, field4: u8, field5: u32) -> Key {
        Key {
            kind,
            field1,
            field2,
            field3,
            field4,
            field5,
        }
    }

    /// Block `block` of `rel`. `block` must not be `InvalidBlockNumber`:
    /// a block number from outside (WAL, a file, a request) goes through
    /// [`Key::try_rel_block`].
    pub fn rel_block(rel: RelTag, block: BlockNo) -> Key {
        assert!(
            block != BlockNo::INVALID,
            "InvalidBlockNumber is not a block"
        );
        Key::rel_block_unchecked(rel, block)
    }

    /// Block `block` of `rel`, or an error when `block` is
    /// `InvalidBlockNumber` (0xFFFFFFFF: its key would be the fork's size
    /// key); every block up to `MaxBlockNumber` (0xFFFFFFFE) has one.
    pub fn try_rel_block(rel: RelTag, block: BlockNo) -> Result<Key, InvalidKey> {
        let key = Key::rel_block_unchecked(rel, block);
        if block == BlockNo::INVALID {
            return Err(InvalidKey {
                bytes: key.to_bytes(),
                what: "block number is InvalidBlockNumber",
            });
        }
        Ok(key)
    }

    fn rel_block_unchecked(rel: RelTag, block: BlockNo) -> Key {
        Key::of(
            kind::RELATION,
            rel.spc_oid,
            rel.db_oid,
            rel.rel_number,
            rel.fork as u8,
            block.0,
        )
    }

    /// The size of `rel`: sorts right after its last possible block.
    pub fn rel_size(rel: RelTag) -> Key {
        Key::of(
            kind::RELATION,
            rel.spc_oid,
            rel.db_oid,
            rel.rel_number,
            rel.fork as u8,
            SIZE_MARKER,
        )
    }

    /// Whether this is a fork's size key ([`Key::rel_size`]).
    pub fn is_rel_size(&self) -> bool {
        self.kind == kind::RELATION && self.field5 == SIZE_MARKER
    }

    /// The relations of database `db_oid` in tablespace `spc_oid`.
    pub fn rel_directory(spc_oid: Oid, db_oid: Oid) -> Key {
        Key::of(kind::REL_DIRECTORY, spc_oid, db_oid, 0, 0, 0)
    }

    /// The databases.
    pub fn db_directory() -> Key {
        Key::of(kind::DB_DIRECTORY, 0, 0, 0, 0, 0)
    }

    /// The relmapper file of a database (or the shared one: global tablespace, database 0).
    pub fn rel_map(spc_oid: Oid, db_oid: Oid) -> Key {
        Key::of(kind::REL_MAP, spc_oid, db_oid, 0, 0, 0)
    }

    /// Block `block` of segment `segment` of an SLRU (`block` below
    /// `u32::MAX`; from outside, through [`Key::try_slru_block`]).
    pub fn slru_block(slru: SlruKind, segment: u32, block: u32) -> Key {
        assert!(block != SIZE_MARKER, "u32::MAX is the segment-size marker");
        Key::of(kind::SLRU, slru as u32, segment, 0, 0, block)
    }

    /// Block `block` of segment `segment` of an SLRU, or an error when
    /// `block` is `u32::MAX` (the segment-size marker).
    pub fn try_slru_block(slru: SlruKind, segment: u32, block: u32) -> Result<Key, InvalidKey> {
        let key = Key::of(kind::SLRU, slru as u32, segment, 0, 0, block);
        if block == SIZE_MARKER {
            return Err(InvalidKey {
                bytes: key.to_bytes(),
                what: "SLRU block number is the segment-size marker",
            });
        }
        Ok(key)
    }

    /// The size of segment `segment` of an SLRU.
    pub fn slru_segment_size(slru: SlruKind, segment: u32) -> Key {
        Key::of(kind::SLRU, slru as u32, segment, 0, 0, SIZE_MARKER)
    }

    /// The segments of an SLRU.
    pub fn slru_directory(slru: SlruKind) -> Key {
        Key::of(kind::SLRU_DIRECTORY, slru as u32, 0, 0, 0, 0)
    }

    /// The prepared transactions.
    pub fn twophase_directory() -> Key {
        Key::of(kind::TWOPHASE_DIRECTORY, 0, 0, 0, 0, 0)
    }

    /// The state file of prepared transaction `xid` of epoch `epoch`.
    pub fn twophase_file(epoch: u32, xid: u32) -> Key {
        Key::of(kind::TWOPHASE_FILE, epoch, xid, 0, 0, 0)
    }

    /// `pg_control`.
    pub fn control_file() -> Key {
        Key::of(kind::CONTROL_FILE, 0, 0, 0, 0, 0)
    }

    /// The last checkpoint.
    pub fn checkpoint() -> Key {
        Key::of(kind::CHECKPOINT, 0, 0, 0, 0, 0)
    }

    /// The last commit's time.
    pub fn commit_time() -> Key {
        Key::of(kind::COMMIT_TIME, 0, 0, 0, 0, 0)
    }

    /// The key right after this one, or `None` for [`Key::MAX`].
    pub fn next(self) -> Option<Key> {
        let mut bytes = self.to_bytes();
        for byte in bytes.iter_mut().rev() {
            if *byte == u8::MAX {
                *byte = 0;
            } else {
                *byte += 1;
                return Some(Key::from_bytes_unchecked(bytes));
            }
        }
        None
    }

    /// The big-endian encoding; byte order is key order.
    pub fn to_bytes(self) -> [u8; KEY_SIZE] {
        let mut bytes = [0u8; KEY_SIZE];
        bytes[0] = self.kind;
        bytes[1..5].copy_from_slice(&self.field1.to_be_bytes());
        bytes[5..9].copy_from_slice(&self.field2.to_be_bytes());
        bytes[9..13].copy_from_slice(&self.field3.to_be_bytes());
        bytes[13] = self.field4;
        bytes[14..18].copy_from_slice(&self.field5.to_be_bytes());
        bytes
    }

    /// Decodes an encoding field by field without checking that it names
    /// anything: for range bounds such as an exclusive end or [`Key::MAX`].
    pub fn from_bytes_unchecked(bytes: [u8; KEY_SIZE]) -> Key {
        let field = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Key::of(bytes[0], field(1), field(5), field(9), bytes[13], field(14))
    }

    /// Decodes and validates an encoded key.
    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Result<Key, InvalidKey> {
        let key = Key::from_bytes_unchecked(bytes);
        key.describe()
            .map(|_| key)
            .map_err(|what| InvalidKey { bytes, what })
    }

    /// What this key names, or why it names nothing.
    pub fn describe(&self) -> Result<KeyKind, &'static str> {
        let zero_tail = |from_field: u8| -> Result<(), &'static str> {
            let tail_zero = match from_field {
                2 => self.field2 == 0 && self.field3 == 0 && self.field4 == 0 && self.field5 == 0,
                3 => self.field3 == 0 && self.field4 == 0 && self.field5 == 0,
                _ => {
                    self.field1 == 0
                        && self.field2 == 0
                        && self.field3 == 0
                        && self.field4 == 0
                        && self.field5 == 0
                }
            };
            if tail_zero {
                Ok(())
            } else {
                Err("unused fields are not zero")
            }
        };
        match self.kind {
            kind::RELATION => {
                let fork = ForkNumber::from_u8(self.field4).ok_or("invalid fork number")?;
                let rel = RelTag {
                    spc_oid: self.field1,
                    db_oid: self.field2,
                    rel_number: self.field3,
                    fork,
                };
                if self.field5 == SIZE_MARKER {
                    Ok(KeyKind::RelSize(rel))
                } else {
                    Ok(KeyKind::RelBlock(rel, BlockNo(self.field5)))
                }
            }
            kind::REL_DIRECTORY => {
                zero_tail(3)?;
                Ok(KeyKind::RelDirectory {
                    spc_oid: self.field1,
                    db_oid: self.field2,
                })
            }
            kind::DB_DIRECTORY => zero_tail(1).map(|()| KeyKind::DbDirectory),
            kind::REL_MAP => {
                zero_tail(3)?;
                Ok(KeyKind::RelMap {
                    spc_oid: self.field1,
                    db_oid: self.field2,
                })
            }
            kind::SLRU => {
                let slru = SlruKind::from_u32(self.field1).ok_or("invalid SLRU")?;
                if self.field3 != 0 || self.field4 != 0 {
                    return Err("unused fields are not zero");
                }
                if self.field5 == SIZE_MARKER {
                    Ok(KeyKind::SlruSegmentSize(slru, self.field2))
                } else {
                    Ok(KeyKind::SlruBlock(slru, self.field2, self.field5))
                }
            }
            kind::SLRU_DIRECTORY => {
                let slru = SlruKind::from_u32(self.field1).ok_or("invalid SLRU")?;
                zero_tail(2)?;
                Ok(KeyKind::SlruDirectory(slru))
            }
            kind::TWOPHASE_DIRECTORY => zero_tail(1).map(|()| KeyKind::TwoPhaseDirectory),
            kind::TWOPHASE_FILE => {
                zero_tail(3)?;
                Ok(KeyKind::TwoPhaseFile {
                    epoch: self.field1,
                    xid: self.field2,
                })
            }
            kind::CONTROL_FILE => zero_tail(1).map(|()| KeyKind::ControlFile),
            kind::CHECKPOINT => zero_tail(1).map(|()| KeyKind::Checkpoint),
            kind::COMMIT_TIME => zero_tail(1).map(|()| KeyKind::CommitTime),
            _ => Err("unknown kind"),
        }
    }

    /// Whether this is a relation block key (the keys striped across shards).
    pub fn is_rel_block(&self) -> bool {
        matches!(self.describe(), Ok(KeyKind::RelBlock(..)))
    }

    /// The shard (of `shard_count`) that owns this key when relation blocks
    /// are striped in runs of `stripe_blocks`: a relation block goes to
    /// `(hash(relation) + block / stripe_blocks) % shard_count`; every other
    /// key, relation sizes included, belongs to shard 0.
    pub fn shard(&self, shard_count: u32, stripe_blocks: u32) -> u32 {
        if shard_count <= 1 || !self.is_rel_block() {
            return 0;
        }
        let mut identity = [0u8; 12];
        identity[0..4].copy_from_slice(&self.field1.to_le_bytes());
        identity[4..8].copy_from_slice(&self.field2.to_le_bytes());
        identity[8..12].copy_from_slice(&self.field3.to_le_bytes());
        let relation_hash = quire_checksum::crc32c(&identity);
        let stripe = self.field5 / stripe_blocks.max(1);
        relation_hash.wrapping_add(stripe) % shard_count
    }
}

impl fmt::Display for Key {
    /// The 36 hex digits of the encoding, grouped by field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02X}.{:08X}.{:08X}.{:08X}.{:02X}.{:08X}",
            self.kind, self.field1, self.field2, self.field3, self.field4, self.field5
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(rel_number: u32, fork: ForkNumber) -> RelTag {
        RelTag {
            spc_oid: 1663,
            db_oid: 5,
            rel_number,
            fork,
        }
    }

    #[test]
    fn encoding_round_trips_and_orders_like_the_struct() {
        let keys = [
            Key::rel_block(rel(16384, ForkNumber::Main), BlockNo(0)),
            Key::rel_block(rel(16384, ForkNumber::Main), BlockNo::MAX),
            Key::rel_size(rel(16384, ForkNumber::Main)),
            Key::rel_block(rel(16384, ForkNumber::Fsm), BlockNo(2)),
            Key::rel_size(rel(16385, ForkNumber::Main)),
            Key::rel_directory(1663, 5),
            Key::db_directory(),
            Key::rel_map(1664, 0),
            Key::slru_block(SlruKind::Clog, 0, 3),
            Key::slru_segment_size(SlruKind::Clog, 0),
            Key::slru_directory(SlruKind::MultiXactMembers),
            Key::twophase_directory(),
            Key::twophase_file(0, 745),
            Key::control_file(),
            Key::checkpoint(),
            Key::commit_time(),
        ];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
            assert!(pair[0].to_bytes() < pair[1].to_bytes());
        }
        for key in keys {
            assert_eq!(Key::from_bytes(key.to_bytes()), Ok(key));
        }
    }

    #[test]
    fn a_forks_size_sorts_right_after_its_blocks() {
        let main = rel(16384, ForkNumber::Main);
        assert_eq!(
            Key::rel_block(main, BlockNo::MAX).next(),
            Some(Key::rel_size(main))
        );
        assert_eq!(Key::rel_size(main).describe(), Ok(KeyKind::RelSize(main)));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let mut bytes = Key::rel_block(rel(1, ForkNumber::Main), BlockNo(1)).to_bytes();
        bytes[13] = 9;
        assert_eq!(
            Key::from_bytes(bytes).map_err(|e| e.what),
            Err("invalid fork number")
        );
        let mut bytes = Key::db_directory().to_bytes();
        bytes[17] = 1;
        assert!(Key::from_bytes(bytes).is_err());
        let mut bytes = Key::checkpoint().to_bytes();
        bytes[0] = 0x7f;
        assert_eq!(
            Key::from_bytes(bytes).map_err(|e| e.what),
            Err("unknown kind")
        );
        assert_eq!(Key::MAX.next(), None);
    }

    #[test]
    fn fallible_constructors_refuse_the_markers_only() {
        let main = rel(16384, ForkNumber::Main);
        assert_eq!(
            Key::try_rel_block(main, BlockNo::MAX),
            Ok(Key::rel_block(main, BlockNo::MAX))
        );
        let invalid = Key::try_rel_block(main, BlockNo::INVALID).map_err(|e| e.what);
        assert_eq!(invalid, Err("block number is InvalidBlockNumber"));
        assert_eq!(
            Key::try_slru_block(SlruKind::Clog, 7, 31),
            Ok(Key::slru_block(SlruKind::Clog, 7, 31))
        );
        assert!(Key::try_slru_block(SlruKind::Clog, 7, u32::MAX).is_err());
    }

    #[test]
    fn relation_blocks_stripe_across_shards_and_metadata_stays_on_shard_0() {
        let main = rel(16384, ForkNumber::Main);
        let shards: Vec<u32> = (0..64)
            .map(|stripe| Key::rel_block(main, BlockNo(stripe * 256)).shard(4, 256))
            .collect();
        for pair in shards.windows(2) {
            assert_eq!(
                pair[1],
                (pair[0] + 1) % 4,
                "consecutive stripes go to consecutive shards"
            );
        }
        assert_eq!(
            Key::rel_block(main, BlockNo(1)).shard(4, 256),
            Key::rel_block(main, BlockNo(255)).shard(4, 256)
        );
        assert_eq!(Key::rel_size(main).shard(4, 256), 0);
        assert_eq!(Key::db_directory().shard(4, 256), 0);
        assert_eq!(Key::rel_block(main, BlockNo(7)).shard(1, 256), 0);
    }
}
