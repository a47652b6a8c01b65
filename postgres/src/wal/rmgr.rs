//! Resource manager ids, and the names `pg_waldump` (Postgres 17) prints for
//! them and for their record types.
//!
//! Owns the built-in rmgr table (`rmgrlist.h`), the numeric names of custom
//! rmgrs whose module is not loaded, and each built-in rmgr's `rm_identify`
//! logic (`rmgrdesc/*desc.c`), including each callback's own way of masking
//! `xl_info`, so that names agree with `pg_waldump` byte for byte.

use std::borrow::Cow;

/// Names of the built-in resource managers, indexed by resource manager id,
/// as `pg_waldump` prints them (the name column of `rmgrlist.h`).
pub const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

// Built-in resource manager ids, in `rmgrlist.h` order.
/// The `XLOG` resource manager.
pub const RM_XLOG_ID: u8 = 0;
/// The `Transaction` resource manager.
pub const RM_XACT_ID: u8 = 1;
/// The `Storage` resource manager.
pub const RM_SMGR_ID: u8 = 2;
/// The `CLOG` resource manager.
pub const RM_CLOG_ID: u8 = 3;
/// The `Database` resource manager.
pub const RM_DBASE_ID: u8 = 4;
/// The `Tablespace` resource manager.
pub const RM_TBLSPC_ID: u8 = 5;
/// The `MultiXact` resource manager.
pub const RM_MULTIXACT_ID: u8 = 6;
/// The `RelMap` resource manager.
pub const RM_RELMAP_ID: u8 = 7;
/// The `Standby` resource manager.
pub const RM_STANDBY_ID: u8 = 8;
/// The `Heap2` resource manager.
pub const RM_HEAP2_ID: u8 = 9;
/// The `Heap` resource manager.
pub const RM_HEAP_ID: u8 = 10;
/// The `Btree` resource manager.
pub const RM_BTREE_ID: u8 = 11;
/// The `Hash` resource manager.
pub const RM_HASH_ID: u8 = 12;
/// The `Gin` resource manager.
pub const RM_GIN_ID: u8 = 13;
/// The `Gist` resource manager.
pub const RM_GIST_ID: u8 = 14;
/// The `Sequence` resource manager.
pub const RM_SEQ_ID: u8 = 15;
/// The `SPGist` resource manager.
pub const RM_SPGIST_ID: u8 = 16;
/// The `BRIN` resource manager.
pub const RM_BRIN_ID: u8 = 17;
/// The `CommitTs` resource manager.
pub const RM_COMMIT_TS_ID: u8 = 18;
/// The `ReplicationOrigin` resource manager.
pub const RM_REPLORIGIN_ID: u8 = 19;
/// The `Generic` resource manager.
pub const RM_GENERIC_ID: u8 = 20;
/// The `LogicalMessage` resource manager.
pub const RM_LOGICALMSG_ID: u8 = 21;

/// First id reserved for resource managers registered by extensions.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// Whether `rmid` names a resource manager Postgres 17 can write
/// (`RmgrIdIsValid`): a built-in one or a custom one.
pub fn rmgr_id_is_valid(rmid: u8) -> bool {
    usize::from(rmid) < RMGR_NAMES.len() || rmid >= RM_MIN_CUSTOM_ID
}

/// Low bits of `xl_info` that belong to the WAL machinery, not the rmgr.
const XLR_INFO_MASK: u8 = 0x0F;

/// The name `pg_waldump` shows for resource manager `rmid`.
///
/// Built-in ids give their `rmgrlist.h` name; custom ids (128..=255) give
/// `customNNN`, as `pg_waldump` names rmgrs it cannot load; ids 22..=127,
/// invalid in Postgres 17, give `invalid(N)`.
pub fn rmgr_name(rmid: u8) -> Cow<'static, str> {
    if let Some(name) = RMGR_NAMES.get(usize::from(rmid)) {
        Cow::Borrowed(name)
    } else if rmid >= RM_MIN_CUSTOM_ID {
        Cow::Owned(format!("custom{rmid:03}"))
    } else {
        Cow::Owned(format!("invalid({rmid})"))
    }
}

/// The record type name the `rm_identify` callback of built-in resource
/// manager `rmid` returns for the full `xl_info` byte `info`.
///
/// `None` where the callback returns `NULL` (an info value it does not know;
/// `pg_waldump` then prints `UNKNOWN`), and for custom or invalid ids, whose
/// callbacks are unknown outside the server that loaded them.
pub fn record_type_name(rmid: u8, info: u8) -> Option<&'static str> {
    match rmid {
        RM_XLOG_ID => xlog_identify(info),
        RM_XACT_ID => xact_identify(info),
        RM_SMGR_ID => smgr_identify(info),
        RM_CLOG_ID => clog_identify(info),
        RM_DBASE_ID => dbase_identify(info),
        RM_TBLSPC_ID => tblspc_identify(info),
        RM_MULTIXACT_ID => multixact_identify(info),
        RM_RELMAP_ID => relmap_identify(info),
        RM_STANDBY_ID => standby_identify(info),
        RM_HEAP2_ID => heap2_identify(info),
        RM_HEAP_ID => heap_identify(info),
        RM_BTREE_ID => btree_identify(info),
        RM_HASH_ID => hash_identify(info),
        RM_GIN_ID => gin_identify(info),
        RM_GIST_ID => gist_identify(info),
        RM_SEQ_ID => seq_identify(info),
        RM_SPGIST_ID => spgist_identify(info),
        RM_BRIN_ID => brin_identify(info),
        RM_COMMIT_TS_ID => commit_ts_identify(info),
        RM_REPLORIGIN_ID => replorigin_identify(info),
        // Generic WAL has a single record type and ignores `info`.
        RM_GENERIC_ID => Some("Generic"),
        RM_LOGICALMSG_ID => logicalmsg_identify(info),
        _ => None,
    }
}

/// `info` without the WAL machinery's low bits, as most callbacks mask it.
const fn rmgr_bits(info: u8) -> u8 {
    info & !XLR_INFO_MASK
}

fn xlog_identify(info: u8) -> Option<&'static str> {
    const CHECKPOINT_SHUTDOWN: u8 = 0x00;
    const CHECKPOINT_ONLINE: u8 = 0x10;
    const NOOP: u8 = 0x20;
    const NEXTOID: u8 = 0x30;
    const SWITCH: u8 = 0x40;
    const BACKUP_END: u8 = 0x50;
    const PARAMETER_CHANGE: u8 = 0x60;
    const RESTORE_POINT: u8 = 0x70;
    const FPW_CHANGE: u8 = 0x80;
    const END_OF_RECOVERY: u8 = 0x90;
    const FPI_FOR_HINT: u8 = 0xA0;
    const FPI: u8 = 0xB0;
    // 0xC0 was used by Postgres 9.5 to 11 and is unknown to 17.
    const OVERWRITE_CONTRECORD: u8 = 0xD0;
    const CHECKPOINT_REDO: u8 = 0xE0;
    Some(match rmgr_bits(info) {
        CHECKPOINT_SHUTDOWN => "CHECKPOINT_SHUTDOWN",
        CHECKPOINT_ONLINE => "CHECKPOINT_ONLINE",
        NOOP => "NOOP",
        NEXTOID => "NEXTOID",
        SWITCH => "SWITCH",
        BACKUP_END => "BACKUP_END",
        PARAMETER_CHANGE => "PARAMETER_CHANGE",
        RESTORE_POINT => "RESTORE_POINT",
        FPW_CHANGE => "FPW_CHANGE",
        END_OF_RECOVERY => "END_OF_RECOVERY",
        OVERWRITE_CONTRECORD => "OVERWRITE_CONTRECORD",
        FPI => "FPI",
        FPI_FOR_HINT => "FPI_FOR_HINT",
        CHECKPOINT_REDO => "CHECKPOINT_REDO",
        _ => return None,
    })
}

fn xact_identify(info: u8) -> Option<&'static str> {
    // Masks away both `XLOG_XACT_HAS_INFO` (0x80) and the low WAL bits.
    const OPMASK: u8 = 0x70;
    const COMMIT: u8 = 0x00;
    const PREPARE: u8 = 0x10;
    const ABORT: u8 = 0x20;
    const COMMIT_PREPARED: u8 = 0x30;
    const ABORT_PREPARED: u8 = 0x40;
    const ASSIGNMENT: u8 = 0x50;
    const INVALIDATIONS: u8 = 0x60;
    Some(match info & OPMASK {
        COMMIT => "COMMIT",
        PREPARE => "PREPARE",
        ABORT => "ABORT",
        COMMIT_PREPARED => "COMMIT_PREPARED",
        ABORT_PREPARED => "ABORT_PREPARED",
        ASSIGNMENT => "ASSIGNMENT",
        // Postgres names this one in the singular.
        INVALIDATIONS => "INVALIDATION",
        _ => return None,
    })
}

fn smgr_identify(info: u8) -> Option<&'static str> {
    const CREATE: u8 = 0x10;
    const TRUNCATE: u8 = 0x20;
    Some(match rmgr_bits(info) {
        CREATE => "CREATE",
        TRUNCATE => "TRUNCATE",
        _ => return None,
    })
}

fn clog_identify(info: u8) -> Option<&'static str> {
    const ZEROPAGE: u8 = 0x00;
    const TRUNCATE: u8 = 0x10;
    Some(match rmgr_bits(info) {
        ZEROPAGE => "ZEROPAGE",
        TRUNCATE => "TRUNCATE",
        _ => return None,
    })
}

fn dbase_identify(info: u8) -> Option<&'static str> {
    const CREATE_FILE_COPY: u8 = 0x00;
    const CREATE_WAL_LOG: u8 = 0x10;
    const DROP: u8 = 0x20;
    Some(match rmgr_bits(info) {
        CREATE_FILE_COPY => "CREATE_FILE_COPY",
        CREATE_WAL_LOG => "CREATE_WAL_LOG",
        DROP => "DROP",
        _ => return None,
    })
}

fn tblspc_identify(info: u8) -> Option<&'static str> {
    const CREATE: u8 = 0x00;
    const DROP: u8 = 0x10;
    Some(match rmgr_bits(info) {
        CREATE => "CREATE",
        DROP => "DROP",
        _ => return None,
    })
}

fn multixact_identify(info: u8) -> Option<&'static str> {
    const ZERO_OFF_PAGE: u8 = 0x00;
    const ZERO_MEM_PAGE: u8 = 0x10;
    const CREATE_ID: u8 = 0x20;
    const TRUNCATE_ID: u8 = 0x30;
    Some(match rmgr_bits(info) {
        ZERO_OFF_PAGE => "ZERO_OFF_PAGE",
        ZERO_MEM_PAGE => "ZERO_MEM_PAGE",
        CREATE_ID => "CREATE_ID",
        TRUNCATE_ID => "TRUNCATE_ID",
        _ => return None,
    })
}

fn relmap_identify(info: u8) -> Option<&'static str> {
    const UPDATE: u8 = 0x00;
    (rmgr_bits(info) == UPDATE).then_some("UPDATE")
}

fn standby_identify(info: u8) -> Option<&'static str> {
    const LOCK: u8 = 0x00;
    const RUNNING_XACTS: u8 = 0x10;
    const INVALIDATIONS: u8 = 0x20;
    Some(match rmgr_bits(info) {
        LOCK => "LOCK",
        RUNNING_XACTS => "RUNNING_XACTS",
        INVALIDATIONS => "INVALIDATIONS",
        _ => return None,
    })
}

/// `XLOG_HEAP_INIT_PAGE`, shared by Heap and Heap2: the record inits its page.
const HEAP_INIT_PAGE: u8 = 0x80;

fn heap2_identify(info: u8) -> Option<&'static str> {
    const REWRITE: u8 = 0x00;
    const PRUNE_ON_ACCESS: u8 = 0x10;
    const PRUNE_VACUUM_SCAN: u8 = 0x20;
    const PRUNE_VACUUM_CLEANUP: u8 = 0x30;
    const VISIBLE: u8 = 0x40;
    const MULTI_INSERT: u8 = 0x50;
    const LOCK_UPDATED: u8 = 0x60;
    const NEW_CID: u8 = 0x70;
    const MULTI_INSERT_INIT: u8 = MULTI_INSERT | HEAP_INIT_PAGE;
    Some(match rmgr_bits(info) {
        PRUNE_ON_ACCESS => "PRUNE_ON_ACCESS",
        PRUNE_VACUUM_SCAN => "PRUNE_VACUUM_SCAN",
        PRUNE_VACUUM_CLEANUP => "PRUNE_VACUUM_CLEANUP",
        VISIBLE => "VISIBLE",
        MULTI_INSERT => "MULTI_INSERT",
        MULTI_INSERT_INIT => "MULTI_INSERT+INIT",
        LOCK_UPDATED => "LOCK_UPDATED",
        NEW_CID => "NEW_CID",
        REWRITE => "REWRITE",
        _ => return None,
    })
}

fn heap_identify(info: u8) -> Option<&'static str> {
    // The init-page flag survives the mask: only these three ops may carry it.
    const INSERT: u8 = 0x00;
    const DELETE: u8 = 0x10;
    const UPDATE: u8 = 0x20;
    const TRUNCATE: u8 = 0x30;
    const HOT_UPDATE: u8 = 0x40;
    const CONFIRM: u8 = 0x50;
    const LOCK: u8 = 0x60;
    const INPLACE: u8 = 0x70;
    const INSERT_INIT: u8 = INSERT | HEAP_INIT_PAGE;
    const UPDATE_INIT: u8 = UPDATE | HEAP_INIT_PAGE;
    const HOT_UPDATE_INIT: u8 = HOT_UPDATE | HEAP_INIT_PAGE;
    Some(match rmgr_bits(info) {
        INSERT => "INSERT",
        INSERT_INIT => "INSERT+INIT",
        DELETE => "DELETE",
        UPDATE => "UPDATE",
        UPDATE_INIT => "UPDATE+INIT",
        HOT_UPDATE => "HOT_UPDATE",
        HOT_UPDATE_INIT => "HOT_UPDATE+INIT",
        TRUNCATE => "TRUNCATE",
        CONFIRM => "HEAP_CONFIRM",
        LOCK => "LOCK",
        INPLACE => "INPLACE",
        _ => return None,
    })
}

fn btree_identify(info: u8) -> Option<&'static str> {
    const INSERT_LEAF: u8 = 0x00;
    const INSERT_UPPER: u8 = 0x10;
    const INSERT_META: u8 = 0x20;
    const SPLIT_L: u8 = 0x30;
    const SPLIT_R: u8 = 0x40;
    const INSERT_POST: u8 = 0x50;
    const DEDUP: u8 = 0x60;
    const DELETE: u8 = 0x70;
    const UNLINK_PAGE: u8 = 0x80;
    const UNLINK_PAGE_META: u8 = 0x90;
    const NEWROOT: u8 = 0xA0;
    const MARK_PAGE_HALFDEAD: u8 = 0xB0;
    const VACUUM: u8 = 0xC0;
    const REUSE_PAGE: u8 = 0xD0;
    const META_CLEANUP: u8 = 0xE0;
    Some(match rmgr_bits(info) {
        INSERT_LEAF => "INSERT_LEAF",
        INSERT_UPPER => "INSERT_UPPER",
        INSERT_META => "INSERT_META",
        SPLIT_L => "SPLIT_L",
        SPLIT_R => "SPLIT_R",
        INSERT_POST => "INSERT_POST",
        DEDUP => "DEDUP",
        VACUUM => "VACUUM",
        DELETE => "DELETE",
        MARK_PAGE_HALFDEAD => "MARK_PAGE_HALFDEAD",
        UNLINK_PAGE => "UNLINK_PAGE",
        UNLINK_PAGE_META => "UNLINK_PAGE_META",
        NEWROOT => "NEWROOT",
        REUSE_PAGE => "REUSE_PAGE",
        META_CLEANUP => "META_CLEANUP",
        _ => return None,
    })
}

fn hash_identify(info: u8) -> Option<&'static str> {
    const INIT_META_PAGE: u8 = 0x00;
    const INIT_BITMAP_PAGE: u8 = 0x10;
    const INSERT: u8 = 0x20;
    const ADD_OVFL_PAGE: u8 = 0x30;
    const SPLIT_ALLOCATE_PAGE: u8 = 0x40;
    const SPLIT_PAGE: u8 = 0x50;
    const SPLIT_COMPLETE: u8 = 0x60;
    const MOVE_PAGE_CONTENTS: u8 = 0x70;
    const SQUEEZE_PAGE: u8 = 0x80;
    const DELETE: u8 = 0x90;
    const SPLIT_CLEANUP: u8 = 0xA0;
    const UPDATE_META_PAGE: u8 = 0xB0;
    const VACUUM_ONE_PAGE: u8 = 0xC0;
    Some(match rmgr_bits(info) {
        INIT_META_PAGE => "INIT_META_PAGE",
        INIT_BITMAP_PAGE => "INIT_BITMAP_PAGE",
        INSERT => "INSERT",
        ADD_OVFL_PAGE => "ADD_OVFL_PAGE",
        SPLIT_ALLOCATE_PAGE => "SPLIT_ALLOCATE_PAGE",
        SPLIT_PAGE => "SPLIT_PAGE",
        SPLIT_COMPLETE => "SPLIT_COMPLETE",
        MOVE_PAGE_CONTENTS => "MOVE_PAGE_CONTENTS",
        SQUEEZE_PAGE => "SQUEEZE_PAGE",
        DELETE => "DELETE",
        SPLIT_CLEANUP => "SPLIT_CLEANUP",
        UPDATE_META_PAGE => "UPDATE_META_PAGE",
        VACUUM_ONE_PAGE => "VACUUM_ONE_PAGE",
        _ => return None,
    })
}

fn gin_identify(info: u8) -> Option<&'static str> {
    const CREATE_PTREE: u8 = 0x10;
    const INSERT: u8 = 0x20;
    const SPLIT: u8 = 0x30;
    const VACUUM_PAGE: u8 = 0x40;
    const DELETE_PAGE: u8 = 0x50;
    const UPDATE_META_PAGE: u8 = 0x60;
    const INSERT_LISTPAGE: u8 = 0x70;
    const DELETE_LISTPAGE: u8 = 0x80;
    const VACUUM_DATA_LEAF_PAGE: u8 = 0x90;
    Some(match rmgr_bits(info) {
        CREATE_PTREE => "CREATE_PTREE",
        INSERT => "INSERT",
        SPLIT => "SPLIT",
        VACUUM_PAGE => "VACUUM_PAGE",
        VACUUM_DATA_LEAF_PAGE => "VACUUM_DATA_LEAF_PAGE",
        DELETE_PAGE => "DELETE_PAGE",
        UPDATE_META_PAGE => "UPDATE_META_PAGE",
        INSERT_LISTPAGE => "INSERT_LISTPAGE",
        DELETE_LISTPAGE => "DELETE_LISTPAGE",
        _ => return None,
    })
}

fn gist_identify(info: u8) -> Option<&'static str> {
    const PAGE_UPDATE: u8 = 0x00;
    const DELETE: u8 = 0x10;
    const PAGE_REUSE: u8 = 0x20;
    const PAGE_SPLIT: u8 = 0x30;
    const PAGE_DELETE: u8 = 0x60;
    const ASSIGN_LSN: u8 = 0x70;
    Some(match rmgr_bits(info) {
        PAGE_UPDATE => "PAGE_UPDATE",
        DELETE => "DELETE",
        PAGE_REUSE => "PAGE_REUSE",
        PAGE_SPLIT => "PAGE_SPLIT",
        PAGE_DELETE => "PAGE_DELETE",
        ASSIGN_LSN => "ASSIGN_LSN",
        _ => return None,
    })
}

fn seq_identify(info: u8) -> Option<&'static str> {
    const LOG: u8 = 0x00;
    (rmgr_bits(info) == LOG).then_some("LOG")
}

fn spgist_identify(info: u8) -> Option<&'static str> {
    const ADD_LEAF: u8 = 0x10;
    const MOVE_LEAFS: u8 = 0x20;
    const ADD_NODE: u8 = 0x30;
    const SPLIT_TUPLE: u8 = 0x40;
    const PICKSPLIT: u8 = 0x50;
    const VACUUM_LEAF: u8 = 0x60;
    const VACUUM_ROOT: u8 = 0x70;
    const VACUUM_REDIRECT: u8 = 0x80;
    Some(match rmgr_bits(info) {
        ADD_LEAF => "ADD_LEAF",
        MOVE_LEAFS => "MOVE_LEAFS",
        ADD_NODE => "ADD_NODE",
        SPLIT_TUPLE => "SPLIT_TUPLE",
        PICKSPLIT => "PICKSPLIT",
        VACUUM_LEAF => "VACUUM_LEAF",
        VACUUM_ROOT => "VACUUM_ROOT",
        VACUUM_REDIRECT => "VACUUM_REDIRECT",
        _ => return None,
    })
}

fn brin_identify(info: u8) -> Option<&'static str> {
    const CREATE_INDEX: u8 = 0x00;
    const INSERT: u8 = 0x10;
    const UPDATE: u8 = 0x20;
    const SAMEPAGE_UPDATE: u8 = 0x30;
    const REVMAP_EXTEND: u8 = 0x40;
    const DESUMMARIZE: u8 = 0x50;
    const INIT_PAGE: u8 = 0x80;
    const INSERT_INIT: u8 = INSERT | INIT_PAGE;
    const UPDATE_INIT: u8 = UPDATE | INIT_PAGE;
    Some(match rmgr_bits(info) {
        CREATE_INDEX => "CREATE_INDEX",
        INSERT => "INSERT",
        INSERT_INIT => "INSERT+INIT",
        UPDATE => "UPDATE",
        UPDATE_INIT => "UPDATE+INIT",
        SAMEPAGE_UPDATE => "SAMEPAGE_UPDATE",
        REVMAP_EXTEND => "REVMAP_EXTEND",
        DESUMMARIZE => "DESUMMARIZE",
        _ => return None,
    })
}

fn commit_ts_identify(info: u8) -> Option<&'static str> {
    // Compares the whole byte: any low WAL bit makes the record unknown.
    const ZEROPAGE: u8 = 0x00;
    const TRUNCATE: u8 = 0x10;
    Some(match info {
        ZEROPAGE => "ZEROPAGE",
        TRUNCATE => "TRUNCATE",
        _ => return None,
    })
}

fn replorigin_identify(info: u8) -> Option<&'static str> {
    // Also compares the whole byte, low WAL bits included.
    const SET: u8 = 0x00;
    const DROP: u8 = 0x10;
    Some(match info {
        SET => "SET",
        DROP => "DROP",
        _ => return None,
    })
}

fn logicalmsg_identify(info: u8) -> Option<&'static str> {
    const MESSAGE: u8 = 0x00;
    (rmgr_bits(info) == MESSAGE).then_some("MESSAGE")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Low WAL bits a record may carry (`XLR_SPECIAL_REL_UPDATE`,
    /// `XLR_CHECK_CONSISTENCY`), which most callbacks ignore.
    const LOW_BITS: u8 = 0x03;
    const XACT_HAS_INFO: u8 = 0x80;

    fn check(rmid: u8, info: u8, expected: Option<&str>) {
        assert_eq!(
            record_type_name(rmid, info),
            expected,
            "rmgr {} ({rmid}), info {info:#04x}",
            rmgr_name(rmid),
        );
    }

    #[test]
    fn record_type_names() {
        let cases: &[(u8, u8, Option<&str>)] = &[
            (RM_XLOG_ID, 0x00, Some("CHECKPOINT_SHUTDOWN")),
            (RM_XLOG_ID, 0x10, Some("CHECKPOINT_ONLINE")),
            (RM_XLOG_ID, 0x40, Some("SWITCH")),
            (RM_XLOG_ID, 0xA0, Some("FPI_FOR_HINT")),
            (RM_XLOG_ID, 0xB0, Some("FPI")),
            (RM_XLOG_ID, 0xB0 | LOW_BITS, Some("FPI")),
            (RM_XLOG_ID, 0xC0, None),
            (RM_XACT_ID, 0x00, Some("COMMIT")),
            (RM_XACT_ID, XACT_HAS_INFO, Some("COMMIT")),
            (RM_XACT_ID, 0x10, Some("PREPARE")),
            (RM_XACT_ID, 0x20, Some("ABORT")),
            (RM_XACT_ID, 0x30, Some("COMMIT_PREPARED")),
            (RM_XACT_ID, 0x40, Some("ABORT_PREPARED")),
            (RM_XACT_ID, 0x50, Some("ASSIGNMENT")),
            (RM_XACT_ID, 0x60, Some("INVALIDATION")),
            (RM_XACT_ID, 0x70, None),
            (RM_SMGR_ID, 0x10, Some("CREATE")),
            (RM_SMGR_ID, 0x20, Some("TRUNCATE")),
            (RM_CLOG_ID, 0x10, Some("TRUNCATE")),
            (RM_DBASE_ID, 0x00, Some("CREATE_FILE_COPY")),
            (RM_DBASE_ID, 0x10, Some("CREATE_WAL_LOG")),
            (RM_TBLSPC_ID, 0x10, Some("DROP")),
            (RM_MULTIXACT_ID, 0x20, Some("CREATE_ID")),
            (RM_RELMAP_ID, 0x00, Some("UPDATE")),
            (RM_STANDBY_ID, 0x00, Some("LOCK")),
            (RM_STANDBY_ID, 0x10, Some("RUNNING_XACTS")),
            (RM_STANDBY_ID, 0x20, Some("INVALIDATIONS")),
            (RM_HEAP2_ID, 0x00, Some("REWRITE")),
            (RM_HEAP2_ID, 0x10, Some("PRUNE_ON_ACCESS")),
            (RM_HEAP2_ID, 0x20, Some("PRUNE_VACUUM_SCAN")),
            (RM_HEAP2_ID, 0x30, Some("PRUNE_VACUUM_CLEANUP")),
            (RM_HEAP2_ID, 0x50, Some("MULTI_INSERT")),
            (RM_HEAP2_ID, 0xD0, Some("MULTI_INSERT+INIT")),
            (RM_HEAP_ID, 0x00, Some("INSERT")),
            (RM_HEAP_ID, 0x80, Some("INSERT+INIT")),
            (RM_HEAP_ID, 0xA0, Some("UPDATE+INIT")),
            (RM_HEAP_ID, 0x40, Some("HOT_UPDATE")),
            (RM_HEAP_ID, 0xC0, Some("HOT_UPDATE+INIT")),
            (RM_HEAP_ID, 0x50, Some("HEAP_CONFIRM")),
            (RM_HEAP_ID, 0x90, None),
            (RM_BTREE_ID, 0x00, Some("INSERT_LEAF")),
            (RM_BTREE_ID, 0xF0, None),
            (RM_HASH_ID, 0xC0, Some("VACUUM_ONE_PAGE")),
            (RM_GIN_ID, 0x90, Some("VACUUM_DATA_LEAF_PAGE")),
            (RM_GIST_ID, 0x40, None),
            (RM_GIST_ID, 0x70, Some("ASSIGN_LSN")),
            (RM_SEQ_ID, 0x00, Some("LOG")),
            (RM_SPGIST_ID, 0x80, Some("VACUUM_REDIRECT")),
            (RM_BRIN_ID, 0x90, Some("INSERT+INIT")),
            (RM_COMMIT_TS_ID, 0x10, Some("TRUNCATE")),
            (RM_COMMIT_TS_ID, 0x10 | LOW_BITS, None),
            (RM_REPLORIGIN_ID, 0x00, Some("SET")),
            (RM_REPLORIGIN_ID, 0x01, None),
            (RM_GENERIC_ID, 0x00, Some("Generic")),
            (RM_GENERIC_ID, 0xFF, Some("Generic")),
            (RM_LOGICALMSG_ID, 0x00, Some("MESSAGE")),
            (22, 0x00, None),
            (RM_MIN_CUSTOM_ID, 0x00, None),
        ];
        for &(rmid, info, expected) in cases {
            check(rmid, info, expected);
        }
    }

    #[test]
    fn rmgr_names() {
        let cases: &[(u8, &str)] = &[
            (RM_XLOG_ID, "XLOG"),
            (RM_XACT_ID, "Transaction"),
            (RM_HEAP2_ID, "Heap2"),
            (RM_HEAP_ID, "Heap"),
            (RM_REPLORIGIN_ID, "ReplicationOrigin"),
            (RM_LOGICALMSG_ID, "LogicalMessage"),
            (RM_MIN_CUSTOM_ID, "custom128"),
            (255, "custom255"),
            (22, "invalid(22)"),
            (127, "invalid(127)"),
        ];
        for &(rmid, expected) in cases {
            assert_eq!(rmgr_name(rmid), expected, "rmid {rmid}");
        }
        for (rmid, name) in (0_u8..).zip(RMGR_NAMES) {
            assert!(matches!(rmgr_name(rmid), Cow::Borrowed(n) if n == name));
        }
    }
}
