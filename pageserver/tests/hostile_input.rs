//! Ingest on WAL records that decode (as `pg_waldump` decodes them) but
//! name pages no key can: refused with a typed error, nothing stored, no
//! panic; the largest real block still grows its fork to 2^32 - 1 blocks.
//! Import of a data directory whose file names reach past the last block
//! or SLRU page: an error naming the file.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use quire_pageserver::import::import_datadir;
use quire_pageserver::ingest::WalIngest;
use quire_pageserver::shard_filter::ShardFilter;
use quire_postgres::control::{ControlFileData, DbState};
use quire_postgres::key::InvalidKey;
use quire_postgres::types::{BlockNo, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::writer::{BlockToWrite, build_record};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, Timeline};

/// The `LogicalMessage` rmgr: no effect beyond its block references.
const RMID: u8 = 21;

const REL: RelFileLocator = RelFileLocator {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16384,
};

/// A record whose one block reference (will-init, no image) is `block`.
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
    build_record(RMID, 0, 1, Lsn(0x100), &blocks, &[9; 8]).unwrap()
}

/// Runs `test` on a local executor with an empty timeline in a temporary directory.
fn with_timeline<F, Fut>(test: F)
where
    F: FnOnce(Rc<Timeline>, std::path::PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        let core = CoreContext::new(8 << 20);
        let timeline = Rc::new(
            Timeline::create(&path.join("timeline"), [1; 16], [2; 16], Lsn(0x1000), core)
                .await
                .unwrap(),
        );
        test(timeline, path).await;
    })
    .unwrap();
}

#[test]
fn invalid_block_number_is_a_typed_error_and_max_block_grows_the_fork() {
    with_timeline(|timeline, _| async move {
        let mut ingest =
            WalIngest::new(timeline.clone(), HashMap::new(), HashSet::new(), None, None);
        let rel = RelTag::new(REL, ForkNumber::Main);

        let bad = record_on(BlockNo::INVALID.0);
        let error = ingest
            .ingest_record(Lsn(0x2000), Lsn(0x2000 + bad.len() as u64), &bad)
            .await
            .unwrap_err();
        assert!(error.downcast_ref::<InvalidKey>().is_some(), "{error:#}");
        assert_eq!(ingest.stats().records, 0, "nothing of the record is kept");
        assert!(ingest.relation_sizes().is_empty());

        let last = record_on(BlockNo::MAX.0);
        let end = ingest
            .ingest_record(Lsn(0x3000), Lsn(0x3000 + last.len() as u64), &last)
            .await
            .unwrap();
        assert_eq!(ingest.relation_sizes().get(&rel), Some(&u32::MAX));
        let inputs = timeline
            .get(Key::rel_block(rel, BlockNo::MAX), end)
            .await
            .unwrap();
        assert_eq!(inputs.records.len(), 1);

        // A record end at the top of the LSN space cannot be rounded up.
        let error = ingest
            .ingest_record(Lsn(u64::MAX - 40), Lsn(u64::MAX - 3), &last)
            .await;
        assert!(error.is_err());
    });
}

/// A cleanly stopped data directory with nothing but `files` (paths
/// relative to it, one page each).
fn data_directory(root: &std::path::Path, files: &[&str]) -> std::path::PathBuf {
    let pgdata = root.join("pgdata");
    for dir in [
        "global",
        "base/5",
        "pg_xact",
        "pg_multixact/offsets",
        "pg_multixact/members",
    ] {
        std::fs::create_dir_all(pgdata.join(dir)).unwrap();
    }
    let mut control = ControlFileData::template(16 << 20);
    control.state.set(DbState::Shutdowned as u32);
    control.checkpoint.set(0x0100_0028);
    std::fs::write(pgdata.join("global/pg_control"), control.encode()).unwrap();
    for file in files {
        std::fs::write(pgdata.join(file), [0u8; 8192]).unwrap();
    }
    pgdata
}

#[test]
fn import_refuses_file_names_past_the_last_block() {
    for file in [
        "base/5/16384.40000",
        "base/5/16384.32768",
        "pg_xact/FFFFFFF",
    ] {
        with_timeline(move |timeline, root| async move {
            let pgdata = data_directory(&root, &[file]);
            let error = import_datadir(&timeline, &pgdata, ShardFilter::unsharded())
                .await
                .unwrap_err();
            assert!(format!("{error:#}").contains(file), "{file}: {error:#}");
        });
    }
    with_timeline(|timeline, root| async move {
        let pgdata = data_directory(&root, &["base/5/16384.32767", "pg_xact/7FFFFFF"]);
        let imported = import_datadir(&timeline, &pgdata, ShardFilter::unsharded())
            .await
            .unwrap();
        assert_eq!(imported.pages, 2);
    });
}
