//! `pg_waldump`'s record descriptions as the oracle for record effects.
//!
//! For each non-page effect `quire_postgres::wal::effects` extracts, this
//! module renders the text `pg_waldump` prints for the same record (its
//! `rm_desc` output), so a test can check that both read the same fields.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quire_postgres::timestamp::TimestampTz;
use quire_postgres::types::{ForkNumber, RelFileLocator, RelTag, TransactionId};
use quire_postgres::wal::effects::{DbCreateStrategy, Effect, XactStatus};
use quire_postgres::wal::relsize::relsize_payload;

/// Counts of effects by kind, for a test's report and coverage checks.
pub type EffectCounts = BTreeMap<&'static str, usize>;

/// `relpathperm`: where Postgres keeps a relation fork's first segment.
pub fn relpath(tag: RelTag) -> String {
    let base = match tag.spc_oid {
        1664 => format!("global/{}", tag.rel_number),
        1663 => format!("base/{}/{}", tag.db_oid, tag.rel_number),
        spc => format!(
            "pg_tblspc/{spc}/PG_17_202406281/{}/{}",
            tag.db_oid, tag.rel_number
        ),
    };
    match tag.fork {
        ForkNumber::Main => base,
        fork => format!("{base}_{}", fork.name()),
    }
}

fn main_path(rel: RelFileLocator) -> String {
    relpath(RelTag::new(rel, ForkNumber::Main))
}

/// A short name for an effect's kind.
pub fn kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::RelCreate(_) => "rel create",
        Effect::RelTruncate { .. } => "rel truncate",
        Effect::RelDrop(_) => "rel drop",
        Effect::DbCreate { .. } => "db create",
        Effect::DbDrop { .. } => "db drop",
        Effect::RelMapUpdate { .. } => "relmap update",
        Effect::XactStatus {
            status: XactStatus::Committed,
            prepared: false,
            ..
        } => "commit",
        Effect::XactStatus {
            status: XactStatus::Aborted,
            prepared: false,
            ..
        } => "abort",
        Effect::XactStatus {
            status: XactStatus::Committed,
            prepared: true,
            ..
        } => "commit prepared",
        Effect::XactStatus {
            status: XactStatus::Aborted,
            prepared: true,
            ..
        } => "abort prepared",
        Effect::TwoPhasePrepare { .. } => "prepare",
        Effect::MultiXactCreate { .. } => "multixact create",
        Effect::MultiXactTruncate { .. } => "multixact truncate",
        Effect::SlruZeroPage { .. } => "slru zero page",
        Effect::ClogTruncate { .. } => "clog truncate",
        Effect::VmClear { .. } => "vm clear",
        Effect::Checkpoint { .. } => "checkpoint",
        Effect::NextOid(_) => "next oid",
        Effect::RelSizeAtLeast { .. } => "rel size at least",
        Effect::RelSizeMessageMalformed(_) => "rel size message malformed",
    }
}

/// What `pg_waldump`'s description must show for an effect.
enum Expect {
    /// The description starts with this.
    Prefix(String),
    /// The description contains this.
    Contains(String),
    /// The description does not contain this.
    Absent(&'static str),
}

/// Checks `effect` against the description `pg_waldump` printed for its
/// record (`desc` is the text after `desc: `); `Err` says what differs.
pub fn check_against_desc(effect: &Effect, desc: &str) -> Result<(), String> {
    // The description proper follows the record type name.
    let text = desc.split_once(' ').map_or("", |(_, rest)| rest).trim_end();
    for expect in expectations(effect) {
        let ok = match &expect {
            Expect::Prefix(prefix) => text.starts_with(prefix.as_str()),
            Expect::Contains(part) => text.contains(part.as_str()),
            Expect::Absent(part) => !text.contains(part),
        };
        if !ok {
            let what = match expect {
                Expect::Prefix(prefix) => format!("expected {prefix:?} at the start"),
                Expect::Contains(part) => format!("expected {part:?}"),
                Expect::Absent(part) => format!("expected no {part:?}"),
            };
            return Err(format!("{what} in {text:?}"));
        }
    }
    Ok(())
}

fn expectations(effect: &Effect) -> Vec<Expect> {
    use Expect::{Contains, Prefix};
    match effect {
        Effect::RelCreate(tag) => vec![Prefix(relpath(*tag))],
        Effect::RelTruncate {
            rel,
            blocks,
            main,
            vm,
            fsm,
        } => {
            let flags = u8::from(*main) | (u8::from(*vm) << 1) | (u8::from(*fsm) << 2);
            vec![Prefix(format!(
                "{} to {blocks} blocks flags {flags}",
                main_path(*rel)
            ))]
        }
        Effect::RelDrop(rels) => {
            let paths: Vec<String> = rels.iter().map(|rel| main_path(*rel)).collect();
            vec![Contains(format!("; rels: {}", paths.join(" ")))]
        }
        Effect::XactStatus {
            xid,
            subxacts,
            prepared,
            time,
            ..
        } => xact_expectations(*xid, subxacts, *prepared, *time),
        Effect::DbCreate {
            db_oid,
            spc_oid,
            strategy: DbCreateStrategy::WalLog,
        } => {
            vec![Prefix(format!("create dir {spc_oid}/{db_oid}"))]
        }
        Effect::DbCreate {
            db_oid,
            spc_oid,
            strategy:
                DbCreateStrategy::FileCopy {
                    src_db_oid,
                    src_spc_oid,
                },
        } => {
            vec![Prefix(format!(
                "copy dir {src_spc_oid}/{src_db_oid} to {spc_oid}/{db_oid}"
            ))]
        }
        Effect::DbDrop { db_oid, spc_oids } => {
            let dirs: Vec<String> = spc_oids
                .iter()
                .map(|spc| format!(" {spc}/{db_oid}"))
                .collect();
            vec![Prefix(format!("dir{}", dirs.join("")))]
        }
        Effect::RelMapUpdate {
            db_oid,
            spc_oid,
            file,
        } => {
            vec![Prefix(format!(
                "database {db_oid} tablespace {spc_oid} size {}",
                file.len()
            ))]
        }
        Effect::TwoPhasePrepare { .. } => vec![Prefix("gid ".to_owned())],
        Effect::MultiXactCreate {
            mid,
            offset,
            members,
        } => multixact_expectations(mid.0, *offset, members),
        Effect::MultiXactTruncate {
            start_multi,
            end_multi,
            start_offset,
            end_offset,
            ..
        } => vec![Prefix(format!(
            "offsets [{start_multi}, {end_multi}), members [{start_offset}, {end_offset})"
        ))],
        Effect::SlruZeroPage {
            slru: quire_postgres::key::SlruKind::Clog,
            page,
        } => {
            vec![Prefix(format!("page {page}"))]
        }
        Effect::SlruZeroPage { page, .. } => vec![Prefix(page.to_string())],
        Effect::ClogTruncate {
            page, oldest_xid, ..
        } => {
            vec![Prefix(format!("page {page}; oldestXact {}", oldest_xid.0))]
        }
        Effect::Checkpoint { checkpoint, .. } => {
            vec![Prefix(format!("redo {}", checkpoint.redo_lsn()))]
        }
        Effect::NextOid(oid) => vec![Prefix(oid.to_string())],
        Effect::RelSizeAtLeast { .. } | Effect::RelSizeMessageMalformed(_) => {
            relsize_expectations(effect)
        }
        // pg_waldump does not describe these on their own; the redo oracle checks them.
        Effect::VmClear { .. } => Vec::new(),
    }
}

/// `pg_waldump` prints a logical message's flag and prefix, then its
/// payload in hex.
fn relsize_expectations(effect: &Effect) -> Vec<Expect> {
    let Effect::RelSizeAtLeast { rel, blocks } = effect else {
        return vec![Expect::Contains(", prefix \"quire.relsize\"; ".to_owned())];
    };
    let payload: Vec<String> = relsize_payload(*rel, *blocks)
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    vec![Expect::Prefix(format!(
        "non-transactional, prefix \"quire.relsize\"; payload (20 bytes): {}",
        payload.join(" ")
    ))]
}

/// `pg_waldump` run with `TZ=UTC` prints `xact_time` as
/// `2026-12-01 19:57:31.123456 UTC`, after the prepared xid if any.
fn xact_expectations(
    xid: TransactionId,
    subxacts: &[TransactionId],
    prepared: bool,
    time: TimestampTz,
) -> Vec<Expect> {
    let rfc3339 = time.to_string();
    let shown = format!(
        "{} UTC",
        rfc3339.replacen('T', " ", 1).trim_end_matches('Z')
    );
    let mut expect = Vec::new();
    if prepared {
        expect.push(Expect::Prefix(format!("{}: {shown}", xid.0)));
    } else {
        expect.push(Expect::Prefix(shown));
    }
    if subxacts.is_empty() {
        expect.push(Expect::Absent("; subxacts:"));
    } else {
        let xids: Vec<String> = subxacts.iter().map(|x| x.0.to_string()).collect();
        expect.push(Expect::Contains(format!("; subxacts: {}", xids.join(" "))));
    }
    expect
}

fn multixact_expectations(mid: u32, offset: u32, members: &[(TransactionId, u32)]) -> Vec<Expect> {
    let names = ["keysh", "sh", "fornokeyupd", "forupd", "nokeyupd", "upd"];
    let mut listed = String::new();
    for (xid, status) in members {
        let name = usize::try_from(*status)
            .ok()
            .and_then(|s| names.get(s))
            .unwrap_or(&"unk");
        let _ = write!(listed, "{} ({name}) ", xid.0);
    }
    let full = format!("{mid} offset {offset} nmembers {}: {listed}", members.len());
    vec![Expect::Prefix(full.trim_end().to_owned())]
}
