//! Comparing pages: [`Checker`] takes Quire's page for every block of a
//! relation fork and SLRU segment (rebuilt from a local timeline, or read
//! from a running pageserver: [`PageSource`]) and compares it with
//! Postgres' file, byte for byte and then after Postgres' own masking,
//! counting and printing what differs.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};
use quire_postgres::wal::rmgr::{
    RM_BRIN_ID, RM_BTREE_ID, RM_GENERIC_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_HEAP_ID,
    RM_SEQ_ID, RM_SPGIST_ID, rmgr_name,
};
use quire_postgres::{Key, Lsn};
use quire_redo::RedoPool;
use quire_shard::{ReconstructInputs, Timeline};

use super::{BATCH, PRINTED_DIFFERENCES, TENANT, VerifyReport, remote};
use crate::datadir::{self, RelationFiles, SLRU_PAGES_PER_SEGMENT, TailPages};
use crate::ingest::slru_key;

/// Where the pages compared come from.
pub(super) enum PageSource<'a> {
    /// Rebuilt here from a timeline at an LSN.
    Local { timeline: &'a Timeline, lsn: Lsn },
    /// Read from a running pageserver over the page protocol.
    Remote(
        &'a mut quire_net::page_client::PageClient,
        quire_net::page_protocol::ReadLsn,
    ),
}

/// Compares pages and keeps the counts.
pub(super) struct Checker<'a, W: Write> {
    pub(super) pages: PageSource<'a>,
    pub(super) vm_without_map: &'a std::collections::HashSet<(RelTag, u32)>,
    pub(super) pool: &'a RedoPool,
    pub(super) report: &'a mut VerifyReport,
    pub(super) out: &'a mut W,
}

impl<W: Write> Checker<'_, W> {
    pub(super) fn difference(&mut self, line: &str) -> Result<()> {
        self.report.compared += 1;
        self.report.different += 1;
        if self.report.different <= PRINTED_DIFFERENCES {
            writeln!(self.out, "{line}")?;
        } else if self.report.different == PRINTED_DIFFERENCES + 1 {
            writeln!(self.out, "(further differences are counted, not printed)")?;
        }
        Ok(())
    }

    pub(super) async fn relation(
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
            PageSource::Remote(client, read) => return remote::fetch(client, *read, keys).await,
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

    pub(super) async fn slru_segment(
        &mut self,
        kind: SlruKind,
        segment: u32,
        path: &Path,
    ) -> Result<()> {
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
pub(super) struct Finding {
    pub(super) line: String,
    pub(super) pages: u64,
}

/// The differences in a fork's tail: one per written page of a fork the WAL
/// gave a size (`known`); one for a whole fork no WAL names, counting its
/// written pages, if it has any.
pub(super) fn tail_findings(
    rel: RelTag,
    theirs: u32,
    known: bool,
    tail: &TailPages,
) -> Vec<Finding> {
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

pub(super) fn to_page(bytes: &[u8]) -> Result<Box<[u8; BLCKSZ]>, String> {
    Box::<[u8; BLCKSZ]>::try_from(bytes.to_vec().into_boxed_slice())
        .map_err(|b| format!("a page of {} bytes", b.len()))
}

/// Where a sequence page's data (`last_value`, `log_cnt`, `is_called`)
/// starts: its one tuple's offset plus the tuple header's length.
pub(super) fn sequence_data(page: &[u8; BLCKSZ]) -> Option<usize> {
    let item = u32::from_le_bytes(page[24..28].try_into().ok()?);
    let offset = (item & 0x7FFF) as usize;
    let header = usize::from(*page.get(offset + 22)?);
    let data = offset + header;
    (data + 17 <= BLCKSZ).then_some(data)
}

/// `PageIsNew`: `pd_upper` is zero.
pub(super) fn is_new(page: &[u8; BLCKSZ]) -> bool {
    page[14..16] == [0, 0]
}

/// The resource manager whose `rm_mask` fits a page of this fork, from the
/// shape of its special space; `None` when masking does not apply (a new
/// page, a visibility-map page).
pub(super) fn mask_rmgr(
    fork: ForkNumber,
    theirs: &[u8; BLCKSZ],
    ours: &[u8; BLCKSZ],
) -> Option<u8> {
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
pub(super) fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Megabytes, for reports.
#[allow(clippy::cast_precision_loss, reason = "a rate for people to read")]
pub(super) fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `spc/db/relfilenumber`.
pub(super) fn rel_name(rel: RelTag) -> String {
    format!("{}/{}/{}", rel.spc_oid, rel.db_oid, rel.rel_number)
}
