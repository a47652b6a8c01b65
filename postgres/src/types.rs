//! Postgres 17's identifiers and compile-time constants, as Quire uses them.

use std::fmt;

/// `BLCKSZ`: the size of a relation page and of a WAL page.
pub const BLCKSZ: usize = 8192;
/// `XLOG_BLCKSZ`: the size of a WAL page.
pub const XLOG_BLCKSZ: u32 = 8192;
/// `DEFAULT_XLOG_SEG_SIZE`; a cluster's real segment size is in its long page
/// headers and `pg_control` (a power of two from 1 MiB to 1 GiB).
pub const DEFAULT_WAL_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// The smallest and largest WAL segment sizes initdb accepts.
pub const WAL_SEGMENT_SIZE_MIN: u32 = 1024 * 1024;
/// See [`WAL_SEGMENT_SIZE_MIN`].
pub const WAL_SEGMENT_SIZE_MAX: u32 = 1024 * 1024 * 1024;

/// Whether `size` is a WAL segment size Postgres accepts
/// (`IsValidWalSegSize`: a power of two from 1 MiB to 1 GiB). Every segment
/// size read from outside (a wire message, a control file, `pg_control`)
/// is checked with this before anything divides by it.
pub fn is_valid_wal_segment_size(size: u32) -> bool {
    size.is_power_of_two() && (WAL_SEGMENT_SIZE_MIN..=WAL_SEGMENT_SIZE_MAX).contains(&size)
}
/// `MAXIMUM_ALIGNOF` on every 64-bit platform Postgres supports.
pub const MAXALIGN: u64 = 8;
/// `RELSEG_SIZE`: blocks per relation segment file (1 GiB of 8 KiB pages).
pub const RELSEG_SIZE: u32 = 131_072;

/// An object id (`Oid`).
pub type Oid = u32;
/// A tablespace, database or relation file number.
pub type RelFileNumber = u32;
/// A WAL timeline (`TimeLineID`).
pub type TimeLineId = u32;

/// `GLOBALTABLESPACE_OID`: shared catalogs.
pub const GLOBAL_TABLESPACE_OID: Oid = 1664;
/// `DEFAULTTABLESPACE_OID`: `pg_default`.
pub const DEFAULT_TABLESPACE_OID: Oid = 1663;

/// A block number inside one fork of a relation (`BlockNumber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockNo(pub u32);

impl BlockNo {
    /// `InvalidBlockNumber`.
    pub const INVALID: BlockNo = BlockNo(u32::MAX);
    /// `MaxBlockNumber`: the largest block a relation fork can hold.
    pub const MAX: BlockNo = BlockNo(u32::MAX - 1);
}

impl fmt::Display for BlockNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 32-bit transaction id (`TransactionId`), compared modulo 2^32 by Postgres.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionId(pub u32);

impl TransactionId {
    /// `InvalidTransactionId`.
    pub const INVALID: TransactionId = TransactionId(0);
    /// `FirstNormalTransactionId`.
    pub const FIRST_NORMAL: TransactionId = TransactionId(3);
}

/// A multixact id (`MultiXactId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MultiXactId(pub u32);

/// An offset into the multixact members SLRU (`MultiXactOffset`).
pub type MultiXactOffset = u32;

/// A relation fork (`ForkNumber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ForkNumber {
    /// The relation's data.
    Main = 0,
    /// Free space map.
    Fsm = 1,
    /// Visibility map.
    VisibilityMap = 2,
    /// The init fork of an unlogged relation.
    Init = 3,
}

impl ForkNumber {
    /// The fork with Postgres' number `n`, if there is one.
    pub fn from_u8(n: u8) -> Option<ForkNumber> {
        match n {
            0 => Some(ForkNumber::Main),
            1 => Some(ForkNumber::Fsm),
            2 => Some(ForkNumber::VisibilityMap),
            3 => Some(ForkNumber::Init),
            _ => None,
        }
    }

    /// The name Postgres gives the fork (`forkNames[]`).
    pub fn name(self) -> &'static str {
        match self {
            ForkNumber::Main => "main",
            ForkNumber::Fsm => "fsm",
            ForkNumber::VisibilityMap => "vm",
            ForkNumber::Init => "init",
        }
    }
}

/// A relation's physical identity (`RelFileLocator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelFileLocator {
    /// Tablespace.
    pub spc_oid: Oid,
    /// Database (0 for shared relations).
    pub db_oid: Oid,
    /// Relation file number.
    pub rel_number: RelFileNumber,
}

/// One fork of one relation: what a storage request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelTag {
    /// Tablespace.
    pub spc_oid: Oid,
    /// Database (0 for shared relations).
    pub db_oid: Oid,
    /// Relation file number.
    pub rel_number: RelFileNumber,
    /// Fork.
    pub fork: ForkNumber,
}

impl RelTag {
    /// The fork `fork` of relation `locator`.
    pub fn new(locator: RelFileLocator, fork: ForkNumber) -> RelTag {
        RelTag {
            spc_oid: locator.spc_oid,
            db_oid: locator.db_oid,
            rel_number: locator.rel_number,
            fork,
        }
    }

    /// The relation this fork belongs to.
    pub fn locator(self) -> RelFileLocator {
        RelFileLocator {
            spc_oid: self.spc_oid,
            db_oid: self.db_oid,
            rel_number: self.rel_number,
        }
    }
}

impl fmt::Display for RelTag {
    /// `spc/db/rel.fork`, with the fork as its number (as `quire waldump` prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}.{}",
            self.spc_oid, self.db_oid, self.rel_number, self.fork as u8
        )
    }
}
