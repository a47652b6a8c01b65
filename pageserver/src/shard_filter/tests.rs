//! The filter's rule (each relation block on its owner alone, every other
//! key on every shard), ingest through it on synthetic records, and the
//! refusal of `file_copy` on a sharded tenant.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use quire_postgres::key::SlruKind;
use quire_postgres::types::{BlockNo, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::rmgr::{RM_DBASE_ID, RM_LOGICALMSG_ID};
use quire_postgres::wal::writer::{BlockToWrite, build_record};
use quire_shard::CoreContext;

use super::*;
use crate::ingest::WalIngest;

const REL: RelFileLocator = RelFileLocator {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16_384,
};

fn filter(number: u32, count: u32, stripe: u32) -> ShardFilter {
    ShardFilter::new(ShardIdentity::new(number, count, stripe).unwrap())
}

/// Every key kind that is not a relation block.
fn non_block_keys() -> Vec<Key> {
    vec![
        Key::rel_size(RelTag::new(REL, ForkNumber::Main)),
        Key::rel_size(RelTag::new(REL, ForkNumber::VisibilityMap)),
        Key::rel_directory(1663, 5),
        Key::db_directory(),
        Key::rel_map(1663, 5),
        Key::slru_block(SlruKind::Clog, 0, 3),
        Key::slru_block(SlruKind::MultiXactMembers, 2, 0),
        Key::slru_segment_size(SlruKind::Clog, 0),
        Key::slru_directory(SlruKind::MultiXactOffsets),
        Key::twophase_directory(),
        Key::twophase_file(0, 700),
        Key::control_file(),
        Key::checkpoint(),
    ]
}

#[test]
fn each_block_is_kept_by_its_owner_alone_and_init_forks_and_every_other_key_by_all() {
    for (count, stripe) in [(2, 8), (3, 1), (4, 2048)] {
        let shards: Vec<ShardFilter> = (0..count).map(|n| filter(n, count, stripe)).collect();
        for fork in [ForkNumber::Main, ForkNumber::VisibilityMap] {
            let rel = RelTag::new(REL, fork);
            let mut owners = BTreeSet::new();
            for block in 0..64 {
                let key = Key::rel_block(rel, BlockNo(block));
                let keepers: Vec<u32> = (0..count)
                    .filter(|&n| shards[n as usize].keeps(&key))
                    .collect();
                assert_eq!(
                    keepers,
                    vec![key.shard(count, stripe)],
                    "block {block} of {rel}, {count} shards of stripe {stripe}"
                );
                owners.insert(keepers[0]);
            }
            if stripe < 64 {
                assert!(owners.len() > 1, "{count} shards: one owner for 64 blocks");
            }
        }
        // Init forks are kept whole by every shard, for shard 0's basebackups.
        let init = RelTag::new(REL, ForkNumber::Init);
        for block in 0..4 {
            let key = Key::rel_block(init, BlockNo(block));
            assert!(shards.iter().all(|shard| shard.keeps(&key)), "{key}");
        }
        for key in non_block_keys() {
            for shard in &shards {
                assert!(
                    shard.keeps(&key),
                    "{key} not kept by {:?}",
                    shard.identity()
                );
            }
        }
    }
    let unsharded = ShardFilter::unsharded();
    assert!(!unsharded.is_sharded());
    for block in 0..64 {
        assert!(unsharded.keeps(&Key::rel_block(
            RelTag::new(REL, ForkNumber::Main),
            BlockNo(block)
        )));
    }
}

fn run(test: impl AsyncFnOnce(PathBuf) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        test(path).await;
    })
    .unwrap();
}

async fn empty_timeline(dir: &std::path::Path) -> Rc<Timeline> {
    let core = CoreContext::new(8 << 20);
    Rc::new(
        Timeline::create(dir, [1; 16], [2; 16], Lsn(0x1000), core)
            .await
            .unwrap(),
    )
}

/// A logical message whose one block reference (will-init) is `block`.
fn record_on(block: u32) -> Vec<u8> {
    let blocks = [BlockToWrite {
        id: 0,
        rel: REL,
        fork: 0,
        block,
        will_init: true,
        image: None,
        data: &[1, 2, 3],
    }];
    build_record(RM_LOGICALMSG_ID, 0, 1, Lsn(0x100), &blocks, &[9; 8]).unwrap()
}

/// Ingests one record per block `0..blocks` (one record 0x100 bytes apart).
async fn ingest_blocks(ingest: &mut WalIngest, blocks: u32) {
    for block in 0..blocks {
        let record = record_on(block);
        let start = Lsn(0x2000 + u64::from(block) * 0x100);
        ingest
            .ingest_record(start, Lsn(start.0 + record.len() as u64), &record)
            .await
            .unwrap();
    }
}

#[test]
fn a_shard_ingests_every_record_but_stores_only_its_blocks() {
    run(async |root| {
        const BLOCKS: u32 = 40;
        let rel = RelTag::new(REL, ForkNumber::Main);
        let all: Vec<Key> = (0..BLOCKS)
            .map(|b| Key::rel_block(rel, BlockNo(b)))
            .collect();
        let mut union = BTreeSet::new();
        for number in 0..2 {
            let shard = filter(number, 2, 8);
            let timeline = empty_timeline(&root.join(format!("shard-{number}"))).await;
            let mut ingest = WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None)
                .with_shard(shard);
            ingest_blocks(&mut ingest, BLOCKS).await;
            let lsn = ingest.timeline().last_record_lsn();
            let keys = ingest
                .timeline()
                .keys_at(lsn, Key::MIN..Key::MAX)
                .await
                .unwrap();
            let blocks: Vec<&Key> = keys.iter().filter(|k| k.is_rel_block()).collect();
            let owned = all.iter().filter(|k| shard.identity().owns(k)).count();
            assert_eq!(blocks.len(), owned, "shard {number}: {blocks:?}");
            assert!(blocks.iter().all(|k| shard.identity().owns(k)));
            assert!(owned > 0 && owned < all.len(), "stripe 8 over 40 blocks");
            union.extend(blocks.into_iter().copied());
            // Sizes: on every shard, in memory and as keys.
            assert!(keys.contains(&Key::rel_size(rel)), "shard {number}");
            assert_eq!(ingest.relation_sizes().get(&rel), Some(&BLOCKS));
            assert_eq!(
                ingest.timeline().rel_size(rel, lsn).await.unwrap(),
                Some(BLOCKS)
            );
            let stats = ingest.stats();
            assert_eq!(stats.records, u64::from(BLOCKS));
            assert_eq!(stats.not_owned_values, (all.len() - owned) as u64);
        }
        assert_eq!(union, all.into_iter().collect::<BTreeSet<_>>());

        // Unsharded: everything, nothing dropped.
        let timeline = empty_timeline(&root.join("unsharded")).await;
        let mut ingest = WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None);
        ingest_blocks(&mut ingest, BLOCKS).await;
        let lsn = ingest.timeline().last_record_lsn();
        let keys = ingest
            .timeline()
            .keys_at(lsn, Key::MIN..Key::MAX)
            .await
            .unwrap();
        assert_eq!(
            keys.iter().filter(|k| k.is_rel_block()).count(),
            BLOCKS as usize
        );
        assert_eq!(ingest.stats().not_owned_values, 0);
    });
}

/// `XLOG_DBASE_CREATE_FILE_COPY` of database 6 from template 1.
fn file_copy_record() -> Vec<u8> {
    let mut main = Vec::new();
    for oid in [6u32, 1663, 1, 1663] {
        main.extend_from_slice(&oid.to_le_bytes());
    }
    build_record(RM_DBASE_ID, 0x00, 1, Lsn(0x100), &[], &main).unwrap()
}

#[test]
fn file_copy_is_refused_by_a_shard_of_a_sharded_tenant() {
    run(async |root| {
        let record = file_copy_record();
        let (start, end) = (Lsn(0x2000), Lsn(0x2000 + record.len() as u64));
        for number in 0..2 {
            let timeline = empty_timeline(&root.join(format!("shard-{number}"))).await;
            let mut ingest = WalIngest::new(
                Rc::clone(&timeline),
                HashMap::new(),
                HashSet::new(),
                None,
                None,
            )
            .with_shard(filter(number, 2, 8));
            let error = ingest.ingest_record(start, end, &record).await.unwrap_err();
            let refused = error.downcast_ref::<ShardedFileCopy>();
            assert!(refused.is_some(), "shard {number}: {error:#}");
            let text = format!("{error:#}");
            assert!(
                text.contains("file_copy")
                    && text.contains(&format!("shard {number}/2"))
                    && text.contains(&end.align_up(8).unwrap().to_string()),
                "{text}"
            );
            assert_eq!(timeline.last_record_lsn(), Lsn(0x1000), "nothing ingested");
        }
        // Unsharded, the copy is attempted (and needs redo here).
        let timeline = empty_timeline(&root.join("unsharded")).await;
        let mut ingest = WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None);
        let error = ingest.ingest_record(start, end, &record).await.unwrap_err();
        assert!(
            error.downcast_ref::<ShardedFileCopy>().is_none(),
            "{error:#}"
        );
        assert!(format!("{error:#}").contains("needs redo"), "{error:#}");
    });
}
