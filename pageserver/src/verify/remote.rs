//! `quire verify --pageserver`: every page of a cleanly stopped cluster
//! compared with the page a running pageserver serves for it over the page
//! protocol — relation blocks with `GetPages` (32 at a time, pipelined),
//! SLRU pages with `SlruSegment`, sizes with `Nblocks` — with the same
//! rules as the local verification (Postgres' masking through a local redo
//! process, skipped unlogged, free-space-map and zero tail pages).
//!
//! Reads ask for the latest page with `not_modified_since` at the
//! cluster's final checkpoint, so the server must have ingested the WAL up
//! to it; verification first waits (bounded) until it has. Given an LSN
//! (`--at-lsn`), every read is at that LSN instead: a snapshot compared
//! with a point in the timeline's history (a branch point, for a branch). What it cannot
//! see remotely: forks the pageserver has and the directory lacks (the
//! protocol lists no relations), and visibility-map pages whose map the WAL
//! never carried (the local verification learns them from ingest; here
//! they count as differences).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use quire_net::page_client::{ClientError, PageClient};
use quire_net::page_protocol::{
    BLOCKS_PER_REQUEST_MAX, ReadLsn, Request, RequestLsn, Response, ServiceError,
};
use quire_postgres::key::KeyKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_redo::RedoPool;

use super::{Checker, PageSource, VerifyReport, print_summary};
use crate::datadir;
use crate::import::read_control;

/// Compares `pgdata` with what the server behind `client` serves; lines go
/// to `out`, the last one `verify: N pages compared, ...`. Waits at most
/// `wait` for the server to ingest the cluster's WAL.
pub async fn verify_remote(
    pgdata: &Path,
    client: &mut PageClient,
    pool: Rc<RedoPool>,
    (wait, at): (Duration, Option<Lsn>),
    out: &mut impl Write,
) -> Result<VerifyReport> {
    let control = read_control(pgdata)?;
    let since = at.unwrap_or_else(|| control.checkpoint_lsn());
    let read = match at {
        Some(lsn) => ReadLsn::new(RequestLsn::At(lsn), lsn),
        None => ReadLsn::latest(since),
    }
    .map_err(|e| anyhow::anyhow!("read LSN: {e}"))?;
    let served = wait_ingested(client, read, wait).await?;
    let what = if at.is_some() {
        "the LSN asked for"
    } else {
        "the cluster's final checkpoint"
    };
    writeln!(
        out,
        "pageserver has ingested {since} ({what}); reading at {served}"
    )?;
    let mut report = VerifyReport {
        final_lsn: served,
        ..VerifyReport::default()
    };
    let files = datadir::scan(pgdata)?;
    for unlogged in &files.unlogged {
        report.skipped_unlogged += u64::from(unlogged.blocks()?);
    }
    let none = HashSet::new();
    let mut checker = Checker {
        pages: PageSource::Remote(client, read),
        vm_without_map: &none,
        pool: &pool,
        report: &mut report,
        out,
    };
    for (rel, rel_files) in &files.relations {
        if rel.fork == ForkNumber::Fsm {
            checker.report.skipped_fsm += u64::from(rel_files.blocks()?);
            continue;
        }
        let PageSource::Remote(client, _) = &mut checker.pages else {
            bail!("remote verification without a client");
        };
        let ours = nblocks(client, *rel, read).await?;
        checker.relation(*rel, rel_files, ours).await?;
    }
    for (&(kind, segment), path) in &files.slru_segments {
        checker.slru_segment(kind, segment, path).await?;
    }
    report.redo = pool.stats();
    print_summary(&report, out)?;
    Ok(report)
}

/// Waits until the server has ingested what `read` needs; returns the LSN
/// it served at.
async fn wait_ingested(client: &mut PageClient, read: ReadLsn, wait: Duration) -> Result<Lsn> {
    let deadline = Instant::now() + wait;
    loop {
        let request = Request::DbSize {
            lsn: read,
            db_oid: 0,
        };
        match client.call(request).await {
            Ok(Response::DbSize { lsn, .. }) => return Ok(lsn),
            Ok(other) => bail!("DbSize answered with {other:?}"),
            Err(ClientError::Refused(error))
                if matches!(error.error, ServiceError::WalNotIngested { .. })
                    && Instant::now() < deadline =>
            {
                quire_io::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!(
                "waiting for the pageserver to ingest {}: {error}",
                read.not_modified_since()
            ),
        }
    }
}

/// The fork's size on the server; `None` when it has no such fork.
async fn nblocks(client: &mut PageClient, rel: RelTag, read: ReadLsn) -> Result<Option<u32>> {
    match client.call(Request::Nblocks { lsn: read, rel }).await {
        Ok(Response::Nblocks { nblocks, .. }) => Ok(Some(nblocks)),
        Ok(other) => bail!("Nblocks answered with {other:?}"),
        Err(ClientError::Refused(error)) if error.error == ServiceError::NotFound => Ok(None),
        Err(error) => bail!("Nblocks of {rel:?}: {error}"),
    }
}

type Pages = Vec<Result<Box<[u8; BLCKSZ]>, String>>;

/// The server's pages for `keys`: consecutive blocks of one fork, or pages
/// of one SLRU segment.
pub(super) async fn fetch(client: &mut PageClient, read: ReadLsn, keys: &[Key]) -> Result<Pages> {
    let Some(first) = keys.first() else {
        return Ok(Vec::new());
    };
    match first.describe() {
        Ok(KeyKind::RelBlock(rel, block)) => {
            fetch_blocks(client, read, rel, block, keys.len()).await
        }
        Ok(KeyKind::SlruBlock(kind, segment, _)) => {
            let answer = client
                .call(Request::SlruSegment {
                    lsn: read,
                    slru: kind,
                    segment,
                })
                .await;
            let pages = match answer {
                Ok(Response::SlruSegment { pages, .. }) => pages,
                Ok(other) => bail!("SlruSegment answered with {other:?}"),
                Err(ClientError::Refused(error)) => {
                    return Ok(keys.iter().map(|_| Err(error.message.clone())).collect());
                }
                Err(error) => return Err(error.into()),
            };
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                let Ok(KeyKind::SlruBlock(_, _, block)) = key.describe() else {
                    bail!("mixed keys in one fetch");
                };
                let at = block as usize * BLCKSZ;
                found.push(match pages.get(at..at + BLCKSZ) {
                    Some(page) => super::checker::to_page(page),
                    None => Err(format!(
                        "the pageserver's segment has {} pages",
                        pages.len() / BLCKSZ
                    )),
                });
            }
            Ok(found)
        }
        _ => bail!("cannot fetch {first:?} over the page protocol"),
    }
}

async fn fetch_blocks(
    client: &mut PageClient,
    read: ReadLsn,
    rel: RelTag,
    first: BlockNo,
    count: usize,
) -> Result<Pages> {
    let count = u32::try_from(count)?;
    let mut chunks = Vec::new();
    let mut block = first.0;
    let end = first.0 + count;
    while block < end {
        let n = (end - block).min(BLOCKS_PER_REQUEST_MAX);
        client.send(Request::GetPages {
            lsn: read,
            rel,
            first_block: BlockNo(block),
            count: n,
        })?;
        chunks.push(n);
        block += n;
    }
    let mut found = Vec::with_capacity(count as usize);
    for n in chunks {
        match client.recv().await {
            Ok(Response::GetPages { pages, .. }) => {
                for page in pages.chunks_exact(BLCKSZ) {
                    found.push(super::checker::to_page(page));
                }
            }
            Ok(other) => bail!("GetPages answered with {other:?}"),
            Err(ClientError::Refused(error)) => {
                found.extend((0..n).map(|_| Err(format!("{}: {}", error.error, error.message))));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(found)
}
