//! A running primary that a timeline follows through a physical slot: the
//! timeline imported from a copy of the stopped primary, the LSNs to wait
//! for, and a fork's pages read over the page protocol (`GetPage` and
//! `GetPages`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::PgCluster;
use quire_net::page_protocol::{ReadLsn, Request, Response, ServerMessage};
use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, BlockNo, RelTag};

use super::{Imported, PageConn, Pageserver, copy_dir, import_with, lsn_field, timeline_show};

/// How long a timeline has to ingest what the primary wrote.
const INGEST_DEADLINE: Duration = Duration::from_secs(60);

/// Copies the stopped `pg` to `base`, starts it, makes the slot `slot` and
/// imports `base` into a new tenant of `server` whose timeline follows
/// `pg` through that slot.
pub fn follow_primary(
    server: &Pageserver,
    pg: &mut PgCluster,
    base: &Path,
    slot: &str,
) -> Result<Imported> {
    copy_dir(&pg.datadir(), base)?;
    pg.start()?;
    pg.psql(
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
    )?;
    let primary = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    import_with(
        server,
        base,
        &[],
        &["--primary", &primary, "--slot", slot],
        None,
    )
}

/// The primary's WAL insert position now.
pub fn insert_lsn(pg: &PgCluster) -> Result<Lsn> {
    Ok(pg
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .parse()?)
}

/// Waits until `timeline` has ingested every record before `lsn`.
pub fn wait_ingested(server: &Pageserver, timeline: &Imported, lsn: Lsn) -> Result<()> {
    let began = Instant::now();
    loop {
        let shown = timeline_show(server, timeline)?;
        if lsn_field(&shown, "last_record_lsn")? >= lsn {
            return Ok(());
        }
        ensure!(
            began.elapsed() < INGEST_DEADLINE,
            "the timeline did not reach {lsn}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `relation`'s file node and the path of its main fork's file in `pg`'s
/// data directory.
pub fn rel_path(pg: &PgCluster, relation: &str) -> Result<(u32, String)> {
    let node = pg
        .psql(
            "postgres",
            &format!("SELECT pg_relation_filenode('{relation}')"),
        )?
        .trim()
        .parse()
        .with_context(|| format!("the file node of {relation}"))?;
    let path = pg
        .psql(
            "postgres",
            &format!("SELECT pg_relation_filepath('{relation}')"),
        )?
        .trim()
        .to_owned();
    Ok((node, path))
}

impl PageConn {
    /// `count` blocks of `rel` from `first` at the latest LSN, in one
    /// `GetPages`.
    pub fn pages(&mut self, rel: RelTag, first: u32, count: u32) -> Result<Vec<u8>> {
        let request = Request::GetPages {
            lsn: ReadLsn::latest(Lsn(0))?,
            rel,
            first_block: BlockNo(first),
            count,
        };
        match self.call(request)? {
            ServerMessage::Response(Response::GetPages { pages, .. })
                if pages.len() == count as usize * BLCKSZ =>
            {
                Ok(pages)
            }
            other => bail!("GetPages of {count} blocks from {first}: {other:?}"),
        }
    }

    /// Every page of `rel` at the latest LSN: each read once by `GetPage`
    /// and once by `GetPages` (32 at a time), which must agree (the source
    /// has stopped: the latest LSN stays where it is).
    pub fn all_pages(&mut self, rel: RelTag) -> Result<Vec<Vec<u8>>> {
        let blocks = self.nblocks(rel)?;
        let mut all = Vec::new();
        for first in (0..blocks).step_by(32) {
            let count = (blocks - first).min(32);
            let batch = self.pages(rel, first, count)?;
            for (block, page) in (first..).zip(batch.chunks_exact(BLCKSZ)) {
                let (_, alone) = self.page(rel, block)?;
                ensure!(
                    alone == page,
                    "block {block} of {rel}: GetPage and GetPages differ"
                );
                all.push(alone);
            }
        }
        Ok(all)
    }
}
