//! Blocks a truncation cut off stay cut when their fork grows back
//! (`pageserver/src/ingest/cut.rs`), through a real primary and `quire
//! pageserver`.
//!
//! Two tables of about 100 blocks lose the rows of their tail, and VACUUM
//! truncates them (`XLOG_SMGR_TRUNCATE`, with the FSM and VM). Then `t`'s
//! size is raised again by a `quire.relsize` message, and `u` grows back by
//! WAL: a COPY extends it in bulk, leaving pages no WAL names, the
//! primary crashes (forgetting those pages' free space) and a row finds no
//! page with room but the last (`XLOG_HEAP_INIT_PAGE`), past them. Over the page protocol, every block
//! between the cut and the new size that no WAL wrote since is a zero page
//! (as the primary's own file has it, read with `pageinspect`), before and
//! after a SIGKILL and restart of the pageserver; at an LSN before the
//! truncation the same blocks are the old pages, rows and all.

mod pageserver_support;

use std::fmt::Write as _;

use anyhow::{Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_net::id::ShardIdentity;
use quire_net::page_protocol::{ReadLsn, Request, RequestLsn, Response, ServerMessage};
use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};
use quire_postgres::wal::relsize::relsize_payload;
use quire_tests::{assert_log_clean, pg_install};

use pageserver_support::primary::{follow_primary, insert_lsn, rel_path, wait_ingested};
use pageserver_support::{Imported, PageConn, Pageserver, hello};

const SLOT: &str = "quire_truncate";

/// Blocks `t`'s size message adds past its cut.
const GAP: u32 = 20;

/// Rows of about 530 bytes: 15 to a page, so 1,500 rows fill 100 pages.
const ROWS: u32 = 1500;
/// The rows kept: the first 40 pages.
const KEPT_ROWS: u32 = 600;

fn main_fork(db: u32, rel_number: u32) -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: db,
        rel_number,
        fork: ForkNumber::Main,
    }
}

/// A number the primary prints.
fn number(pg: &PgCluster, sql: &str) -> Result<u32> {
    Ok(pg.psql("postgres", sql)?.trim().parse()?)
}

/// `relation`'s size in blocks on the primary.
fn primary_blocks(pg: &PgCluster, relation: &str) -> Result<u32> {
    number(
        pg,
        &format!("SELECT pg_relation_size('{relation}') / {BLCKSZ}"),
    )
}

/// The blocks of `relation` in `range` that are new (all zeros) in the
/// primary's own buffers or file.
fn primary_zero_pages(
    pg: &PgCluster,
    relation: &str,
    range: std::ops::Range<u32>,
) -> Result<Vec<u32>> {
    if range.is_empty() {
        return Ok(Vec::new());
    }
    let listed = pg.psql(
        "postgres",
        &format!(
            "SELECT b FROM generate_series({}, {}) b \
             WHERE get_raw_page('{relation}', b::int) = decode(repeat('00', {BLCKSZ}), 'hex') ORDER BY b",
            range.start,
            range.end - 1
        ),
    )?;
    listed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(l.trim().parse()?))
        .collect()
}

/// Block `block` of `rel` read at `lsn`.
fn page_at(conn: &mut PageConn, rel: RelTag, block: u32, lsn: Lsn) -> Result<Vec<u8>> {
    let request = Request::GetPage {
        lsn: ReadLsn::new(RequestLsn::At(lsn), lsn)?,
        rel,
        block: BlockNo(block),
    };
    match conn.call(request)? {
        ServerMessage::Response(Response::GetPage { page, .. }) => Ok(page.to_vec()),
        other => anyhow::bail!("GetPage of block {block} of {rel} at {lsn}: {other:?}"),
    }
}

/// Line pointers on a heap page (from `pd_lower`).
fn line_pointers(page: &[u8]) -> usize {
    let lower = usize::from(u16::from_le_bytes([page[12], page[13]]));
    lower.saturating_sub(24) / 4
}

/// What one table must look like.
struct Expect {
    name: &'static str,
    rel: RelTag,
    /// Its size before the truncation, and after it.
    before: u32,
    cut: u32,
    /// The size the pageserver must answer now.
    size: u32,
    /// Blocks at or above `cut` that must be zero pages.
    zero: Vec<u32>,
}

/// Checks `expect` at the latest LSN and at `before_cut`.
fn check(conn: &mut PageConn, expect: &Expect, before_cut: Lsn) -> Result<()> {
    let Expect {
        name,
        rel,
        before,
        cut,
        size,
        ..
    } = *expect;
    let served = conn.nblocks(rel)?;
    ensure!(served == size, "Nblocks of {name}: {served}, not {size}");
    let pages = conn.all_pages(rel)?;
    let mut old_pages = 0;
    for &block in &expect.zero {
        let page = pages.get(block as usize).map_or(&[][..], Vec::as_slice);
        ensure!(
            page.len() == BLCKSZ && page.iter().all(|&b| b == 0),
            "block {block} of {name} (cut at {cut}, size {size}): not a zero page but one with {} line pointers",
            line_pointers(page)
        );
        if block < before {
            let old = page_at(conn, rel, block, before_cut)?;
            ensure!(
                line_pointers(&old) > 0,
                "block {block} of {name} at {before_cut} (before the cut): no rows"
            );
            old_pages += 1;
        }
    }
    ensure!(
        old_pages > 0,
        "{name}: no zero page the truncation cut (zero pages {:?}, {before} blocks before the cut)",
        expect.zero
    );
    println!(
        "{name}: {before} blocks, cut to {cut}, grown to {size}: zero pages {:?} ({old_pages} of them old pages before the cut)",
        expect.zero
    );
    Ok(())
}

/// [`check`] of each table, every failure reported.
fn check_all(conn: &mut PageConn, tables: &[Expect], before_cut: Lsn) -> Result<()> {
    let failures: Vec<String> = tables
        .iter()
        .filter_map(|table| check(conn, table, before_cut).err())
        .map(|e| format!("{e:#}"))
        .collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

fn connect(server: &Pageserver, timeline: &Imported) -> Result<PageConn> {
    PageConn::ready(
        server.page,
        &hello(
            timeline.tenant,
            timeline.timeline,
            ShardIdentity::unsharded(),
            "",
        ),
    )
}

/// Grows the cut tables back. t: the compute's size message raises it by
/// [`GAP`]. u: a bulk COPY extends it by more pages than it fills,
/// recording the rest in the free-space map, which a crash of the primary
/// forgets (it is not WAL-logged; the checkpoint after the VACUUM keeps
/// recovery from replaying the truncation); then a row finds no page with
/// room and goes to the last page, past the pages no WAL names. Returns
/// u's size and its zero pages at or above `u_cut`.
fn grow_back(pg: &mut PgCluster, t: RelTag, t_cut: u32, u_cut: u32) -> Result<(u32, Vec<u32>)> {
    pg.psql_script(
        "postgres",
        &format!(
            "SELECT pg_logical_emit_message(false, 'quire.relsize', '\\x{}'::bytea);\n\
             COPY (SELECT 10000 + g, repeat('c', 500) FROM generate_series(1, 300) g) TO '{copy}';\n\
             COPY u FROM '{copy}';\n",
            hex(&relsize_payload(t, t_cut + GAP)),
            copy = pg.datadir().join("rows.copy").display(),
        ),
    )?;
    let u_copied = primary_blocks(pg, "u")?;
    pg.stop_immediate()?;
    pg.start()?;
    println!(
        "u: {u_copied} blocks after the COPY, {} after the crash",
        primary_blocks(pg, "u")?
    );
    pg.psql("postgres", "INSERT INTO u VALUES (0, repeat('z', 1500))")?;
    let u_size = primary_blocks(pg, "u")?;
    let last_row_block = number(pg, "SELECT (ctid::text::point)[0]::int FROM u WHERE id = 0")?;
    ensure!(
        last_row_block + 1 == u_size,
        "the big row went to block {last_row_block} of u, not its last ({u_size} blocks)"
    );
    let u_zero = primary_zero_pages(pg, "u", u_cut..u_size)?;
    ensure!(
        u_zero.last().is_some_and(|&b| b + 2 == u_size),
        "u ({u_size} blocks) has no zero page below the big row's: zero pages {u_zero:?}"
    );
    Ok((u_size, u_zero))
}

#[test]
fn blocks_a_truncation_cut_read_as_zero_pages_when_the_fork_grows_back() -> Result<()> {
    let root = tempfile::tempdir()?;
    let mut server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "1"])?;
    let options = PgClusterOptions::default()
        .setting("wal_keep_size", "'1GB'")
        .setting("autovacuum", "off");
    let mut pg = PgCluster::create(&pg_install()?, options)?;
    let timeline = follow_primary(&server, &mut pg, &root.path().join("base"), SLOT)?;

    pg.psql_script(
        "postgres",
        &format!(
            "CREATE EXTENSION pageinspect;\n\
             CREATE TABLE t (id int, pad text);\n\
             CREATE TABLE u (id int, pad text);\n\
             INSERT INTO t SELECT g, repeat('t', 500) FROM generate_series(1, {ROWS}) g;\n\
             INSERT INTO u SELECT g, repeat('u', 500) FROM generate_series(1, {ROWS}) g;\n"
        ),
    )?;
    let db = number(
        &pg,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )?;
    let t = main_fork(db, rel_path(&pg, "t")?.0);
    let u = main_fork(db, rel_path(&pg, "u")?.0);
    let (t_before, u_before) = (primary_blocks(&pg, "t")?, primary_blocks(&pg, "u")?);
    ensure!(
        t_before >= 90 && u_before >= 90,
        "t has {t_before} blocks, u {u_before}"
    );
    let before_cut = insert_lsn(&pg)?;

    pg.psql_script(
        "postgres",
        &format!(
            "DELETE FROM t WHERE id > {KEPT_ROWS};\n\
             DELETE FROM u WHERE id > {KEPT_ROWS};\n\
             VACUUM t;\n\
             VACUUM u;\n\
             CHECKPOINT;\n"
        ),
    )?;
    let (t_cut, u_cut) = (primary_blocks(&pg, "t")?, primary_blocks(&pg, "u")?);
    ensure!(
        t_cut + GAP < t_before && u_cut + 10 < u_before,
        "VACUUM cut t from {t_before} to {t_cut} blocks, u from {u_before} to {u_cut}"
    );
    let cut_lsn = insert_lsn(&pg)?;
    wait_ingested(&server, &timeline, cut_lsn)?;
    let mut conn = connect(&server, &timeline)?;
    ensure!(conn.nblocks(t)? == t_cut && conn.nblocks(u)? == u_cut);

    let (u_size, u_zero) = grow_back(&mut pg, t, t_cut, u_cut)?;
    let t_zero: Vec<u32> = (t_cut..t_cut + GAP).collect();
    let grown = insert_lsn(&pg)?;
    wait_ingested(&server, &timeline, grown)?;

    let expect = [
        Expect {
            name: "t",
            rel: t,
            before: t_before,
            cut: t_cut,
            size: t_cut + GAP,
            zero: t_zero,
        },
        Expect {
            name: "u",
            rel: u,
            before: u_before,
            cut: u_cut,
            size: u_size,
            zero: u_zero,
        },
    ];
    check_all(&mut conn, &expect, before_cut)?;

    // A SIGKILL loses the open layer: the restarted pageserver takes the
    // WAL again from the slot (the primary still runs) and must agree.
    drop(conn);
    server.kill();
    server.restart()?;
    let resumed = insert_lsn(&pg)?;
    wait_ingested(&server, &timeline, resumed)?;
    let mut conn = connect(&server, &timeline)?;
    check_all(&mut conn, &expect, before_cut)?;

    pg.stop()?;
    assert_log_clean(
        &pg,
        &[
            "the database system is shutting down",
            "terminating connection due to administrator command",
            // The pageserver reconnects while the primary recovers.
            "the database system is starting up",
            "the database system is not yet accepting connections",
            "the database system is in recovery mode",
        ],
    )?;
    server.check_alive()
}
