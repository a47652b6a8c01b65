//! Postgres' data page checksums on the pages `quire pageserver` serves.
//!
//! Two primaries, one initialised with `--data-checksums` and one without,
//! are each imported from a stopped copy and followed through a slot; WAL
//! after the import makes a table and its index (full-page images after a
//! checkpoint, records on them, a VACUUM that writes the visibility map)
//! and changes the catalog. Once a primary stops and its last checkpoint is
//! ingested, every page of those forks is read over the page protocol
//! (`GetPage` and `GetPages`): with checksums, each page is initialised and
//! carries the checksum Postgres computes for its block; without, each
//! page's checksum field stays zero, as the primary leaves it. Either way a
//! table no WAL touched after the import is served byte for byte as the
//! primary's file holds it, and `quire verify --pageserver` finds every page
//! equal to the primary's after Postgres' masking. After a SIGKILL and a
//! restart, the checksummed timeline (the flag read back from its stored
//! `pg_control`) and a branch of it serve checksummed pages too.

mod pageserver_support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_net::id::ShardIdentity;
use quire_postgres::Lsn;
use quire_postgres::checksum::{CHECKSUM_OFFSET, page_checksum, page_is_new};
use quire_postgres::types::{BLCKSZ, ForkNumber, RelTag};
use quire_tests::{assert_log_clean, pg_install};
use serde_json::Value;

use pageserver_support::primary::{follow_primary, rel_path, wait_ingested};
use pageserver_support::{
    Imported, PageConn, Pageserver, branch, hello, lsn_field, timeline_show, verify,
};

const SLOT: &str = "quire_checksums";

/// Before the base copy: a table no later WAL touches.
const BEFORE_BASE: &str = "
CREATE TABLE still AS SELECT g, repeat('s', 60) AS pad FROM generate_series(1, 3000) g;
CHECKPOINT;
";

/// After the import: a table and its index made by WAL, changed after a
/// checkpoint (full-page images, then records on top of them), rows
/// deleted and vacuumed (visibility-map pages), catalog rows added.
const AFTER_IMPORT: &str = "
CREATE TABLE t (id int PRIMARY KEY, v text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CHECKPOINT;
UPDATE t SET v = v || 'x' WHERE id % 3 = 0;
DELETE FROM t WHERE id % 7 = 0;
VACUUM t;
UPDATE t SET v = 'after vacuum' WHERE id % 11 = 0;
CREATE TABLE more_catalog (a int, b text);
";

/// The forks a check reads, and the file of the one no WAL touched.
struct Forks {
    /// `t`, its map, its index, `pg_class`.
    changed: Vec<RelTag>,
    /// `still`.
    still: RelTag,
    /// `still`'s file, as the stopped primary left it.
    still_file: Vec<u8>,
}

/// A stopped primary (checksums or not) imported into `server` and
/// followed through the workload and its shutdown; the timeline and forks.
fn followed(
    server: &Pageserver,
    root: &Path,
    checksums: bool,
) -> Result<(PgCluster, Imported, Forks)> {
    let mut options = PgClusterOptions::default()
        .setting("wal_keep_size", "'1GB'")
        // Nothing but the workload changes the tables.
        .setting("autovacuum", "off");
    if checksums {
        options = options.initdb_arg("--data-checksums");
    }
    let mut pg = PgCluster::create(&pg_install()?, options)?;
    pg.start()?;
    pg.psql_script("postgres", BEFORE_BASE)?;
    pg.stop()?;
    let name = if checksums { "on" } else { "off" };
    let timeline = follow_primary(server, &mut pg, &root.join(format!("base-{name}")), SLOT)?;
    let shown = timeline_show(server, &timeline)?;
    ensure!(
        shown["data_checksums"] == Value::Bool(checksums),
        "checksums {name}: the timeline's status says {shown}"
    );
    pg.psql_script("postgres", AFTER_IMPORT)?;
    let db: u32 = pg
        .psql(
            "postgres",
            "SELECT oid FROM pg_database WHERE datname = 'postgres'",
        )?
        .trim()
        .parse()?;
    let rel = |name: &str, fork| -> Result<(RelTag, String)> {
        let (node, path) = rel_path(&pg, name)?;
        // The default tablespace: none of these is a shared catalog.
        let rel = RelTag {
            spc_oid: 1663,
            db_oid: db,
            rel_number: node,
            fork,
        };
        Ok((rel, path))
    };
    let mut changed = Vec::new();
    for (name, fork) in [
        ("t", ForkNumber::Main),
        ("t", ForkNumber::VisibilityMap),
        ("t_pkey", ForkNumber::Main),
        ("pg_class", ForkNumber::Main),
    ] {
        changed.push(rel(name, fork)?.0);
    }
    let (still, still_path) = rel("still", ForkNumber::Main)?;
    pg.stop()?;
    assert_log_clean(
        &pg,
        &[
            "the database system is shutting down",
            "terminating connection due to administrator command",
        ],
    )?;
    let end = quire_pageserver::import::read_control(&pg.datadir())?.checkpoint_lsn();
    wait_ingested(server, &timeline, end)?;
    let still_file = std::fs::read(pg.datadir().join(&still_path))
        .with_context(|| format!("read {still_path}"))?;
    let forks = Forks {
        changed,
        still,
        still_file,
    };
    Ok((pg, timeline, forks))
}

/// Checks every page of `forks.changed` as served on `timeline`: with
/// `checksums`, initialised and carrying its block's checksum; without,
/// its checksum field zero. `still` must be its file's bytes. The pages
/// checked.
fn check_pages(
    server: &Pageserver,
    timeline: &Imported,
    forks: &Forks,
    checksums: bool,
) -> Result<usize> {
    let mut conn = PageConn::ready(
        server.page,
        &hello(
            timeline.tenant,
            timeline.timeline,
            ShardIdentity::unsharded(),
            "",
        ),
    )?;
    let mut checked = 0;
    for &rel in &forks.changed {
        let pages = conn.all_pages(rel)?;
        ensure!(!pages.is_empty(), "{rel} has no pages");
        for (block, page) in (0u32..).zip(&pages) {
            let page: &[u8; BLCKSZ] = page.as_slice().try_into()?;
            let stored = u16::from_le_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]]);
            if checksums {
                ensure!(!page_is_new(page), "block {block} of {rel} is a new page");
                let expected = page_checksum(page, block);
                ensure!(
                    stored == expected,
                    "block {block} of {rel}: checksum {stored:#06X}, Postgres' is {expected:#06X}"
                );
            } else {
                ensure!(
                    stored == 0,
                    "block {block} of {rel}: checksum {stored:#06X} on a cluster without checksums"
                );
            }
        }
        println!(
            "{} checksums: {rel}: {} pages {}",
            if checksums { "with" } else { "without" },
            pages.len(),
            if checksums {
                "carry their block's checksum"
            } else {
                "have a zero checksum field"
            }
        );
        checked += pages.len();
    }
    let still = conn.all_pages(forks.still)?.concat();
    ensure!(
        still == forks.still_file,
        "{} ({} bytes served, {} in the file) differs from the file",
        forks.still,
        still.len(),
        forks.still_file.len()
    );
    Ok(checked + forks.still_file.len() / BLCKSZ)
}

/// Waits until `timeline` has made `lsn` durable (the receiver flushes by
/// age), so that a restart loses nothing the stopped primary cannot send.
fn wait_durable(server: &Pageserver, timeline: &Imported, lsn: Lsn) -> Result<()> {
    let began = Instant::now();
    loop {
        let shown = timeline_show(server, timeline)?;
        if lsn_field(&shown, "disk_consistent_lsn")? >= lsn {
            return Ok(());
        }
        ensure!(
            began.elapsed() < Duration::from_secs(60),
            "{lsn} not durable: {shown}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn served_pages_carry_their_checksum_when_the_cluster_has_checksums_and_none_when_not() -> Result<()>
{
    let root = tempfile::tempdir()?;
    let mut server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "1"])?;

    let (plain_pg, plain, plain_forks) = followed(&server, root.path(), false)?;
    let without = check_pages(&server, &plain, &plain_forks, false)?;
    verify(&server, &plain, &plain_pg.datadir(), None)?;

    let (summed_pg, summed, summed_forks) = followed(&server, root.path(), true)?;
    let with = check_pages(&server, &summed, &summed_forks, true)?;
    verify(&server, &summed, &summed_pg.datadir(), None)?;
    ensure!(
        without > 100 && with > 100,
        "pages checked: {without} without checksums, {with} with"
    );

    // The flag comes back from the stored control file at a restart, and a
    // branch has its parent's.
    let end = lsn_field(&timeline_show(&server, &summed)?, "last_record_lsn")?;
    wait_durable(&server, &summed, end)?;
    let at_end = branch(&server, &summed, end)?;
    server.check_alive()?;
    server.kill();
    server.restart()?;
    for timeline in [&summed, &at_end] {
        let shown = timeline_show(&server, timeline)?;
        ensure!(
            shown["data_checksums"] == Value::Bool(true),
            "after the restart: {shown}"
        );
        check_pages(&server, timeline, &summed_forks, true)?;
    }
    let shown = timeline_show(&server, &plain)?;
    ensure!(
        shown["data_checksums"] == Value::Bool(false),
        "after the restart: {shown}"
    );
    server.check_alive()
}
