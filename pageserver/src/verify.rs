//! `quire verify`: rebuild every page of a cluster from its WAL and compare
//! it with the page Postgres wrote.
//!
//! A timeline is bootstrapped from BASE (the cluster right after initdb),
//! the WAL from BASE's checkpoint to PGDATA's final shutdown checkpoint is
//! ingested (from PGDATA's `pg_wal`, or followed on the safekeepers through
//! the WAL receiver, or followed on the running primary until it shuts
//! down), and every block of every WAL-logged
//! relation fork and every `pg_xact` and multixact page is rebuilt at the
//! final LSN and compared with PGDATA's files. Pages that differ byte for
//! byte are compared again after Postgres' own masking (the resource
//! manager's `rm_mask`, run in a redo process, as `wal_consistency_checking`
//! does: hint bits, page LSN and checksum, unused space); visibility-map
//! pages have only their LSN and checksum masked. The resource manager of a
//! page is read from its special space (heap pages have none; btree, hash,
//! `GiST`, SP-GiST, GIN, BRIN and sequence pages each have their own shape).
//!
//! With a restart midway, ingest stops at the first record at or past the
//! middle of that WAL, flushes, and drops the ingest, the timeline and the
//! core's context; the timeline is loaded again from its directory, ingest
//! resumes from the timeline's own keys ([`WalIngest::resume`]) and takes
//! the rest of the WAL from the segment holding the timeline's last record
//! LSN. The visibility-map pages whose map the WAL does not carry (verify's
//! own bookkeeping, lost by a real restart) are carried across.
//!
//! Not compared, counted on lines of their own: unlogged and temporary
//! relations; free-space-map forks (Postgres never WAL-logs them); all-zero
//! pages Postgres extended a relation with but never WAL-logged, past the
//! end the WAL gave the fork or making up a fork no WAL names (a
//! visibility-map fork created by VACUUM while nothing could be marked
//! all-visible). A page with a byte set that the WAL never reached is a
//! difference.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quire_postgres::Lsn;
use quire_postgres::types::ForkNumber;
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_redo::{RedoPool, RedoStats};
use quire_shard::{CoreContext, Timeline};

use crate::datadir;
use crate::import::{import_datadir, read_control};
use crate::ingest::{IngestStats, WalIngest};
use crate::shard_filter::ShardFilter;
use crate::wal_receiver::{FollowEnd, FollowPolicy, WalSource, follow, receive};

mod checker;
mod remote;
use checker::{Checker, PageSource, megabytes, rel_name};
pub use remote::verify_remote;

/// Pages rebuilt per redo round trip.
const BATCH: u32 = 64;
/// Differences printed in full; the rest are only counted.
const PRINTED_DIFFERENCES: u64 = 50;

/// The tenant the verification's redo runs as.
const TENANT: u128 = 0;
/// The ids of the timeline verify builds.
const TENANT_ID: [u8; 16] = [1; 16];
const TIMELINE_ID: [u8; 16] = [2; 16];
/// The block cache of verify's core.
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// What a verification found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Pages compared.
    pub compared: u64,
    /// Identical (byte for byte, or after masking).
    pub identical: u64,
    /// Identical only after masking.
    pub identical_after_mask: u64,
    /// Of those, identical only after also masking what Postgres changes
    /// without WAL (sequence advance, SP-GiST last-used-page cache).
    pub identical_unlogged_masked: u64,
    /// Different.
    pub different: u64,
    /// Pages of unlogged and temporary relations, skipped.
    pub skipped_unlogged: u64,
    /// Free-space-map pages, skipped.
    pub skipped_fsm: u64,
    /// All-zero pages past the end the WAL gave a relation fork (all of a
    /// fork no WAL names), skipped.
    pub skipped_zero_tail: u64,
    /// Visibility-map pages whose map the WAL does not carry (their last
    /// image left it out) and that hold a subset of Postgres' bits, skipped.
    pub vm_bits_not_in_wal: u64,
    /// SLRU pages among the compared.
    pub slru_pages: u64,
    /// The LSN pages were rebuilt at.
    pub final_lsn: Lsn,
    /// Ingest counters.
    pub ingest: IngestStats,
    /// Time spent ingesting.
    pub ingest_time: Duration,
    /// Redo counters.
    pub redo: RedoStats,
}

/// Runs the verification: `work` holds the timeline (emptied first);
/// lines go to `out`, the last one `verify: N pages compared, ...`.
pub async fn verify(
    base: &Path,
    pgdata: &Path,
    work: &Path,
    pool: Rc<RedoPool>,
    wal_from: Option<&WalSource>,
    out: &mut impl Write,
) -> Result<VerifyReport> {
    verify_with(base, pgdata, work, pool, wal_from, false, out).await
}

/// [`verify`], and with `restart_midway` ingest restarts from the timeline
/// on disk halfway (WAL from `pg_wal` only).
pub async fn verify_with(
    base: &Path,
    pgdata: &Path,
    work: &Path,
    pool: Rc<RedoPool>,
    wal_from: Option<&WalSource>,
    restart_midway: bool,
    out: &mut impl Write,
) -> Result<VerifyReport> {
    if restart_midway && wal_from.is_some() {
        bail!("a restart midway takes the WAL from pg_wal, not from the safekeepers");
    }
    let mut report = VerifyReport::default();
    let final_control = read_control(pgdata)?;
    let base_control = read_control(base)?;
    if final_control.system_identifier.get() != base_control.system_identifier.get() {
        bail!(
            "{} and {} are not the same cluster",
            base.display(),
            pgdata.display()
        );
    }
    let end_checkpoint = final_control.checkpoint_lsn();
    let start = base_control.checkpoint_lsn();
    let dir = work.join("timeline");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("empty {}", dir.display()))?;
    }
    let core = CoreContext::new(CACHE_BYTES);
    let timeline = Rc::new(Timeline::create(&dir, TENANT_ID, TIMELINE_ID, start, core).await?);
    let imported = import_datadir(&timeline, base, ShardFilter::unsharded()).await?;
    writeln!(
        out,
        "imported {} pages of {} relation forks from {} at {}",
        imported.pages,
        imported.sizes.len(),
        base.display(),
        imported.lsn
    )?;
    let redo = Some((Rc::clone(&pool), TENANT));
    let mut ingest = WalIngest::new(
        timeline,
        imported.sizes,
        imported.slru_pages,
        Some(imported.checkpoint),
        redo,
    );
    let began = Instant::now();
    let last = if restart_midway {
        let (resumed, last, stats) =
            restart::ingest_with_restart(ingest, pgdata, &dir, (start, end_checkpoint), &pool, out)
                .await?;
        ingest = resumed;
        report.ingest = stats;
        last
    } else {
        let last = ingest_from(&mut ingest, pgdata, wal_from, start, end_checkpoint, out).await?;
        report.ingest = ingest.stats();
        last
    };
    report.ingest_time = began.elapsed();
    report.final_lsn = last;
    let timeline = Rc::clone(ingest.timeline());
    print_ingest_split(&report, start, out)?;
    let files = datadir::scan(pgdata)?;
    for unlogged in &files.unlogged {
        report.skipped_unlogged += u64::from(unlogged.blocks()?);
    }
    let mut checker = Checker {
        pages: PageSource::Local {
            timeline: &timeline,
            lsn: last,
        },
        vm_without_map: ingest.vm_pages_without_map(),
        pool: &pool,
        report: &mut report,
        out,
    };
    for (rel, rel_files) in &files.relations {
        if rel.fork == ForkNumber::Fsm {
            checker.report.skipped_fsm += u64::from(rel_files.blocks()?);
            continue;
        }
        let ours = ingest.relation_sizes().get(rel).copied();
        checker.relation(*rel, rel_files, ours).await?;
    }
    for (rel, &size) in ingest.relation_sizes() {
        if rel.fork != ForkNumber::Fsm && size > 0 && !files.relations.contains_key(rel) {
            let unlogged = files.unlogged.iter().any(|u| u.rel == *rel);
            if !unlogged {
                checker.difference(&format!(
                    "relation {} fork {}: {size} blocks in Quire, no file in {}",
                    rel_name(*rel),
                    rel.fork.name(),
                    pgdata.display()
                ))?;
                checker.report.compared += u64::from(size) - 1;
            }
        }
    }
    for (&(kind, segment), path) in &files.slru_segments {
        checker.slru_segment(kind, segment, path).await?;
    }
    report.redo = pool.stats();
    print_summary(&report, out)?;
    Ok(report)
}

/// Ingests from `pg_wal`, or through the WAL receiver: from the
/// safekeepers through the final checkpoint, or from the running primary
/// until it shuts down (its last record must then be PGDATA's final
/// checkpoint, read again once the stream has ended).
async fn ingest_from(
    ingest: &mut WalIngest,
    pgdata: &Path,
    wal_from: Option<&WalSource>,
    start: Lsn,
    end_checkpoint: Lsn,
    out: &mut impl Write,
) -> Result<Lsn> {
    let Some(source) = wal_from else {
        return ingest_wal(ingest, &pgdata.join("pg_wal"), start, end_checkpoint).await;
    };
    if let WalSource::Primary(primary) = source {
        let policy = FollowPolicy {
            deadline: Some(Duration::from_secs(1800)),
            ..FollowPolicy::default()
        };
        let (followed, stats) =
            receive(ingest, source, start, FollowEnd::SourceShutdown, &policy).await?;
        writeln!(
            out,
            "WAL from the primary: {} connections, {:.1} MB, slot {} ({}), durable LSN reported {} times, {} flushes",
            stats.connections,
            megabytes(stats.bytes),
            primary.slot,
            if stats.slots_created > 0 {
                "created"
            } else {
                "reused"
            },
            stats.persisted_reports,
            stats.flushes
        )?;
        let shut_down = read_control(pgdata)?.checkpoint_lsn();
        if followed.last_record != Some(shut_down) {
            bail!(
                "the primary's stream ended at the record at {:?}, but {}'s last checkpoint is at {shut_down}",
                followed.last_record,
                pgdata.display()
            );
        }
        return Ok(followed.end);
    }
    let (last, stats) = follow(
        ingest,
        source,
        start,
        end_checkpoint,
        Duration::from_secs(600),
    )
    .await?;
    writeln!(
        out,
        "WAL from the safekeepers: {} connections, {:.1} MB, disk-consistent LSN reported {} times",
        stats.connections,
        megabytes(stats.bytes),
        stats.persisted_reports
    )?;
    Ok(last)
}

fn print_ingest_split(report: &VerifyReport, start: Lsn, out: &mut impl Write) -> Result<()> {
    let stats = &report.ingest;
    writeln!(
        out,
        "ingested {} records, {:.1} MB of WAL from {start} to {} in {:.2} s ({:.1} MB/s)",
        stats.records,
        megabytes(stats.bytes),
        report.final_lsn,
        report.ingest_time.as_secs_f64(),
        megabytes(stats.bytes) / report.ingest_time.as_secs_f64().max(1e-9),
    )?;
    writeln!(
        out,
        "records: {} need Postgres redo, {} carry only full-page images (no redo), {} become Rust redo (SLRU bits, visibility map), {} change no page",
        stats.postgres_redo_records,
        stats.image_records,
        stats.rust_redo_records,
        stats.other_records
    )?;
    writeln!(
        out,
        "page updates: {} full-page images, {} Postgres records, {} Rust records (visibility-map clears)",
        stats.page_images, stats.page_records, stats.rust_page_records
    )?;
    Ok(())
}

fn print_summary(report: &VerifyReport, out: &mut impl Write) -> Result<()> {
    writeln!(
        out,
        "skipped: {} pages of unlogged and temporary relations",
        report.skipped_unlogged
    )?;
    writeln!(
        out,
        "skipped: {} free-space-map pages (never WAL-logged), {} all-zero pages past a relation's WAL-logged end",
        report.skipped_fsm, report.skipped_zero_tail
    )?;
    writeln!(
        out,
        "skipped: {} visibility-map pages whose map the WAL does not carry (imaged as standard pages by CREATE DATABASE ... wal_log; Quire, like Postgres' recovery, has a subset of the file's bits)",
        report.vm_bits_not_in_wal
    )?;
    writeln!(
        out,
        "pages identical only after masking: {} (of which {} only after also masking a sequence's unlogged advance or the SP-GiST last-used-page cache); SLRU pages compared: {}",
        report.identical_after_mask, report.identical_unlogged_masked, report.slru_pages
    )?;
    writeln!(
        out,
        "verify: {} pages compared, {} identical, {} different",
        report.compared, report.identical, report.different
    )?;
    Ok(())
}

/// Ingests `pg_wal`'s records from the segment holding `start` through the
/// first record that starts at or past `until`; returns the end of the last
/// record. Records ingest already holds (below `start`) are skipped there.
async fn ingest_wal(ingest: &mut WalIngest, wal_dir: &Path, start: Lsn, until: Lsn) -> Result<Lsn> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .with_context(|| format!("list {}", wal_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    segments.sort();
    let mut decoder: Option<WalStreamDecoder> = None;
    let mut last_end = None;
    for path in segments {
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let header = read_segment_header(&bytes)
            .with_context(|| format!("{} is not a WAL segment", path.display()))?;
        let seg_end = Lsn(header.start.0 + u64::from(header.segment_size));
        if seg_end.0 <= start.0 {
            continue;
        }
        let decoder =
            decoder.get_or_insert_with(|| WalStreamDecoder::new(header.start, header.segment_size));
        if decoder.position().0 < header.start.0 {
            bail!(
                "WAL segment {} is missing before {}",
                decoder.position(),
                path.display()
            );
        }
        if decoder.position().0 >= seg_end.0 {
            continue;
        }
        decoder.feed_owned(bytes);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    let end = ingest
                        .ingest_record(record.start, record.end, record.bytes)
                        .await?;
                    last_end = Some(end);
                    if record.start >= until {
                        return Ok(end);
                    }
                }
                Ok(None) => break,
                Err(error) => bail!(
                    "the WAL ends at {} ({error}) before the final checkpoint at {until}: is wal_keep_size large enough?",
                    last_end.map_or(start, |l| l)
                ),
            }
        }
    }
    bail!(
        "the WAL in {} ends at {} before the final checkpoint at {until}",
        wal_dir.display(),
        last_end.map_or(start, |l| l)
    )
}

mod restart;
#[cfg(test)]
mod tests;
