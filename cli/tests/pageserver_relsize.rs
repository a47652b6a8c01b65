//! The compute's relation-size messages (`quire.relsize` logical messages,
//! `docs/format/keys.md`) through a real primary and `quire pageserver`.
//!
//! A primary with data checksums, followed through a slot, emits with
//! `pg_logical_emit_message` a message raising a table's size past its
//! last block, one lowering it, malformed ones (a short payload, fork 4,
//! non-zero padding, a transactional message), one naming a fork that does
//! not exist and one of another prefix. Decoded from the primary's WAL
//! files, they are the effects expected, each agreeing with what
//! `pg_waldump` prints for its record. Over the page protocol, `Nblocks`
//! shows the raised size, the blocks between the old and the new size are
//! zero pages (no checksum set on them) while the table's own blocks carry
//! theirs, a block past the raised size and the missing fork are
//! `NotFound`; the pageserver's log names the ignored messages.

mod pageserver_support;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_bounded};
use quire_net::id::ShardIdentity;
use quire_net::page_protocol::{ServerMessage, ServiceError};
use quire_postgres::checksum::{page_checksum, page_is_new};
use quire_postgres::types::{BLCKSZ, ForkNumber, RelTag};
use quire_postgres::wal::effects::{Effect, record_effects};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::relsize::{RelSizeMalformed, relsize_payload};
use quire_postgres::wal::rmgr::RM_LOGICALMSG_ID;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_tests::effects_oracle::check_against_desc;
use quire_tests::waldump_oracle::{pg_waldump_descs, wal_segments};
use quire_tests::{assert_log_clean, pg_install};

use pageserver_support::primary::{follow_primary, insert_lsn, rel_path, wait_ingested};
use pageserver_support::{PageConn, Pageserver, get_page, hello, nblocks};

const SLOT: &str = "quire_relsize";

/// Blocks the message adds past the table's end.
const GAP: u32 = 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// `SELECT pg_logical_emit_message(...)` of `payload`.
fn emit(transactional: bool, prefix: &str, payload: &[u8]) -> String {
    format!(
        "SELECT pg_logical_emit_message({transactional}, '{prefix}', '\\x{}'::bytea);\n",
        hex(payload)
    )
}

/// Every effect of a logical message record in `pg`'s WAL, each checked
/// against `pg_waldump`'s description of its record.
fn logical_message_effects(pg: &PgCluster) -> Result<Vec<Effect>> {
    let segments = wal_segments(&pg.datadir())?;
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        bail!("no WAL segments");
    };
    let dumped = run_bounded(
        Command::new(pg.install().bin("pg_waldump"))
            .args(["--rmgr", "LogicalMessage"])
            .arg(first)
            .arg(last),
        Duration::from_secs(60),
    )?;
    let descs = pg_waldump_descs(&String::from_utf8_lossy(&dumped.stdout))?;
    let header = read_segment_header(&std::fs::read(first)?)?;
    let mut decoder = WalStreamDecoder::new(header.start, header.segment_size);
    let mut found = Vec::new();
    'segments: for path in &segments {
        decoder.feed_owned(std::fs::read(path)?);
        loop {
            let record = match decoder.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(_) => break 'segments,
            };
            let parsed = decode_record(record.bytes)?;
            if parsed.header.rmid != RM_LOGICALMSG_ID {
                continue;
            }
            let desc = descs
                .get(&record.start.to_string())
                .with_context(|| format!("pg_waldump shows no message at {}", record.start))?;
            for effect in record_effects(&parsed)? {
                check_against_desc(&effect, desc)
                    .map_err(|what| anyhow::anyhow!("record {}: {what}", record.start))?;
                println!("{}: {effect:?} (pg_waldump: {desc})", record.start);
                found.push(effect);
            }
        }
    }
    Ok(found)
}

/// The messages' script and the effects it must decode to: a raise of
/// `rel` (of `blocks` blocks) by [`GAP`], a lowering, four malformed
/// messages, one for `missing`, one of another prefix.
fn messages(rel: RelTag, blocks: u32, missing: RelTag) -> (String, Vec<Effect>) {
    let raised = blocks + GAP;
    let good = relsize_payload(rel, raised);
    let mut bad_fork = good;
    bad_fork[12] = 4;
    let mut bad_padding = good;
    bad_padding[14] = 7;
    let script = [
        emit(false, "quire.relsize", &good),
        emit(false, "quire.relsize", &relsize_payload(rel, blocks - 5)),
        emit(false, "quire.relsize", &good[..19]),
        emit(false, "quire.relsize", &bad_fork),
        emit(false, "quire.relsize", &bad_padding),
        emit(true, "quire.relsize", &relsize_payload(rel, raised + 40)),
        emit(false, "quire.relsize", &relsize_payload(missing, 8)),
        emit(false, "quire.other", &relsize_payload(rel, raised + 40)),
    ]
    .concat();
    let relsize = |rel, blocks| Effect::RelSizeAtLeast { rel, blocks };
    let malformed = Effect::RelSizeMessageMalformed;
    let effects = vec![
        relsize(rel, raised),
        relsize(rel, blocks - 5),
        malformed(RelSizeMalformed::Length {
            declared: 19,
            present: 19,
        }),
        malformed(RelSizeMalformed::Fork(4)),
        malformed(RelSizeMalformed::Padding([0, 7, 0])),
        malformed(RelSizeMalformed::Transactional),
        relsize(missing, 8),
    ];
    (script, effects)
}

/// Every served page of `rel` (raised to `blocks + GAP`): a page the
/// primary's `file` holds is initialised with its checksum, any other
/// (new in the file, or in the raised gap) is zeros.
fn check_served(conn: &mut PageConn, rel: RelTag, blocks: u32, file: &[u8]) -> Result<()> {
    let raised = blocks + GAP;
    let served = conn.nblocks(rel)?;
    ensure!(served == raised, "Nblocks of r: {served}, not {raised}");
    let pages = conn.all_pages(rel)?;
    let mut new_in_file = 0;
    for (block, page) in (0u32..).zip(&pages) {
        let page: &[u8; BLCKSZ] = page.as_slice().try_into()?;
        let on_disk = file.get(block as usize * BLCKSZ..(block as usize + 1) * BLCKSZ);
        if on_disk.is_some_and(|p| p.iter().any(|&b| b != 0)) {
            let stored = u16::from_le_bytes([page[8], page[9]]);
            ensure!(
                !page_is_new(page) && stored == page_checksum(page, block),
                "block {block} of r: not an initialised page with its checksum"
            );
        } else {
            new_in_file += u32::from(block < blocks);
            ensure!(
                page.iter().all(|&b| b == 0),
                "block {block} of r (past the WAL's end of the table) is not a zero page"
            );
        }
    }
    println!(
        "r: {blocks} blocks ({new_in_file} of them new in the file), {GAP} zero pages up to the \
         raised size {raised}, read by GetPage and GetPages"
    );
    conn.call_refused(&get_page(rel, raised)?, ServiceError::NotFound)?;
    match conn.call(get_page(rel, blocks + 3)?)? {
        ServerMessage::Response(_) => Ok(()),
        other => bail!("GetPage in the gap: {other:?}"),
    }
}

/// The pageserver's log names the four malformed messages and the one for
/// a missing fork.
fn check_log(server: &Pageserver) -> Result<()> {
    let log = server.log_text();
    let count = |what: &str| {
        log.lines()
            .filter(|l| l.contains("relation-size message") && l.contains(what))
            .count()
    };
    let (malformed, missing) = (count("is malformed"), count("does not have"));
    ensure!(
        malformed == 4 && missing == 1,
        "the log names {malformed} malformed messages and {missing} missing forks:\n{log}"
    );
    Ok(())
}

#[test]
fn a_relation_size_message_raises_the_size_the_page_service_answers() -> Result<()> {
    let root = tempfile::tempdir()?;
    let mut server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "1"])?;
    let options = PgClusterOptions::default()
        .initdb_arg("--data-checksums")
        .setting("wal_keep_size", "'1GB'")
        .setting("autovacuum", "off");
    let mut pg = PgCluster::create(&pg_install()?, options)?;
    let timeline = follow_primary(&server, &mut pg, &root.path().join("base"), SLOT)?;

    pg.psql(
        "postgres",
        "CREATE TABLE r AS SELECT g, repeat('r', 60) AS pad FROM generate_series(1, 2000) g",
    )?;
    let db: u32 = pg
        .psql(
            "postgres",
            "SELECT oid FROM pg_database WHERE datname = 'postgres'",
        )?
        .trim()
        .parse()?;
    let (node, path) = rel_path(&pg, "r")?;
    let blocks: u32 = pg
        .psql("postgres", "SELECT pg_relation_size('r') / 8192")?
        .trim()
        .parse()?;
    ensure!(blocks > 10, "r has {blocks} blocks");
    let rel = RelTag {
        spc_oid: 1663,
        db_oid: db,
        rel_number: node,
        fork: ForkNumber::Main,
    };
    let missing = RelTag {
        rel_number: 4_000_000,
        ..rel
    };
    let (script, expected) = messages(rel, blocks, missing);
    pg.psql_script("postgres", &script)?;
    let emitted = insert_lsn(&pg)?;
    pg.stop()?;
    assert_log_clean(
        &pg,
        &[
            "the database system is shutting down",
            "terminating connection due to administrator command",
        ],
    )?;
    wait_ingested(&server, &timeline, emitted)?;

    // What the primary wrote, decoded from its files, as pg_waldump sees it.
    let found = logical_message_effects(&pg)?;
    ensure!(
        found == expected,
        "the messages' effects are {found:?}, not {expected:?}"
    );
    // Bulk extension leaves the table's last pages new (zero) with no WAL
    // naming them: the pageserver knows of them only from the message.
    let file = std::fs::read(pg.datadir().join(&path)).with_context(|| format!("read {path}"))?;
    ensure!(
        file.len() == blocks as usize * BLCKSZ,
        "{path} has {} bytes, not {blocks} blocks",
        file.len()
    );
    let mut conn = PageConn::ready(
        server.page,
        &hello(
            timeline.tenant,
            timeline.timeline,
            ShardIdentity::unsharded(),
            "",
        ),
    )?;
    check_served(&mut conn, rel, blocks, &file)?;
    conn.call_refused(&nblocks(missing)?, ServiceError::NotFound)?;
    check_log(&server)?;
    server.check_alive()
}
