//! Cut blocks through ingest, on synthetic records: a truncation followed
//! by a raise (relation-size message, WAL naming a later block) leaves the
//! gap without content above the cut and with the old pages below it,
//! across a flush, a reload and a resume; the FSM and VM forks cut by
//! their flags; each shard marking only its own blocks; a dropped fork's
//! relation file number used again; and what a cut of 10^5 blocks costs.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use quire_net::id::ShardIdentity;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::relsize::{logical_message_main_data, relsize_payload};
use quire_postgres::wal::rmgr::{RM_LOGICALMSG_ID, RM_SMGR_ID, RM_XACT_ID};
use quire_postgres::wal::writer::{BlockToWrite, build_record};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, ReconstructInputs, Timeline};

use super::fsm_blocks_kept;
use crate::ingest::WalIngest;
use crate::shard_filter::ShardFilter;

const LOCATOR: RelFileLocator = RelFileLocator {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16_384,
};

fn fork(fork: ForkNumber) -> RelTag {
    RelTag::new(LOCATOR, fork)
}

fn run(test: impl AsyncFnOnce(PathBuf) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        test(path).await;
    })
    .unwrap();
}

const TENANT: [u8; 16] = [1; 16];
const TIMELINE: [u8; 16] = [2; 16];

async fn empty_timeline(dir: &Path) -> Rc<Timeline> {
    Rc::new(
        Timeline::create(
            dir,
            TENANT,
            TIMELINE,
            Lsn(0x1000),
            CoreContext::new(8 << 20),
        )
        .await
        .unwrap(),
    )
}

/// A page whose bytes say which block it was and when.
fn page(block: u32, round: u8) -> Box<[u8; BLCKSZ]> {
    let mut page = Box::new([round; BLCKSZ]);
    // Past the page header, whose LSN a restored image gets.
    page[100..104].copy_from_slice(&block.to_le_bytes());
    page
}

/// Feeds records to one ingest, one after another.
struct Feeder {
    ingest: WalIngest,
    next: u64,
}

impl Feeder {
    fn new(timeline: Rc<Timeline>, shard: ShardFilter) -> Feeder {
        Feeder {
            ingest: WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None)
                .with_shard(shard),
            next: 0x2000,
        }
    }

    async fn feed(&mut self, record: &[u8]) -> Lsn {
        let start = Lsn(self.next);
        self.next += (record.len() as u64).next_multiple_of(8);
        self.ingest
            .ingest_record(start, Lsn(start.0 + record.len() as u64), record)
            .await
            .unwrap()
    }

    /// A full-page image of `block` of `rel`'s fork `fork`.
    async fn image(&mut self, rel: RelFileLocator, fork: ForkNumber, block: u32, round: u8) -> Lsn {
        let page = page(block, round);
        let blocks = [BlockToWrite {
            id: 0,
            rel,
            fork: fork as u8,
            block,
            will_init: false,
            image: Some((&page, 0, 0)),
            data: &[],
        }];
        let record = build_record(RM_LOGICALMSG_ID, 0, 1, Lsn(0x100), &blocks, &[9; 8]).unwrap();
        self.feed(&record).await
    }

    /// Images of blocks `0..blocks` of the main fork.
    async fn fill(&mut self, blocks: u32, round: u8) -> Lsn {
        let mut lsn = Lsn(0);
        for block in 0..blocks {
            lsn = self.image(LOCATOR, ForkNumber::Main, block, round).await;
        }
        lsn
    }

    /// `XLOG_SMGR_TRUNCATE` to `blocks` heap blocks with `flags`
    /// (1 main, 2 VM, 4 FSM).
    async fn truncate(&mut self, blocks: u32, flags: u32) -> Lsn {
        let mut main = blocks.to_le_bytes().to_vec();
        main.extend_from_slice(&locator_bytes(LOCATOR));
        main.extend_from_slice(&flags.to_le_bytes());
        let record = build_record(RM_SMGR_ID, 0x20, 0, Lsn(0x100), &[], &main).unwrap();
        self.feed(&record).await
    }

    /// `XLOG_SMGR_CREATE` of the main fork.
    async fn create(&mut self) -> Lsn {
        let mut main = locator_bytes(LOCATOR);
        main.extend_from_slice(&0u32.to_le_bytes());
        let record = build_record(RM_SMGR_ID, 0x10, 0, Lsn(0x100), &[], &main).unwrap();
        self.feed(&record).await
    }

    /// A commit that drops the relation (every fork).
    async fn commit_dropping(&mut self) -> Lsn {
        let mut main = 0i64.to_le_bytes().to_vec();
        main.extend_from_slice(&0x004u32.to_le_bytes()); // XACT_XINFO_HAS_RELFILELOCATORS
        main.extend_from_slice(&1u32.to_le_bytes());
        main.extend_from_slice(&locator_bytes(LOCATOR));
        let record = build_record(RM_XACT_ID, 0x80, 700, Lsn(0x100), &[], &main).unwrap();
        self.feed(&record).await
    }

    async fn size_message(&mut self, rel: RelTag, blocks: u32) -> Lsn {
        let main =
            logical_message_main_data(5, false, b"quire.relsize", &relsize_payload(rel, blocks));
        let record = build_record(RM_LOGICALMSG_ID, 0, 0, Lsn(0x100), &[], &main).unwrap();
        self.feed(&record).await
    }

    async fn get(&self, rel: RelTag, block: u32, lsn: Lsn) -> ReconstructInputs {
        let key = Key::rel_block(rel, BlockNo(block));
        self.ingest.timeline().get(key, lsn).await.unwrap()
    }

    async fn size(&self, rel: RelTag, lsn: Lsn) -> Option<u32> {
        self.ingest.timeline().rel_size(rel, lsn).await.unwrap()
    }
}

fn locator_bytes(rel: RelFileLocator) -> Vec<u8> {
    [rel.spc_oid, rel.db_oid, rel.rel_number]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// The image `inputs` hold, as (block, round) from [`page`].
fn image_of(inputs: &ReconstructInputs) -> Option<(u32, u8)> {
    let (_, image) = inputs.image.as_ref()?;
    assert!(inputs.records.is_empty(), "{inputs:?}");
    Some((
        u32::from_le_bytes(image[100..104].try_into().unwrap()),
        image[200],
    ))
}

/// Blocks `range` of the main fork hold no content at `lsn`.
async fn assert_cut(feed: &Feeder, range: std::ops::Range<u32>, lsn: Lsn, context: &str) {
    for block in range {
        let inputs = feed.get(fork(ForkNumber::Main), block, lsn).await;
        assert!(
            inputs.is_empty(),
            "{context}: block {block} at {lsn}: {inputs:?}"
        );
    }
}

#[test]
fn truncated_blocks_stay_cut_when_the_fork_grows_back() {
    run(async |root| {
        let mut feed = Feeder::new(empty_timeline(&root).await, ShardFilter::unsharded());
        let main = fork(ForkNumber::Main);
        let filled = feed.fill(20, 1).await;
        let cut = feed.truncate(8, 1).await;
        assert_eq!(feed.size(main, cut).await, Some(8));
        assert_eq!(feed.ingest.stats().cut_blocks, 12);
        let raised = feed.size_message(main, 14).await;
        assert_eq!(feed.size(main, raised).await, Some(14));
        // An image of block 17 grows the fork over the rest of the gap.
        let grown = feed.image(LOCATOR, ForkNumber::Main, 17, 2).await;
        assert_eq!(feed.size(main, grown).await, Some(18));

        for lsn in [cut, raised, grown] {
            assert_cut(&feed, 8..17, lsn, "after the cut").await;
        }
        assert_eq!(image_of(&feed.get(main, 17, grown).await), Some((17, 2)));
        assert_eq!(image_of(&feed.get(main, 7, grown).await), Some((7, 1)));
        // Before the cut (a branch there), the old pages.
        for block in 8..20 {
            assert_eq!(
                image_of(&feed.get(main, block, filled).await),
                Some((block, 1))
            );
        }

        // On disk, reloaded and resumed: the same.
        feed.ingest.flush().await.unwrap();
        let dir = feed.ingest.timeline().directory().to_owned();
        drop(feed);
        let timeline = Rc::new(
            Timeline::load(&dir, TENANT, TIMELINE, CoreContext::new(8 << 20), None)
                .await
                .unwrap(),
        );
        let mut feed = Feeder {
            ingest: WalIngest::resume(timeline, None).await.unwrap(),
            next: 0x0100_0000,
        };
        assert_eq!(feed.ingest.relation_sizes().get(&main), Some(&18));
        assert_cut(&feed, 8..17, grown, "reloaded").await;
        assert_eq!(image_of(&feed.get(main, 12, filled).await), Some((12, 1)));
        // The resumed ingest raises again: still cut.
        let raised = feed.size_message(main, 20).await;
        assert_cut(&feed, 8..17, raised, "raised after the resume").await;
        assert_cut(&feed, 18..20, raised, "raised after the resume").await;
    });
}

#[test]
fn the_fsm_and_vm_forks_are_cut_by_their_flags() {
    run(async |root| {
        let mut feed = Feeder::new(empty_timeline(&root).await, ShardFilter::unsharded());
        let (fsm, vm) = (fork(ForkNumber::Fsm), fork(ForkNumber::VisibilityMap));
        feed.fill(4, 1).await;
        for block in 0..6 {
            feed.image(LOCATOR, ForkNumber::Fsm, block, 1).await;
            feed.image(LOCATOR, ForkNumber::VisibilityMap, block, 1)
                .await;
        }
        // Main only: the other forks keep their size.
        let lsn = feed.truncate(2, 1).await;
        assert_eq!(
            (feed.size(fsm, lsn).await, feed.size(vm, lsn).await),
            (Some(6), Some(6))
        );
        // Heap cut to 0: the map keeps no page, the FSM its first two
        // (the root and the second level) as Postgres keeps them.
        let lsn = feed.truncate(0, 1 | 2 | 4).await;
        assert_eq!(feed.size(fsm, lsn).await, Some(2));
        assert_eq!(feed.size(vm, lsn).await, Some(0));
        let raised_fsm = feed.size_message(fsm, 6).await;
        let raised_vm = feed.size_message(vm, 6).await;
        for block in 2..6 {
            assert!(
                feed.get(fsm, block, raised_vm).await.is_empty(),
                "FSM block {block}"
            );
        }
        for block in 0..6 {
            assert!(
                feed.get(vm, block, raised_vm).await.is_empty(),
                "VM block {block}"
            );
        }
        assert_eq!(image_of(&feed.get(fsm, 1, raised_fsm).await), Some((1, 1)));
    });
}

#[test]
fn fsm_sizes_after_a_truncation_follow_the_map_layout() {
    // (heap blocks, FSM pages kept): the root and the second level always;
    // each leaf covers 4069 heap blocks; a second-level page 4069 leaves.
    for (heap, kept) in [
        (0, 2),
        (1, 3),
        (4068, 3),
        (4069, 3),
        (4070, 4),
        // The first leaf under the second second-level page: past the root,
        // the first second-level page and its 4069 leaves, and its parent.
        (4069 * 4069, 4069 + 1 + 2),
        (4069 * 4069 + 1, 4069 + 1 + 2 + 1),
    ] {
        assert_eq!(fsm_blocks_kept(heap), kept, "{heap} heap blocks");
    }
}

#[test]
fn each_shard_marks_only_the_blocks_it_owns() {
    run(async |root| {
        let main = fork(ForkNumber::Main);
        let mut marked = 0;
        for number in 0..2 {
            let identity = ShardIdentity::new(number, 2, 8).unwrap();
            let timeline = empty_timeline(&root.join(format!("shard-{number}"))).await;
            let mut feed = Feeder::new(timeline, ShardFilter::new(identity));
            feed.fill(64, 1).await;
            let cut = feed.truncate(3, 1).await;
            let raised = feed.size_message(main, 64).await;
            assert_eq!(feed.size(main, raised).await, Some(64), "shard {number}");
            for block in 0..64 {
                let key = Key::rel_block(main, BlockNo(block));
                let inputs = feed.get(main, block, raised).await;
                if !identity.owns(&key) {
                    assert!(inputs.is_empty(), "shard {number} block {block}");
                } else if block < 3 {
                    assert_eq!(image_of(&inputs), Some((block, 1)), "shard {number}");
                } else {
                    assert!(
                        inputs.is_empty(),
                        "shard {number} block {block}: {inputs:?}"
                    );
                    // The marker is this shard's own value, from the cut on.
                    assert_eq!(
                        image_of(&feed.get(main, block, Lsn(cut.0 - 8)).await),
                        Some((block, 1))
                    );
                }
            }
            marked += feed.ingest.stats().cut_blocks;
        }
        assert_eq!(marked, 61, "every cut block marked on exactly one shard");
    });
}

#[test]
fn a_relation_file_number_used_again_after_a_drop_starts_without_the_old_pages() {
    run(async |root| {
        let mut feed = Feeder::new(empty_timeline(&root).await, ShardFilter::unsharded());
        let (main, vm) = (fork(ForkNumber::Main), fork(ForkNumber::VisibilityMap));
        feed.fill(10, 1).await;
        let old_vm = feed.image(LOCATOR, ForkNumber::VisibilityMap, 0, 1).await;
        let dropped = feed.commit_dropping().await;
        assert_eq!(feed.size(main, dropped).await, None);
        assert_eq!(feed.ingest.stats().cut_blocks, 0, "a drop marks nothing");
        // The file number comes back: created, then a page, then a raise.
        let created = feed.create().await;
        assert_eq!(feed.size(main, created).await, Some(0));
        assert_eq!(feed.ingest.stats().cut_blocks, 10);
        let written = feed.image(LOCATOR, ForkNumber::Main, 3, 2).await;
        let raised = feed.size_message(main, 10).await;
        assert_cut(&feed, 0..3, raised, "the new fork").await;
        assert_cut(&feed, 4..10, raised, "the new fork").await;
        assert_eq!(image_of(&feed.get(main, 3, written).await), Some((3, 2)));
        // A fork created by a record naming its block (the map): its other
        // old blocks are cut, the record's own block is its new page.
        let new_vm = feed.image(LOCATOR, ForkNumber::VisibilityMap, 0, 2).await;
        assert_eq!(image_of(&feed.get(vm, 0, new_vm).await), Some((0, 2)));
        assert_eq!(image_of(&feed.get(vm, 0, old_vm).await), Some((0, 1)));
        // Before the drop, the old relation.
        assert_eq!(image_of(&feed.get(main, 5, old_vm).await), Some((5, 1)));
    });
}

/// What a VACUUM cutting 10^5 blocks costs ingest: one marker per block,
/// a 40-byte index entry each in the layer it is flushed to.
#[test]
fn a_cut_of_many_blocks_costs_one_index_entry_per_block() {
    run(async |root| {
        const BLOCKS: u32 = 100_000;
        let mut feed = Feeder::new(empty_timeline(&root).await, ShardFilter::unsharded());
        feed.image(LOCATOR, ForkNumber::Main, 0, 1).await;
        feed.size_message(fork(ForkNumber::Main), BLOCKS).await;
        feed.ingest.flush().await.unwrap();
        let layers_before = layer_bytes(feed.ingest.timeline().directory());
        let started = Instant::now();
        let cut = feed.truncate(0, 1).await;
        let ingest_ns = started.elapsed().as_nanos();
        feed.ingest.flush().await.unwrap();
        let layer = layer_bytes(feed.ingest.timeline().directory()) - layers_before;
        assert_eq!(feed.ingest.stats().cut_blocks, u64::from(BLOCKS));
        assert!(feed.get(fork(ForkNumber::Main), 0, cut).await.is_empty());
        let centibytes_per_block = layer * 100 / u64::from(BLOCKS);
        println!(
            "cut of {BLOCKS} blocks: ingest {} us ({} ns/block), layer {layer} bytes ({}.{:02} bytes/block)",
            ingest_ns / 1000,
            ingest_ns / u128::from(BLOCKS),
            centibytes_per_block / 100,
            centibytes_per_block % 100
        );
        // A leaf entry is 40 bytes (204 per 8 KiB leaf), plus the internal
        // levels and the checksum table.
        assert!(
            centibytes_per_block < 4800,
            "{centibytes_per_block}/100 bytes per cut block"
        );
    });
}

fn layer_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() != "metadata")
        .map(|e| e.metadata().unwrap().len())
        .sum()
}
