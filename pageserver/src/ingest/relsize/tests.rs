//! Relation-size messages through ingest, on synthetic records laid out as
//! `LogLogicalMessage` writes them: a raise, no lowering, an unknown fork
//! and malformed payloads counted and ignored, every shard raising, and the
//! raised size kept across a resume.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

use quire_net::id::ShardIdentity;
use quire_postgres::types::{BlockNo, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::relsize::{logical_message_main_data, relsize_payload};
use quire_postgres::wal::rmgr::RM_LOGICALMSG_ID;
use quire_postgres::wal::writer::{BlockToWrite, build_record};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, Timeline};

use crate::ingest::WalIngest;
use crate::shard_filter::ShardFilter;

const LOCATOR: RelFileLocator = RelFileLocator {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16_384,
};
const MAIN: RelTag = RelTag {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16_384,
    fork: ForkNumber::Main,
};

fn run(test: impl AsyncFnOnce(PathBuf) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        test(path).await;
    })
    .unwrap();
}

async fn empty_timeline(dir: &std::path::Path) -> Rc<Timeline> {
    Rc::new(
        Timeline::create(
            dir,
            [1; 16],
            [2; 16],
            Lsn(0x1000),
            CoreContext::new(8 << 20),
        )
        .await
        .unwrap(),
    )
}

/// Feeds records to one ingest, 0x100 bytes apart.
struct Feeder {
    ingest: WalIngest,
    next: u64,
}

impl Feeder {
    async fn feed(&mut self, record: &[u8]) -> Lsn {
        let start = Lsn(self.next);
        self.next += 0x100;
        self.ingest
            .ingest_record(start, Lsn(start.0 + record.len() as u64), record)
            .await
            .unwrap()
    }

    /// A record that initialises block `block` of the main fork.
    async fn write_block(&mut self, block: u32) -> Lsn {
        let blocks = [BlockToWrite {
            id: 0,
            rel: LOCATOR,
            fork: 0,
            block,
            will_init: true,
            image: None,
            data: &[1, 2, 3],
        }];
        let record = build_record(RM_LOGICALMSG_ID, 0, 1, Lsn(0x100), &blocks, &[9; 8]).unwrap();
        self.feed(&record).await
    }

    /// A logical message with `prefix` and `payload`.
    async fn message(&mut self, prefix: &[u8], payload: &[u8]) -> Lsn {
        let main = logical_message_main_data(5, false, prefix, payload);
        let record = build_record(RM_LOGICALMSG_ID, 0, 0, Lsn(0x100), &[], &main).unwrap();
        self.feed(&record).await
    }

    async fn size_message(&mut self, rel: RelTag, blocks: u32) -> Lsn {
        self.message(b"quire.relsize", &relsize_payload(rel, blocks))
            .await
    }

    async fn size(&self, rel: RelTag, lsn: Lsn) -> Option<u32> {
        self.ingest.timeline().rel_size(rel, lsn).await.unwrap()
    }
}

fn feeder(timeline: Rc<Timeline>, shard: ShardFilter) -> Feeder {
    Feeder {
        ingest: WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None)
            .with_shard(shard),
        next: 0x2000,
    }
}

#[test]
fn a_size_message_raises_a_fork_and_never_lowers_it() {
    run(async |root| {
        let mut feed = feeder(empty_timeline(&root).await, ShardFilter::unsharded());
        for block in 0..4 {
            feed.write_block(block).await;
        }
        let before = feed.size_message(MAIN, 10).await;
        assert_eq!(feed.size(MAIN, before).await, Some(10));
        assert_eq!(feed.ingest.relation_sizes().get(&MAIN), Some(&10));
        // Blocks in the gap have no value (GetPage answers zeros there).
        for block in 4..10 {
            let key = Key::rel_block(MAIN, BlockNo(block));
            let inputs = feed.ingest.timeline().get(key, before).await.unwrap();
            assert!(inputs.is_empty(), "block {block}: {inputs:?}");
        }
        // Smaller or equal: no change, no new size value.
        let lower = feed.size_message(MAIN, 3).await;
        let same = feed.size_message(MAIN, 10).await;
        assert_eq!(feed.size(MAIN, lower).await, Some(10));
        assert_eq!(feed.size(MAIN, same).await, Some(10));
        // Below the raise, the old size.
        assert_eq!(feed.size(MAIN, Lsn(before.0 - 8)).await, Some(4));
        // WAL past the raised size grows it as before.
        let grown = feed.write_block(12).await;
        assert_eq!(feed.size(MAIN, grown).await, Some(13));
        let stats = feed.ingest.stats();
        assert_eq!(
            (stats.relsize_messages, stats.relsize_raised),
            (3, 1),
            "{stats:?}"
        );
        assert_eq!(stats.relsize_unknown_forks + stats.relsize_malformed, 0);

        // The raised size comes back on a resume.
        let resumed = WalIngest::resume(Rc::clone(feed.ingest.timeline()), None)
            .await
            .unwrap();
        assert_eq!(resumed.relation_sizes().get(&MAIN), Some(&13));
    });
}

#[test]
fn a_size_message_for_a_missing_fork_or_off_its_layout_is_counted_and_ignored() {
    run(async |root| {
        let mut feed = feeder(empty_timeline(&root).await, ShardFilter::unsharded());
        feed.write_block(1).await;
        let vm = RelTag {
            fork: ForkNumber::VisibilityMap,
            ..MAIN
        };
        let other = RelTag {
            rel_number: 99_999,
            ..MAIN
        };
        for rel in [vm, other] {
            let lsn = feed.size_message(rel, 10).await;
            assert_eq!(feed.size(rel, lsn).await, None, "{rel}");
            assert_eq!(feed.ingest.timeline().last_record_lsn(), lsn);
        }
        let good = relsize_payload(MAIN, 50);
        let mut bad_fork = good;
        bad_fork[12] = 4;
        let mut bad_pad = good;
        bad_pad[15] = 1;
        for payload in [
            &good[..19],
            &bad_fork[..],
            &bad_pad[..],
            &[good, good].concat(),
        ] {
            let lsn = feed.message(b"quire.relsize", payload).await;
            assert_eq!(feed.size(MAIN, lsn).await, Some(2), "{payload:?}");
            assert_eq!(feed.ingest.timeline().last_record_lsn(), lsn);
        }
        // Another prefix: not ours, not counted.
        let lsn = feed.message(b"quire.other", &good).await;
        assert_eq!(feed.size(MAIN, lsn).await, Some(2));
        let stats = feed.ingest.stats();
        assert_eq!(stats.relsize_unknown_forks, 2, "{stats:?}");
        assert_eq!(stats.relsize_malformed, 4, "{stats:?}");
        assert_eq!(stats.relsize_messages, 0, "{stats:?}");
    });
}

#[test]
fn every_shard_of_a_sharded_tenant_raises_the_size() {
    run(async |root| {
        for number in 0..2 {
            let identity = ShardIdentity::new(number, 2, 8).unwrap();
            let timeline = empty_timeline(&root.join(format!("shard-{number}"))).await;
            let mut feed = feeder(timeline, ShardFilter::new(identity));
            feed.write_block(0).await;
            let lsn = feed.size_message(MAIN, 40).await;
            assert_eq!(feed.size(MAIN, lsn).await, Some(40), "shard {number}");
            assert_eq!(feed.ingest.stats().relsize_raised, 1, "shard {number}");
        }
    });
}
