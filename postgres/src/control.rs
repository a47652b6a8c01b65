//! `global/pg_control` and the `CheckPoint` struct of checkpoint records.
//!
//! Both are fixed C structs written in native (little-endian) byte order.
//! They are declared here as `#[repr(C)]` structs of byte-order-explicit,
//! alignment-1 fields with the compiler's padding spelled out, so their
//! layout is checked at compile time against the offsets Postgres 17 uses
//! (`const` assertions below) and read and written without copying field by
//! field.
//!
//! `pg_control` is 8192 bytes: `ControlFileData` (296 bytes, CRC-32C over
//! bytes 0..288 stored at 288) followed by zeros.

use std::mem::{offset_of, size_of};

use zerocopy::little_endian::{F64, I64, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::lsn::Lsn;
use crate::types::{BLCKSZ, RELSEG_SIZE, XLOG_BLCKSZ, is_valid_wal_segment_size};

/// `PG_CONTROL_VERSION` of Postgres 17.
pub const PG_CONTROL_VERSION: u32 = 1700;
/// `CATALOG_VERSION_NO` of Postgres 17.
pub const CATALOG_VERSION_NO: u32 = 202_406_281;
/// `PG_CONTROL_FILE_SIZE`.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// `FLOATFORMAT_VALUE`: lets Postgres check the float format.
pub const FLOAT_FORMAT_VALUE: f64 = 1_234_567.0;

/// `DBState`: what `pg_control` says about how the cluster stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DbState {
    /// `DB_STARTUP`.
    Startup = 0,
    /// `DB_SHUTDOWNED`: cleanly shut down; no recovery needed.
    Shutdowned = 1,
    /// `DB_SHUTDOWNED_IN_RECOVERY`.
    ShutdownedInRecovery = 2,
    /// `DB_SHUTDOWNING`.
    Shutdowning = 3,
    /// `DB_IN_CRASH_RECOVERY`.
    InCrashRecovery = 4,
    /// `DB_IN_ARCHIVE_RECOVERY`.
    InArchiveRecovery = 5,
    /// `DB_IN_PRODUCTION`.
    InProduction = 6,
}

/// The `CheckPoint` struct: the state a checkpoint record carries and
/// `pg_control` copies (88 bytes).
#[derive(
    Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CheckPoint {
    /// `redo`: where replay must start.
    pub redo: U64,
    /// `ThisTimeLineID`.
    pub this_timeline: U32,
    /// `PrevTimeLineID`.
    pub prev_timeline: U32,
    /// `fullPageWrites`.
    pub full_page_writes: u8,
    /// Padding.
    pub pad1: [u8; 3],
    /// `wal_level`: 0 minimal, 1 replica, 2 logical.
    pub wal_level: U32,
    /// `nextXid`: a `FullTransactionId` (epoch in the high 32 bits).
    pub next_xid: U64,
    /// `nextOid`.
    pub next_oid: U32,
    /// `nextMulti`.
    pub next_multi: U32,
    /// `nextMultiOffset`.
    pub next_multi_offset: U32,
    /// `oldestXid`.
    pub oldest_xid: U32,
    /// `oldestXidDB`.
    pub oldest_xid_db: U32,
    /// `oldestMulti`.
    pub oldest_multi: U32,
    /// `oldestMultiDB`.
    pub oldest_multi_db: U32,
    /// Padding.
    pub pad2: [u8; 4],
    /// `time`: Unix seconds.
    pub time: I64,
    /// `oldestCommitTsXid`.
    pub oldest_commit_ts_xid: U32,
    /// `newestCommitTsXid`.
    pub newest_commit_ts_xid: U32,
    /// `oldestActiveXid`.
    pub oldest_active_xid: U32,
    /// Trailing padding.
    pub pad3: [u8; 4],
}

const _: () = assert!(size_of::<CheckPoint>() == 88);
const _: () = assert!(offset_of!(CheckPoint, wal_level) == 20);
const _: () = assert!(offset_of!(CheckPoint, next_xid) == 24);
const _: () = assert!(offset_of!(CheckPoint, oldest_multi_db) == 56);
const _: () = assert!(offset_of!(CheckPoint, time) == 64);
const _: () = assert!(offset_of!(CheckPoint, oldest_active_xid) == 80);

impl CheckPoint {
    /// A checkpoint with every field zero, to fill in.
    pub fn zeroed() -> CheckPoint {
        <CheckPoint as FromZeros>::new_zeroed()
    }

    /// `redo` as an LSN.
    pub fn redo_lsn(&self) -> Lsn {
        Lsn(self.redo.get())
    }
}

/// `ControlFileData` (296 bytes; the file is zero-padded to 8192).
#[derive(
    Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ControlFileData {
    /// `system_identifier`.
    pub system_identifier: U64,
    /// `pg_control_version`.
    pub pg_control_version: U32,
    /// `catalog_version_no`.
    pub catalog_version_no: U32,
    /// `state` ([`DbState`]).
    pub state: U32,
    /// Padding.
    pub pad1: [u8; 4],
    /// `time`: last update, Unix seconds.
    pub time: I64,
    /// `checkPoint`: LSN of the last checkpoint record.
    pub checkpoint: U64,
    /// `checkPointCopy`.
    pub checkpoint_copy: CheckPoint,
    /// `unloggedLSN`.
    pub unlogged_lsn: U64,
    /// `minRecoveryPoint`.
    pub min_recovery_point: U64,
    /// `minRecoveryPointTLI`.
    pub min_recovery_point_tli: U32,
    /// Padding.
    pub pad2: [u8; 4],
    /// `backupStartPoint`.
    pub backup_start_point: U64,
    /// `backupEndPoint`.
    pub backup_end_point: U64,
    /// `backupEndRequired`.
    pub backup_end_required: u8,
    /// Padding.
    pub pad3: [u8; 3],
    /// `wal_level`.
    pub wal_level: U32,
    /// `wal_log_hints`.
    pub wal_log_hints: u8,
    /// Padding.
    pub pad4: [u8; 3],
    /// `MaxConnections`.
    pub max_connections: U32,
    /// `max_worker_processes`.
    pub max_worker_processes: U32,
    /// `max_wal_senders`.
    pub max_wal_senders: U32,
    /// `max_prepared_xacts`.
    pub max_prepared_xacts: U32,
    /// `max_locks_per_xact`.
    pub max_locks_per_xact: U32,
    /// `track_commit_timestamp`.
    pub track_commit_timestamp: u8,
    /// Padding.
    pub pad5: [u8; 3],
    /// `maxAlign`.
    pub max_align: U32,
    /// `floatFormat`.
    pub float_format: F64,
    /// `blcksz`.
    pub blcksz: U32,
    /// `relseg_size`.
    pub relseg_size: U32,
    /// `xlog_blcksz`.
    pub xlog_blcksz: U32,
    /// `xlog_seg_size`.
    pub xlog_seg_size: U32,
    /// `nameDataLen`.
    pub name_data_len: U32,
    /// `indexMaxKeys`.
    pub index_max_keys: U32,
    /// `toast_max_chunk_size`.
    pub toast_max_chunk_size: U32,
    /// `loblksize`.
    pub loblksize: U32,
    /// `float8ByVal`.
    pub float8_by_val: u8,
    /// Padding.
    pub pad6: [u8; 3],
    /// `data_checksum_version`: 0 off, 1 on.
    pub data_checksum_version: U32,
    /// `mock_authentication_nonce`.
    pub mock_authentication_nonce: [u8; 32],
    /// `crc`: CRC-32C of bytes 0..288.
    pub crc: U32,
    /// Trailing padding.
    pub pad7: [u8; 4],
}

const _: () = assert!(size_of::<ControlFileData>() == 296);
const _: () = assert!(offset_of!(ControlFileData, checkpoint) == 32);
const _: () = assert!(offset_of!(ControlFileData, checkpoint_copy) == 40);
const _: () = assert!(offset_of!(ControlFileData, unlogged_lsn) == 128);
const _: () = assert!(offset_of!(ControlFileData, wal_level) == 172);
const _: () = assert!(offset_of!(ControlFileData, max_align) == 204);
const _: () = assert!(offset_of!(ControlFileData, float_format) == 208);
const _: () = assert!(offset_of!(ControlFileData, data_checksum_version) == 252);
const _: () = assert!(offset_of!(ControlFileData, mock_authentication_nonce) == 256);
const _: () = assert!(offset_of!(ControlFileData, crc) == CONTROL_CRC_OFFSET);

/// Where the CRC sits: it covers every byte before it.
const CONTROL_CRC_OFFSET: usize = 288;

/// What is wrong with a `pg_control` file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlFileError {
    /// Fewer bytes than the struct.
    #[error("pg_control is {0} bytes, shorter than the 296-byte struct")]
    TooShort(usize),
    /// The CRC does not match.
    #[error("pg_control checksum {stored:#010x} does not match its contents ({computed:#010x})")]
    BadChecksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// Not Postgres 17's layout or catalog.
    #[error(
        "pg_control version {control} / catalog {catalog} is not Postgres 17's (1700 / 202406281)"
    )]
    WrongVersion {
        /// `pg_control_version`.
        control: u32,
        /// `catalog_version_no`.
        catalog: u32,
    },
    /// A compile-time constant differs from this build's.
    #[error("pg_control was written by an incompatible build: {0}")]
    Incompatible(&'static str),
    /// `xlog_seg_size` is not a size Postgres accepts (a power of two from
    /// 1 MiB to 1 GiB), as its own `ReadControlFile` refuses it.
    #[error("pg_control's WAL segment size {0} is not a power of two from 1 MiB to 1 GiB")]
    InvalidSegmentSize(u32),
}

impl ControlFileData {
    /// Parses and checks a `pg_control` file.
    pub fn decode(bytes: &[u8]) -> Result<ControlFileData, ControlFileError> {
        let (control, _) = ControlFileData::read_from_prefix(bytes)
            .map_err(|_| ControlFileError::TooShort(bytes.len()))?;
        let computed = quire_checksum::crc32c(&bytes[..CONTROL_CRC_OFFSET]);
        if computed != control.crc.get() {
            return Err(ControlFileError::BadChecksum {
                stored: control.crc.get(),
                computed,
            });
        }
        if control.pg_control_version.get() != PG_CONTROL_VERSION
            || control.catalog_version_no.get() != CATALOG_VERSION_NO
        {
            return Err(ControlFileError::WrongVersion {
                control: control.pg_control_version.get(),
                catalog: control.catalog_version_no.get(),
            });
        }
        if control.blcksz.get() as usize != BLCKSZ || control.xlog_blcksz.get() != XLOG_BLCKSZ {
            return Err(ControlFileError::Incompatible("block size"));
        }
        if control.relseg_size.get() != RELSEG_SIZE {
            return Err(ControlFileError::Incompatible(
                "segment size of relation files",
            ));
        }
        if control.max_align.get() != 8 || control.float_format.get() != FLOAT_FORMAT_VALUE {
            return Err(ControlFileError::Incompatible("alignment or float format"));
        }
        if !is_valid_wal_segment_size(control.xlog_seg_size.get()) {
            return Err(ControlFileError::InvalidSegmentSize(
                control.xlog_seg_size.get(),
            ));
        }
        Ok(control)
    }

    /// The 8192-byte file, with its CRC computed.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; PG_CONTROL_FILE_SIZE];
        bytes[..size_of::<ControlFileData>()].copy_from_slice(self.as_bytes());
        let crc = quire_checksum::crc32c(&bytes[..CONTROL_CRC_OFFSET]);
        bytes[CONTROL_CRC_OFFSET..CONTROL_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The latest checkpoint's LSN.
    pub fn checkpoint_lsn(&self) -> Lsn {
        Lsn(self.checkpoint.get())
    }

    /// The fields a Postgres 17 build of this layout writes and
    /// [`ControlFileData::decode`] checks, everything else zero: a start
    /// for tests and tools that write a `pg_control` of their own.
    pub fn template(segment_size: u32) -> ControlFileData {
        let mut control = <ControlFileData as FromZeros>::new_zeroed();
        control.pg_control_version = U32::new(PG_CONTROL_VERSION);
        control.catalog_version_no = U32::new(CATALOG_VERSION_NO);
        control.blcksz = U32::new(u32::try_from(BLCKSZ).unwrap_or(u32::MAX));
        control.xlog_blcksz = U32::new(XLOG_BLCKSZ);
        control.relseg_size = U32::new(RELSEG_SIZE);
        control.max_align = U32::new(8);
        control.float_format = F64::new(FLOAT_FORMAT_VALUE);
        control.xlog_seg_size = U32::new(segment_size);
        control
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_size_postgres_refuses_is_refused() {
        let good = ControlFileData::template(16 << 20);
        assert_eq!(
            ControlFileData::decode(&good.encode()).map(|c| c.xlog_seg_size.get()),
            Ok(16 << 20)
        );
        for size in [0, 1, 3 << 20, 2 << 30] {
            let bad = ControlFileData::template(size);
            assert_eq!(
                ControlFileData::decode(&bad.encode()).map(|c| c.xlog_seg_size.get()),
                Err(ControlFileError::InvalidSegmentSize(size))
            );
        }
    }
}
