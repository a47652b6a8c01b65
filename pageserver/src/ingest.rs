//! WAL ingest: each decoded record becomes values in a timeline.
//!
//! For a record at `[start, end)`, every block reference becomes a value of
//! that page's key at `end`: the restored full-page image (no redo needed),
//! or the whole record for Postgres redo (will-init when the record
//! initialises the page). A fork grows to cover every block a record
//! references. Non-page effects become values too: relation forks created,
//! truncated (with the visibility-map page the truncation cuts, as recovery
//! does, and a cut marker on each block cut off: [`cut`]) and dropped, databases created (`wal_log` through ordinary records,
//! `file_copy` by copying the template's pages) and dropped, relmapper
//! files, two-phase state files, `pg_xact` status bits and multixact offsets
//! and members (Rust redo records per SLRU page), SLRU pages zeroed,
//! visibility-map bits cleared without a block reference, each commit's
//! time under the commit-time key (the index from a timestamp to an LSN,
//! [`quire_shard::commit_time`]), and the running checkpoint: a `CheckPoint`
//! kept current record by record (next xid, OID, multixact), stored when
//! it changes ([`checkpoint`]). The compute's relation-size messages raise
//! a fork's size, never lower it ([`relsize`]).
//!
//! A record that references `InvalidBlockNumber` (0xFFFFFFFF) decodes, as
//! `pg_waldump` decodes it, but no key names that block: ingest refuses
//! the whole record ([`quire_postgres::key::InvalidKey`]) before storing
//! any of it.
//!
//! A record the timeline already holds (one whose end, rounded up to 8, is
//! at or below its last record LSN: WAL read again after a restart) is
//! skipped. [`resume`] rebuilds this state from a timeline's own keys.
//!
//! A shard of a sharded tenant ([`WalIngest::with_shard`]) ingests the
//! whole stream but stores only the relation blocks it owns; every other
//! key goes to every shard, since [`resume`] rebuilds the state above from
//! the shard's own size and SLRU keys (see [`crate::shard_filter`]). Every
//! value goes through the shard's filter. The sizes kept in memory cover
//! every relation on every shard; `CREATE DATABASE ... STRATEGY file_copy`
//! is refused there ([`crate::shard_filter::ShardedFileCopy`]).
//!
//! Not kept: free-space-map page changes (Postgres never WAL-logs them),
//! `pg_subtrans`
//! (rebuilt by Postgres at start), `commit_ts`, and SLRU segment removal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use quire_postgres::control::CheckPoint;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, Oid, RelFileLocator, RelTag};
use quire_postgres::wal::effects::{
    DbCreateStrategy, Effect, PageEffect, PageUpdate, XactStatus, page_effects, record_effects,
};
use quire_postgres::wal::record::{BlockRef, DecodedRecord, decode_record};
use quire_postgres::wal::vm::{VmPageClear, vm_page_clears};
use quire_postgres::{Key, Lsn};
use quire_redo::rust_redo::{
    CLOG_XACTS_PER_PAGE, MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE,
    VM_HEAP_BLOCKS_PER_PAGE,
};
use quire_redo::{RedoPool, RedoRecord, TenantKey};
use quire_shard::commit_time::commit_time_value;
use quire_shard::keyspace::{dropped_value, fork_dropped_value, size_value};
use quire_shard::{Timeline, Value};

use crate::datadir::SLRU_PAGES_PER_SEGMENT;
use crate::ingest::checkpoint::RunningCheckpoint;
use crate::shard_filter::{ShardFilter, ShardTimeline};

pub mod checkpoint;
mod cut;
mod relsize;
pub mod resume;
mod stats;

pub use stats::IngestStats;

pub use resume::{wal_restart_lsn, wal_resume_lsn};

/// Open-layer size at which ingest freezes and flushes to an L0 layer.
pub const FLUSH_BYTES: usize = 256 * 1024 * 1024;

/// The state ingest keeps beside the timeline.
pub struct WalIngest {
    timeline: ShardTimeline,
    sizes: HashMap<RelTag, u32>,
    slru_pages: HashSet<(SlruKind, u32)>,
    slru_segments: HashMap<(SlruKind, u32), u32>,
    redo: Option<(Rc<RedoPool>, TenantKey)>,
    stats: IngestStats,
    vm_map_not_in_wal: HashSet<(RelTag, u32)>,
    checkpoint: RunningCheckpoint,
}

impl WalIngest {
    /// Ingest into `timeline`, whose relation sizes and SLRU pages are
    /// `sizes` and `slru_pages` (as an import left them), with `checkpoint`
    /// the `CheckPoint` to keep running (the import's; `None` waits for
    /// the first checkpoint record). `redo` rebuilds template pages for
    /// `CREATE DATABASE ... STRATEGY file_copy`.
    pub fn new(
        timeline: Rc<Timeline>,
        sizes: HashMap<RelTag, u32>,
        slru_pages: HashSet<(SlruKind, u32)>,
        checkpoint: Option<CheckPoint>,
        redo: Option<(Rc<RedoPool>, TenantKey)>,
    ) -> WalIngest {
        let mut slru_segments = HashMap::new();
        for &(kind, page) in &slru_pages {
            let size = slru_segments
                .entry((kind, page / SLRU_PAGES_PER_SEGMENT))
                .or_insert(0);
            *size = (*size).max(page % SLRU_PAGES_PER_SEGMENT + 1);
        }
        WalIngest {
            timeline: ShardTimeline::new(timeline, ShardFilter::unsharded()),
            sizes,
            slru_pages,
            slru_segments,
            redo,
            stats: IngestStats::default(),
            vm_map_not_in_wal: HashSet::new(),
            checkpoint: RunningCheckpoint::new(checkpoint),
        }
    }

    /// This ingest as `shard` runs it: only the relation blocks `shard`
    /// owns are stored (an unsharded filter, the default, keeps all).
    #[must_use]
    pub fn with_shard(mut self, shard: ShardFilter) -> WalIngest {
        self.timeline.set_filter(shard);
        self
    }

    /// The timeline ingested into.
    pub fn timeline(&self) -> &Rc<Timeline> {
        self.timeline.rc()
    }

    /// The counters.
    pub fn stats(&self) -> IngestStats {
        IngestStats {
            not_owned_values: self.timeline.not_kept(),
            ..self.stats
        }
    }

    /// Relation forks and their sizes in blocks.
    pub fn relation_sizes(&self) -> &HashMap<RelTag, u32> {
        &self.sizes
    }

    /// Visibility-map pages whose last full-page image left the map out (a
    /// standard-page image whose hole is the map): their bits are not in
    /// the WAL, and Postgres' own recovery clears them too. Verification
    /// bookkeeping only, kept in memory: a resumed ingest starts with none
    /// (see [`WalIngest::carry_vm_pages_without_map`]).
    pub fn vm_pages_without_map(&self) -> &HashSet<(RelTag, u32)> {
        &self.vm_map_not_in_wal
    }

    /// Takes over another ingest's [`WalIngest::vm_pages_without_map`] (a
    /// verification that restarts its ingest midway carries them across).
    pub fn carry_vm_pages_without_map(&mut self, pages: HashSet<(RelTag, u32)>) {
        self.vm_map_not_in_wal.extend(pages);
    }

    /// The running checkpoint as of the last record ingested.
    pub fn checkpoint(&self) -> Option<&CheckPoint> {
        self.checkpoint.value()
    }

    /// SLRU pages that exist.
    pub fn slru_pages(&self) -> &HashSet<(SlruKind, u32)> {
        &self.slru_pages
    }

    /// Ingests the record `bytes` that starts at `start` and ends at `end`
    /// (its last byte plus one). Values go in at the end rounded up to 8
    /// bytes, the `EndRecPtr` recovery stamps on the pages it replays;
    /// returns that LSN.
    ///
    /// A record ending at or below the timeline's last record LSN is
    /// already held (WAL read again after a restart): it is skipped,
    /// counted in [`IngestStats::skipped_records`].
    pub async fn ingest_record(&mut self, start: Lsn, end: Lsn, bytes: &[u8]) -> Result<Lsn> {
        let end = end
            .align_up(8)
            .with_context(|| format!("record at {start} ends past the LSN space"))?;
        if end <= self.timeline.last_record_lsn() {
            self.stats.skipped_records += 1;
            return Ok(end);
        }
        let record = decode_record(bytes).with_context(|| format!("record at {start}"))?;
        let pages = page_effects(&record, end).with_context(|| format!("record at {start}"))?;
        let effects = record_effects(&record).with_context(|| format!("record at {start}"))?;
        let keys = page_keys(start, &pages)?;
        self.stats.records += 1;
        self.stats.bytes += bytes.len() as u64;

        self.cut_earlier_forks(&pages, end).await?;
        let mut grown: BTreeMap<RelTag, u32> = BTreeMap::new();
        let vm_clears = rust_vm_clears(&record, &pages);
        let any_postgres = pages
            .iter()
            .zip(&vm_clears)
            .any(|(p, vm)| matches!(p.update, PageUpdate::Apply { .. }) && vm.is_none());
        let mut any_rust_page = false;
        let stored: Rc<[u8]> = if any_postgres {
            RedoRecord::Postgres {
                start,
                end,
                record: bytes,
            }
            .encode()
            .into()
        } else {
            Rc::from(Vec::new())
        };
        for (((page, block_ref), vm_clear), key) in
            pages.iter().zip(record.blocks()).zip(vm_clears).zip(keys)
        {
            if page.rel.fork == ForkNumber::VisibilityMap {
                self.note_vm_map_source(page.rel, page.block.0, &block_ref);
            }
            let value = match (&page.update, vm_clear) {
                (PageUpdate::Image(image), _) => {
                    self.stats.page_images += 1;
                    Value::Image(Rc::from(&image[..]))
                }
                (PageUpdate::Apply { .. }, Some(clear)) => {
                    any_rust_page = true;
                    self.stats.rust_page_records += 1;
                    Value::Record {
                        will_init: false,
                        bytes: RedoRecord::VmClearLogged {
                            lsn: end,
                            heap_blocks: clear.heap_blocks.to_vec(),
                            bits: clear.bits,
                        }
                        .encode()
                        .into(),
                    }
                }
                (PageUpdate::Apply { will_init }, None) => {
                    self.stats.page_records += 1;
                    Value::Record {
                        will_init: *will_init,
                        bytes: Rc::clone(&stored),
                    }
                }
            };
            self.timeline.put(key, end, value).await?;
            let size = self.sizes.get(&page.rel).copied().unwrap_or(0);
            if page.block.0 >= size || !self.sizes.contains_key(&page.rel) {
                let new = grown.entry(page.rel).or_insert(size);
                // At most MaxBlockNumber + 1 = u32::MAX: the key was valid.
                *new = (*new).max(page.block.0.saturating_add(1));
            }
        }
        for (rel, blocks) in grown {
            self.set_size(rel, blocks, end).await?;
        }

        self.note_checkpoint(record.header.xid, &effects, end)
            .await?;
        let mut rust = false;
        for effect in effects {
            rust |= self.apply_effect(effect, end).await?;
        }
        if any_postgres {
            self.stats.postgres_redo_records += 1;
        } else if any_rust_page {
            self.stats.rust_redo_records += 1;
        } else if !pages.is_empty() {
            self.stats.image_records += 1;
        } else if rust {
            self.stats.rust_redo_records += 1;
        } else {
            self.stats.other_records += 1;
        }
        self.timeline.advance(end);
        if self.timeline.open_layer_bytes() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(end)
    }

    /// A map page logged as a standard page leaves its map out as the
    /// page's hole (CREATE DATABASE ... STRATEGY `wal_log`). The bits stay
    /// lost until a whole image or a re-initialisation replaces the page:
    /// later records (bit clears, with `full_page_writes` off) only change
    /// what they name.
    fn note_vm_map_source(&mut self, rel: RelTag, block: u32, block_ref: &BlockRef<'_>) {
        match block_ref.image.as_ref().filter(|i| i.is_applied()) {
            Some(image) if image.hole_length > 0 => {
                self.vm_map_not_in_wal.insert((rel, block));
            }
            Some(_) => {
                self.vm_map_not_in_wal.remove(&(rel, block));
            }
            None if block_ref.will_init => {
                self.vm_map_not_in_wal.remove(&(rel, block));
            }
            None => {}
        }
    }

    /// Writes the open layer to disk.
    pub async fn flush(&mut self) -> Result<()> {
        self.timeline.freeze();
        self.timeline.flush().await?;
        self.stats.flushes += 1;
        Ok(())
    }

    async fn set_size(&mut self, rel: RelTag, blocks: u32, lsn: Lsn) -> Result<()> {
        self.sizes.insert(rel, blocks);
        self.timeline
            .put(Key::rel_size(rel), lsn, size_value(blocks))
            .await?;
        Ok(())
    }

    /// The fork goes; its size key keeps the size it had, for a later
    /// fork of the same relation file number to cut ([`cut`]).
    async fn drop_fork(&mut self, rel: RelTag, lsn: Lsn) -> Result<()> {
        if let Some(blocks) = self.sizes.remove(&rel) {
            self.timeline
                .put(Key::rel_size(rel), lsn, fork_dropped_value(blocks))
                .await?;
        }
        Ok(())
    }

    async fn put_rust(
        &mut self,
        key: Key,
        lsn: Lsn,
        record: &RedoRecord<'_>,
        init: bool,
    ) -> Result<()> {
        self.timeline
            .put(
                key,
                lsn,
                Value::Record {
                    will_init: init,
                    bytes: record.encode().into(),
                },
            )
            .await?;
        Ok(())
    }

    /// A Rust record on an SLRU page; a page that does not exist yet starts
    /// from zeros (will-init), as Postgres would read it.
    async fn put_slru(
        &mut self,
        kind: SlruKind,
        page: u32,
        lsn: Lsn,
        record: &RedoRecord<'_>,
    ) -> Result<()> {
        let init = self.note_slru_page(kind, page, lsn).await?;
        let key = slru_key(kind, page);
        self.put_rust(key, lsn, record, init).await
    }

    /// An SLRU page zeroed (`ZEROPAGE` records): a page of zeros.
    async fn zero_slru_page(&mut self, slru: SlruKind, page: i64, lsn: Lsn) -> Result<()> {
        let page = u32::try_from(page).context("SLRU page number past 2^32")?;
        self.note_slru_page(slru, page, lsn).await?;
        self.timeline
            .put(
                slru_key(slru, page),
                lsn,
                Value::Image(Rc::from(&[0u8; BLCKSZ][..])),
            )
            .await?;
        Ok(())
    }

    /// Records that an SLRU page exists; true if it is new.
    async fn note_slru_page(&mut self, kind: SlruKind, page: u32, lsn: Lsn) -> Result<bool> {
        if !self.slru_pages.insert((kind, page)) {
            return Ok(false);
        }
        let segment = page / SLRU_PAGES_PER_SEGMENT;
        let size = self.slru_segments.entry((kind, segment)).or_insert(0);
        if page % SLRU_PAGES_PER_SEGMENT + 1 > *size {
            *size = page % SLRU_PAGES_PER_SEGMENT + 1;
            let blocks = *size;
            self.timeline
                .put(
                    Key::slru_segment_size(kind, segment),
                    lsn,
                    size_value(blocks),
                )
                .await?;
        }
        Ok(true)
    }

    /// Applies one non-page effect; true if it made a Rust redo record.
    async fn apply_effect(&mut self, effect: Effect, lsn: Lsn) -> Result<bool> {
        match effect {
            Effect::RelCreate(rel) => {
                if !self.sizes.contains_key(&rel) {
                    self.cut_earlier_fork(rel, lsn, &[]).await?;
                    self.set_size(rel, 0, lsn).await?;
                }
            }
            Effect::RelTruncate {
                rel,
                blocks,
                main,
                vm,
                fsm,
            } => {
                let forks = cut::TruncatedForks { main, fsm, vm };
                return self.truncate_relation(rel, blocks, forks, lsn).await;
            }
            Effect::RelDrop(locators) => {
                for locator in locators {
                    for fork in ALL_FORKS {
                        self.drop_fork(RelTag::new(locator, fork), lsn).await?;
                    }
                }
            }
            Effect::DbCreate {
                db_oid,
                spc_oid,
                strategy,
            } => {
                if let DbCreateStrategy::FileCopy {
                    src_db_oid,
                    src_spc_oid,
                } = strategy
                {
                    self.copy_database((src_spc_oid, src_db_oid), (spc_oid, db_oid), lsn)
                        .await?;
                }
            }
            Effect::DbDrop { db_oid, spc_oids } => {
                self.drop_database(db_oid, &spc_oids, lsn).await?;
            }
            Effect::RelMapUpdate {
                db_oid,
                spc_oid,
                file,
            } => {
                self.timeline
                    .put(
                        Key::rel_map(spc_oid, db_oid),
                        lsn,
                        Value::Image(file.into()),
                    )
                    .await?;
            }
            Effect::XactStatus {
                status,
                xid,
                subxacts,
                prepared,
                time,
            } => {
                self.xact_status(status, xid, subxacts, prepared, lsn)
                    .await?;
                if status == XactStatus::Committed {
                    self.timeline
                        .put(Key::commit_time(), lsn, commit_time_value(lsn, time))
                        .await?;
                }
                return Ok(true);
            }
            Effect::TwoPhasePrepare { xid, file } => {
                self.timeline
                    .put(Key::twophase_file(0, xid.0), lsn, Value::Image(file.into()))
                    .await?;
            }
            Effect::MultiXactCreate {
                mid,
                offset,
                members,
            } => {
                self.multixact_create(mid.0, offset, &members, lsn).await?;
                return Ok(true);
            }
            Effect::SlruZeroPage { slru, page } => self.zero_slru_page(slru, page, lsn).await?,
            Effect::VmClear {
                rel,
                heap_block,
                bits,
            } => return self.vm_clear(rel, heap_block, bits, lsn).await,
            Effect::RelSizeAtLeast { rel, blocks } => self.size_at_least(rel, blocks, lsn).await?,
            Effect::RelSizeMessageMalformed(why) => self.relsize_malformed(why, lsn),
            // The running checkpoint took these (`note_record`).
            Effect::Checkpoint { .. }
            | Effect::MultiXactTruncate { .. }
            | Effect::ClogTruncate { .. }
            | Effect::NextOid(_) => {}
        }
        Ok(false)
    }

    /// A transaction's final status in `pg_xact`, one Rust record per page;
    /// a finished prepared transaction's state file goes.
    async fn xact_status(
        &mut self,
        status: XactStatus,
        xid: quire_postgres::types::TransactionId,
        subxacts: Vec<quire_postgres::types::TransactionId>,
        prepared: bool,
        lsn: Lsn,
    ) -> Result<()> {
        let code = match status {
            XactStatus::Committed => 1,
            XactStatus::Aborted => 2,
        };
        let mut by_page: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for x in std::iter::once(xid).chain(subxacts) {
            by_page
                .entry(x.0 / CLOG_XACTS_PER_PAGE)
                .or_default()
                .push(x);
        }
        for (page, xids) in by_page {
            let record = RedoRecord::ClogSetStatus { status: code, xids };
            self.put_slru(SlruKind::Clog, page, lsn, &record).await?;
        }
        if prepared {
            self.timeline
                .put(Key::twophase_file(0, xid.0), lsn, dropped_value())
                .await?;
        }
        Ok(())
    }

    /// Every fork of the database's relations, and its relmapper files, go.
    async fn drop_database(&mut self, db_oid: Oid, spc_oids: &[Oid], lsn: Lsn) -> Result<()> {
        let doomed: Vec<RelTag> = self
            .sizes
            .keys()
            .filter(|r| r.db_oid == db_oid && spc_oids.contains(&r.spc_oid))
            .copied()
            .collect();
        for rel in doomed {
            self.drop_fork(rel, lsn).await?;
        }
        for &spc in spc_oids {
            self.timeline
                .put(Key::rel_map(spc, db_oid), lsn, dropped_value())
                .await?;
        }
        Ok(())
    }

    /// Visibility-map bits a heap record cleared without referencing the
    /// map page (Rust redo); nothing if the map does not reach the block.
    async fn vm_clear(
        &mut self,
        rel: RelFileLocator,
        heap_block: BlockNo,
        bits: u8,
        lsn: Lsn,
    ) -> Result<bool> {
        let vm = RelTag::new(rel, ForkNumber::VisibilityMap);
        let map_block = heap_block.0 / VM_HEAP_BLOCKS_PER_PAGE;
        if self.sizes.get(&vm).is_none_or(|&s| map_block >= s) {
            return Ok(false);
        }
        let record = RedoRecord::VmClear {
            heap_blocks: vec![heap_block.0],
            bits,
        };
        self.put_rust(Key::rel_block(vm, BlockNo(map_block)), lsn, &record, false)
            .await?;
        Ok(true)
    }

    /// `RecordNewMultiXact`: the multixact's offset, the next one's offset
    /// (Postgres 17.11 sets both), and each member.
    async fn multixact_create(
        &mut self,
        mid: u32,
        offset: u32,
        members: &[(quire_postgres::types::TransactionId, u32)],
        lsn: Lsn,
    ) -> Result<()> {
        let mut next = mid.wrapping_add(1);
        if next == 0 {
            next = 1;
        }
        let count = u32::try_from(members.len()).context("multixact with 2^32 members")?;
        let mut next_offset = offset.wrapping_add(count);
        if next_offset == 0 {
            next_offset = 1;
        }
        let mut by_page: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
        by_page
            .entry(mid / MULTIXACT_OFFSETS_PER_PAGE)
            .or_default()
            .push((mid, offset));
        by_page
            .entry(next / MULTIXACT_OFFSETS_PER_PAGE)
            .or_default()
            .push((next, next_offset));
        for (page, entries) in by_page {
            let record = RedoRecord::MultiXactOffsets(entries);
            self.put_slru(SlruKind::MultiXactOffsets, page, lsn, &record)
                .await?;
        }
        let mut by_page: BTreeMap<u32, Vec<_>> = BTreeMap::new();
        for (i, (xid, status)) in members.iter().enumerate() {
            let at = offset.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX));
            let status = u8::try_from(*status).context("multixact member status")?;
            by_page
                .entry(at / MULTIXACT_MEMBERS_PER_PAGE)
                .or_default()
                .push((at, *xid, status));
        }
        for (page, entries) in by_page {
            let record = RedoRecord::MultiXactMembers(entries);
            self.put_slru(SlruKind::MultiXactMembers, page, lsn, &record)
                .await?;
        }
        Ok(())
    }

    /// `CREATE DATABASE ... STRATEGY file_copy`: the template's files are
    /// copied outside the WAL, so its pages at this LSN become images. A
    /// shard of a sharded tenant refuses it ([`ShardFilter::refuse_file_copy`]).
    async fn copy_database(&mut self, from: (Oid, Oid), to: (Oid, Oid), lsn: Lsn) -> Result<()> {
        self.timeline.filter().refuse_file_copy(lsn)?;
        let Some((pool, tenant)) = self.redo.clone() else {
            bail!(
                "CREATE DATABASE with STRATEGY file_copy at {lsn} needs redo to copy the template"
            );
        };
        let source: Vec<(RelTag, u32)> = self
            .sizes
            .iter()
            .filter(|(r, _)| (r.spc_oid, r.db_oid) == from)
            .map(|(r, s)| (*r, *s))
            .collect();
        for (rel, blocks) in source {
            let target = RelTag {
                spc_oid: to.0,
                db_oid: to.1,
                ..rel
            };
            let mut copied = Vec::new();
            for block in 0..blocks {
                let key = Key::rel_block(rel, BlockNo(block));
                let inputs = self.timeline.get(key, lsn).await?;
                let Some(page) =
                    quire_shard::materialize(&pool.for_tenant(tenant), key, lsn, &inputs).await?
                else {
                    continue;
                };
                self.timeline
                    .put(
                        Key::rel_block(target, BlockNo(block)),
                        lsn,
                        Value::Image(page),
                    )
                    .await?;
                copied.push(block);
            }
            if !self.sizes.contains_key(&target) {
                self.cut_earlier_fork(target, lsn, &copied).await?;
            }
            self.set_size(target, blocks, lsn).await?;
        }
        Ok(())
    }
}

const ALL_FORKS: [ForkNumber; 4] = [
    ForkNumber::Main,
    ForkNumber::Fsm,
    ForkNumber::VisibilityMap,
    ForkNumber::Init,
];

/// The key of SLRU page `page` (counted from the SLRU's start).
pub fn slru_key(kind: SlruKind, page: u32) -> Key {
    Key::slru_block(
        kind,
        page / SLRU_PAGES_PER_SEGMENT,
        page % SLRU_PAGES_PER_SEGMENT,
    )
}

/// The key of each page a record changes, checked before anything is
/// stored: a record naming a block no key can (`InvalidBlockNumber`) is
/// refused whole.
fn page_keys(start: Lsn, pages: &[PageEffect]) -> Result<Vec<Key>> {
    pages
        .iter()
        .map(|page| {
            Key::try_rel_block(page.rel, page.block).with_context(|| {
                format!(
                    "record at {start} references block {} of {}",
                    page.block, page.rel
                )
            })
        })
        .collect()
}

/// For each page update: the Rust form of a visibility-map page change a
/// heap record names (bit clears only), or `None` (an image, or Postgres).
fn rust_vm_clears(record: &DecodedRecord<'_>, pages: &[PageEffect]) -> Vec<Option<VmPageClear>> {
    pages
        .iter()
        .zip(record.blocks())
        .map(|(page, block_ref)| match page.update {
            PageUpdate::Apply { will_init: false }
                if page.rel.fork == ForkNumber::VisibilityMap =>
            {
                vm_page_clears(record, block_ref.id)
            }
            _ => None,
        })
        .collect()
}
