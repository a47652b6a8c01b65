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
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::rmgr::{
    RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP_ID,
    RM_SEQ_ID, RM_SPGIST_ID, rmgr_name,
};
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_postgres::{Key, Lsn};
use quire_redo::{RedoPool, RedoStats};
use quire_shard::{CoreContext, ReconstructInputs, Timeline};

use crate::datadir::{self, RelationFiles, SLRU_PAGES_PER_SEGMENT, TailPages};
use crate::import::{import_datadir, read_control};
use crate::ingest::{IngestStats, WalIngest, slru_key};
use crate::wal_receiver::{FollowEnd, FollowPolicy, WalSource, follow, receive};

mod remote;
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
    let imported = import_datadir(&timeline, base).await?;
    writeln!(
        out,
        "imported {} pages of {} relation forks from {} at {}",
        imported.pages,
        imported.sizes.len(),
        base.display(),
        imported.lsn
    )?;
    let redo = Some((Rc::clone(&pool), TENANT));
    let mut ingest = WalIngest::new(timeline, imported.sizes, imported.slru_pages, redo);
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

/// Where the pages compared come from.
enum PageSource<'a> {
    /// Rebuilt here from a timeline at an LSN.
    Local { timeline: &'a Timeline, lsn: Lsn },
    /// Read from a running pageserver over the page protocol.
    Remote(&'a mut quire_net::page_client::PageClient, Lsn),
}

struct Checker<'a, W: Write> {
    pages: PageSource<'a>,
    vm_without_map: &'a std::collections::HashSet<(RelTag, u32)>,
    pool: &'a RedoPool,
    report: &'a mut VerifyReport,
    out: &'a mut W,
}

impl<W: Write> Checker<'_, W> {
    fn difference(&mut self, line: &str) -> Result<()> {
        self.report.compared += 1;
        self.report.different += 1;
        if self.report.different <= PRINTED_DIFFERENCES {
            writeln!(self.out, "{line}")?;
        } else if self.report.different == PRINTED_DIFFERENCES + 1 {
            writeln!(self.out, "(further differences are counted, not printed)")?;
        }
        Ok(())
    }

    async fn relation(
        &mut self,
        rel: RelTag,
        files: &RelationFiles,
        ours: Option<u32>,
    ) -> Result<()> {
        let theirs = files.blocks()?;
        let ours_size = ours.unwrap_or(0);
        let tail = datadir::read_tail(files, ours_size..theirs)?;
        self.report.skipped_zero_tail += tail.zero;
        for finding in tail_findings(rel, theirs, ours.is_some(), &tail) {
            self.difference(&finding.line)?;
            self.report.compared += finding.pages - 1;
        }
        if ours.is_none() {
            return Ok(());
        }
        if ours_size > theirs {
            self.difference(&format!(
                "relation {} fork {}: {ours_size} blocks in Quire, {theirs} in Postgres",
                rel_name(rel),
                rel.fork.name()
            ))?;
        }
        let common = ours_size.min(theirs);
        let mut block = 0;
        while block < common {
            let end = block.saturating_add(BATCH).min(common);
            self.compare_batch(rel, files, block..end).await?;
            block = end;
        }
        Ok(())
    }

    async fn compare_batch(
        &mut self,
        rel: RelTag,
        files: &RelationFiles,
        blocks: std::ops::Range<u32>,
    ) -> Result<()> {
        let keys: Vec<Key> = blocks
            .clone()
            .map(|b| Key::rel_block(rel, BlockNo(b)))
            .collect();
        let ours = self.rebuild(&keys).await?;
        let mut masks: Vec<(usize, u8)> = Vec::new();
        let mut theirs = Vec::with_capacity(keys.len());
        for (i, block) in blocks.clone().enumerate() {
            let mut page = Box::new([0u8; BLCKSZ]);
            datadir::read_block(files, block, &mut page)?;
            let our_page = match &ours[i] {
                Ok(page) => page,
                Err(what) => {
                    self.difference(&format!(
                        "relation {} fork {} block {block}: rebuild failed: {what}",
                        rel_name(rel),
                        rel.fork.name()
                    ))?;
                    theirs.push(page);
                    continue;
                }
            };
            if our_page[..] == page[..] {
                self.report.compared += 1;
                self.report.identical += 1;
            } else if let Some(rmid) = mask_rmgr(rel.fork, &page, our_page) {
                masks.push((i, rmid));
            } else {
                let vm =
                    rel.fork == ForkNumber::VisibilityMap && !is_new(&page) && !is_new(our_page);
                let masked_equal = vm && page[10..] == our_page[10..];
                if vm
                    && !masked_equal
                    && self.vm_without_map.contains(&(rel, block))
                    && page[10..24] == our_page[10..24]
                    && page[24..]
                        .iter()
                        .zip(&our_page[24..])
                        .all(|(t, o)| o & !t == 0)
                {
                    // Fewer bits than Postgres' file, none it lacks: the bits
                    // Postgres kept in memory but never WAL-logged.
                    self.report.vm_bits_not_in_wal += 1;
                    theirs.push(page);
                    continue;
                }
                self.page_result(rel, block, None, &page, our_page, masked_equal)?;
            }
            theirs.push(page);
        }
        if masks.is_empty() {
            return Ok(());
        }
        let mut to_mask: Vec<(u8, BlockNo, &[u8; BLCKSZ])> = Vec::with_capacity(masks.len() * 2);
        for &(i, rmid) in &masks {
            let block = BlockNo(blocks.start + index_u32(i));
            let Ok(our_page) = &ours[i] else { continue };
            to_mask.push((rmid, block, our_page));
            to_mask.push((rmid, block, &theirs[i]));
        }
        let masked = self.pool.mask_many(TENANT, &to_mask).await;
        for (n, &(i, rmid)) in masks.iter().enumerate() {
            let block = blocks.start + index_u32(i);
            let Ok(our_page) = &ours[i] else { continue };
            let equal = match &masked {
                Ok(pages) => {
                    pages[2 * n][..] == pages[2 * n + 1][..]
                        || self.equal_but_unlogged(
                            rmid,
                            BlockNo(block),
                            &pages[2 * n],
                            &pages[2 * n + 1],
                        )
                }
                Err(what) => {
                    self.difference(&format!(
                        "relation {} fork {} block {block}: masking failed: {what}",
                        rel_name(rel),
                        rel.fork.name()
                    ))?;
                    continue;
                }
            };
            self.page_result(rel, block, Some(rmid), &theirs[i], our_page, equal)?;
        }
        Ok(())
    }

    /// Whether two masked pages differ only where Postgres changes a page
    /// without WAL: the advance of a sequence between logged values (the
    /// WAL logs 32 values ahead, the page holds the last one handed out;
    /// recovery, like Quire, yields the logged value) and the SP-GiST
    /// metapage's cache of last-used pages (`SpGistUpdateMetaPage` is not
    /// WAL-logged).
    fn equal_but_unlogged(
        &mut self,
        rmid: u8,
        block: BlockNo,
        ours: &[u8; BLCKSZ],
        theirs: &[u8; BLCKSZ],
    ) -> bool {
        let mut ours = *ours;
        let mut theirs = *theirs;
        match rmid {
            RM_SEQ_ID => {
                let (Some(o), Some(t)) = (sequence_data(&ours), sequence_data(&theirs)) else {
                    return false;
                };
                let log_cnt = |p: &[u8; BLCKSZ], at: usize| {
                    i64::from_le_bytes(p[at + 8..at + 16].try_into().unwrap_or([0xFF; 8]))
                };
                // The logged tuple has no values left to hand out unlogged;
                // the page's tuple at most the 32 logged ahead.
                if o != t || log_cnt(&ours, o) != 0 || !(0..=32).contains(&log_cnt(&theirs, t)) {
                    return false;
                }
                ours[o..o + 17].fill(0);
                theirs[t..t + 17].fill(0);
            }
            RM_SPGIST_ID if block.0 == 0 => {
                // SpGistMetaPageData: magic number, then 8 (block, free space) pairs.
                ours[28..92].fill(0);
                theirs[28..92].fill(0);
            }
            _ => return false,
        }
        let equal = ours[..] == theirs[..];
        if equal {
            self.report.identical_unlogged_masked += 1;
        }
        equal
    }

    fn page_result(
        &mut self,
        rel: RelTag,
        block: u32,
        rmid: Option<u8>,
        theirs: &[u8; BLCKSZ],
        ours: &[u8; BLCKSZ],
        masked_equal: bool,
    ) -> Result<()> {
        if masked_equal {
            self.report.compared += 1;
            self.report.identical += 1;
            self.report.identical_after_mask += 1;
            return Ok(());
        }
        let offset = theirs
            .iter()
            .zip(ours.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        self.difference(&format!(
            "relation {} fork {} block {block}: first difference at offset {offset} (Postgres 0x{:02X}, Quire 0x{:02X}; masked as {})",
            rel_name(rel),
            rel.fork.name(),
            theirs[offset],
            ours[offset],
            rmid.map_or_else(|| "nothing".into(), rmgr_name)
        ))
    }

    /// Our pages for `keys` at the final LSN (a key with no value is a page
    /// of zeros, as reading a hole in a relation file gives).
    async fn rebuild(&mut self, keys: &[Key]) -> Result<Vec<Result<Box<[u8; BLCKSZ]>, String>>> {
        let (timeline, lsn) = match &mut self.pages {
            PageSource::Remote(client, since) => return remote::fetch(client, *since, keys).await,
            PageSource::Local { timeline, lsn } => (*timeline, *lsn),
        };
        let mut inputs: Vec<ReconstructInputs> = Vec::with_capacity(keys.len());
        for key in keys {
            inputs.push(timeline.get(*key, lsn).await?);
        }
        let mut results: Vec<Option<Result<Box<[u8; BLCKSZ]>, String>>> = vec![None; keys.len()];
        let mut redo_items = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if input.records.is_empty() {
                results[i] = Some(match &input.image {
                    Some((_, image)) => to_page(image),
                    None => Ok(Box::new([0u8; BLCKSZ])),
                });
            } else {
                redo_items.push((i, (keys[i], lsn, input)));
            }
        }
        if !redo_items.is_empty() {
            let items: Vec<_> = redo_items.iter().map(|(_, item)| *item).collect();
            let rebuilt = self.pool.materialize_many(TENANT, &items).await;
            for ((i, _), page) in redo_items.iter().zip(rebuilt) {
                results[*i] = Some(match page {
                    Ok(page) => to_page(&page),
                    Err(e) => Err(e.what),
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("not rebuilt".into())))
            .collect())
    }

    async fn slru_segment(&mut self, kind: SlruKind, segment: u32, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let first = segment * SLRU_PAGES_PER_SEGMENT;
        let keys: Vec<Key> = (0..bytes.len() / BLCKSZ)
            .map(|i| slru_key(kind, first + index_u32(i)))
            .collect();
        let ours = self.rebuild(&keys).await?;
        for (i, theirs) in bytes.chunks_exact(BLCKSZ).enumerate() {
            self.report.slru_pages += 1;
            let page = first + index_u32(i);
            match &ours[i] {
                Ok(our_page) if our_page[..] == *theirs => {
                    self.report.compared += 1;
                    self.report.identical += 1;
                }
                Ok(our_page) => {
                    let offset = theirs
                        .iter()
                        .zip(our_page.iter())
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    self.difference(&format!(
                        "{} page {page}: first difference at offset {offset} (Postgres 0x{:02X}, Quire 0x{:02X})",
                        kind.directory(),
                        theirs[offset],
                        our_page[offset]
                    ))?;
                }
                Err(what) => self.difference(&format!(
                    "{} page {page}: rebuild failed: {what}",
                    kind.directory()
                ))?,
            }
        }
        Ok(())
    }
}

/// A difference to report and how many pages it stands for (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Finding {
    line: String,
    pages: u64,
}

/// The differences in a fork's tail: one per written page of a fork the WAL
/// gave a size (`known`); one for a whole fork no WAL names, counting its
/// written pages, if it has any.
fn tail_findings(rel: RelTag, theirs: u32, known: bool, tail: &TailPages) -> Vec<Finding> {
    if known {
        return tail
            .written
            .iter()
            .map(|block| Finding {
                line: format!(
                    "relation {} fork {} block {block}: Postgres has the page, the WAL never reached it",
                    rel_name(rel),
                    rel.fork.name()
                ),
                pages: 1,
            })
            .collect();
    }
    if tail.written.is_empty() {
        return Vec::new();
    }
    let zero = if tail.zero > 0 {
        format!(" ({} of them all-zero)", tail.zero)
    } else {
        String::new()
    };
    vec![Finding {
        line: format!(
            "relation {} fork {}: {theirs} blocks in Postgres{zero}, unknown to Quire",
            rel_name(rel),
            rel.fork.name()
        ),
        pages: u64::try_from(tail.written.len()).unwrap_or(u64::MAX),
    }]
}

fn to_page(bytes: &[u8]) -> Result<Box<[u8; BLCKSZ]>, String> {
    Box::<[u8; BLCKSZ]>::try_from(bytes.to_vec().into_boxed_slice())
        .map_err(|b| format!("a page of {} bytes", b.len()))
}

/// Where a sequence page's data (`last_value`, `log_cnt`, `is_called`)
/// starts: its one tuple's offset plus the tuple header's length.
fn sequence_data(page: &[u8; BLCKSZ]) -> Option<usize> {
    let item = u32::from_le_bytes(page[24..28].try_into().ok()?);
    let offset = (item & 0x7FFF) as usize;
    let header = usize::from(*page.get(offset + 22)?);
    let data = offset + header;
    (data + 17 <= BLCKSZ).then_some(data)
}

/// `PageIsNew`: `pd_upper` is zero.
fn is_new(page: &[u8; BLCKSZ]) -> bool {
    page[14..16] == [0, 0]
}

/// The resource manager whose `rm_mask` fits a page of this fork, from the
/// shape of its special space; `None` when masking does not apply (a new
/// page, a visibility-map page).
fn mask_rmgr(fork: ForkNumber, theirs: &[u8; BLCKSZ], ours: &[u8; BLCKSZ]) -> Option<u8> {
    if !matches!(fork, ForkNumber::Main | ForkNumber::Init) || is_new(theirs) || is_new(ours) {
        return None;
    }
    let special = usize::from(u16::from_le_bytes([theirs[16], theirs[17]]));
    if special > BLCKSZ {
        return Some(RM_GENERIC_ID);
    }
    let size = BLCKSZ - special;
    let last_u16 = |p: &[u8; BLCKSZ]| u16::from_le_bytes([p[BLCKSZ - 2], p[BLCKSZ - 1]]);
    Some(match size {
        0 => RM_HEAP_ID,
        16 => match last_u16(theirs) {
            0xFF80 => RM_HASH_ID,
            0xFF81 => RM_GIST_ID,
            _ => RM_BTREE_ID,
        },
        8 => match last_u16(theirs) {
            0xFF82 => RM_SPGIST_ID,
            0xF091..=0xF093 => RM_BRIN_ID,
            _ if theirs[special..special + 4] == 0x1717u32.to_le_bytes() => RM_SEQ_ID,
            _ => RM_GIN_ID,
        },
        _ => RM_GENERIC_ID,
    })
}

/// A position in a batch or segment (at most 2^17 entries).
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Megabytes, for reports.
#[allow(clippy::cast_precision_loss, reason = "a rate for people to read")]
fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `spc/db/relfilenumber`.
fn rel_name(rel: RelTag) -> String {
    format!("{}/{}/{}", rel.spc_oid, rel.db_oid, rel.rel_number)
}

mod restart;
#[cfg(test)]
mod tests;
