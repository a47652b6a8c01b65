//! Every operation against both backends (moto over HTTP, a local
//! directory): file round trips through one `PUT` and through a multipart
//! upload, checked downloads, listing, deletion, bounded gets and the
//! index's upload and lookup.

mod support;

use quire_remote::{
    Delete, Download, Generation, Get, Id, IndexLayer, LatestIndex, LayerFileName, List,
    ListFolders, PutBytes, RemoteError, TenantShard, TimelineIndex, Transferred, UploadFile,
    UploadIndex, WriteMode,
};
use support::{Backend, block_on, start, write_file};

#[test]
fn files_round_trip_list_and_delete() {
    for backend in Backend::both() {
        let name = backend.name();
        let storage = start(backend.config());
        let local = tempfile::tempdir().unwrap();
        // 12 MiB and a byte: three parts of 5 MiB, the last short; and one
        // small enough for a single PUT.
        let big = write_file(&local.path().join("big"), (12 << 20) + 1, 1);
        let small = write_file(&local.path().join("small"), 1 << 20, 2);
        let sent_big = block_on(storage.call(UploadFile {
            local: local.path().join("big"),
            key: "tenants/t/timelines/a/big-g00000001".to_owned(),
        }))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            sent_big,
            Transferred {
                size: big.len() as u64,
                crc32c: quire_checksum::crc32c(&big)
            },
            "{name}"
        );
        let sent_small = block_on(storage.call(UploadFile {
            local: local.path().join("small"),
            key: "tenants/t/timelines/a/small-g00000001".to_owned(),
        }))
        .unwrap();
        assert_eq!(sent_small.size, 1 << 20);
        assert_eq!(sent_small.crc32c, quire_checksum::crc32c(&small), "{name}");

        // Downloads replace the target, checked against size and CRC.
        let target = local.path().join("big.back");
        std::fs::write(&target, b"old").unwrap();
        let got = block_on(storage.call(Download {
            key: "tenants/t/timelines/a/big-g00000001".to_owned(),
            local: target.clone(),
            expect: Some(sent_big),
        }))
        .unwrap();
        assert_eq!(got, sent_big, "{name}");
        assert!(
            std::fs::read(&target).unwrap() == big,
            "{name}: downloaded bytes differ"
        );

        // A download that does not match the index fails and leaves
        // neither the target nor a temporary file.
        let wrong = local.path().join("wrong");
        let error = block_on(storage.call(Download {
            key: "tenants/t/timelines/a/small-g00000001".to_owned(),
            local: wrong.clone(),
            expect: Some(Transferred {
                size: sent_small.size,
                crc32c: sent_small.crc32c ^ 1,
            }),
        }))
        .unwrap_err();
        assert!(
            matches!(error, RemoteError::Corrupt { .. }),
            "{name}: {error}"
        );
        assert!(!wrong.exists());
        assert!(!local.path().join("wrong.download").exists());

        list_and_delete(&storage, name, big.len() as u64);

        let metrics = storage.metrics();
        assert_eq!(metrics.uploads.get(), 3, "{name}");
        assert_eq!(metrics.upload_bytes.get(), big.len() as u64 + (1 << 20) + 1);
        assert_eq!(
            metrics.downloads.get(),
            1,
            "{name}: a failed download is not counted"
        );
        assert_eq!(metrics.queue_depth.get(), 0);
        storage.shutdown();
    }
}

/// Listing is by folder, sorted, with sizes; deleting twice is fine, and
/// then the folder is empty and a get finds nothing.
fn list_and_delete(storage: &quire_remote::RemoteStorage, name: &str, big: u64) {
    block_on(storage.call(PutBytes {
        key: "tenants/t/timelines/ab/other".to_owned(),
        bytes: bytes::Bytes::from_static(b"x"),
        mode: WriteMode::Overwrite,
    }))
    .expect("remote storage operation");
    let listed = block_on(storage.call(List {
        prefix: "tenants/t/timelines/a/".to_owned(),
    }))
    .expect("remote storage operation");
    let keys: Vec<(&str, u64)> = listed.iter().map(|l| (l.key.as_str(), l.size)).collect();
    assert_eq!(
        keys,
        [
            ("tenants/t/timelines/a/big-g00000001", big),
            ("tenants/t/timelines/a/small-g00000001", 1 << 20)
        ],
        "{name}"
    );
    // The folders, without their objects.
    let folders = block_on(storage.call(ListFolders {
        prefix: "tenants/t/timelines".to_owned(),
    }))
    .expect("remote storage operation");
    assert_eq!(
        folders,
        ["tenants/t/timelines/a", "tenants/t/timelines/ab"],
        "{name}"
    );

    let both = vec![listed[0].key.clone(), listed[1].key.clone()];
    block_on(storage.call(Delete { keys: both.clone() })).expect("remote storage operation");
    block_on(storage.call(Delete { keys: both })).expect("remote storage operation");
    let listed = block_on(storage.call(List {
        prefix: "tenants/t/timelines/a".to_owned(),
    }))
    .expect("remote storage operation");
    assert!(listed.is_empty(), "{name}: {listed:?}");
    let missing = block_on(storage.call(Get {
        key: "tenants/t/timelines/a/big-g00000001".to_owned(),
        max_bytes: 1 << 30,
    }))
    .expect_err("the object is gone");
    assert!(
        matches!(missing, RemoteError::NotFound { .. }),
        "{name}: {missing}"
    );
}

#[test]
fn puts_gets_and_bounds() {
    for backend in Backend::both() {
        let name = backend.name();
        let storage = start(backend.config());
        let key = "tenants/t/generations/00000001".to_owned();
        let put = |mode| PutBytes {
            key: key.clone(),
            bytes: bytes::Bytes::from_static(b"first"),
            mode,
        };
        block_on(storage.call(put(WriteMode::CreateIfAbsent))).unwrap();
        let again = block_on(storage.call(put(WriteMode::CreateIfAbsent))).unwrap_err();
        assert!(
            matches!(again, RemoteError::AlreadyExists { .. }),
            "{name}: {again}"
        );
        block_on(storage.call(PutBytes {
            key: key.clone(),
            bytes: bytes::Bytes::from_static(b"second"),
            mode: WriteMode::Overwrite,
        }))
        .unwrap();
        let got = block_on(storage.call(Get {
            key: key.clone(),
            max_bytes: 6,
        }))
        .unwrap();
        assert_eq!(&got[..], b"second", "{name}");
        let too_large = block_on(storage.call(Get { key, max_bytes: 5 })).unwrap_err();
        assert!(matches!(too_large, RemoteError::TooLarge { .. }), "{name}");
        let bad_key = block_on(storage.call(Get {
            key: "a//b".to_owned(),
            max_bytes: 5,
        }))
        .unwrap_err();
        assert!(matches!(bad_key, RemoteError::InvalidKey { .. }), "{name}");
        let too_many = block_on(storage.call(Delete {
            keys: vec!["a".to_owned(); quire_remote::ops::DELETE_BATCH_MAX + 1],
        }))
        .unwrap_err();
        assert!(matches!(too_many, RemoteError::TooLarge { .. }), "{name}");
        storage.shutdown();
    }
}

fn index(generation: u32, lsn: u64, layers: &[(&str, u32)]) -> TimelineIndex {
    TimelineIndex {
        generation: Generation::new(generation).expect("a generation"),
        disk_consistent_lsn: lsn,
        gc_cutoff_lsn: 0,
        ancestor: None,
        layers: layers
            .iter()
            .map(|(name, generation)| IndexLayer {
                name: LayerFileName::new(name).expect("a layer name"),
                size: 8192,
                crc32c: 1,
                generation: Generation::new(*generation).expect("a generation"),
            })
            .collect(),
    }
}

#[test]
fn the_newest_index_at_or_below_a_generation_is_read() {
    for backend in Backend::both() {
        let name = backend.name();
        let storage = start(backend.config());
        let shard = TenantShard::unsharded([1; 16]);
        let timeline = Id([2; 16]);
        let latest = |at_most: u32| {
            block_on(storage.call(LatestIndex {
                shard,
                timeline,
                at_most: Generation::new(at_most).unwrap(),
            }))
            .unwrap()
        };
        assert_eq!(latest(5), None, "{name}");
        let first = index(1, 0x100, &[("delta-a", 1)]);
        let third = index(3, 0x300, &[("delta-a", 1), ("delta-b", 3)]);
        for index in [first.clone(), third.clone()] {
            block_on(storage.call(UploadIndex {
                shard,
                timeline,
                index,
            }))
            .unwrap();
        }
        // A layer object beside the indexes is not mistaken for one.
        block_on(storage.call(PutBytes {
            key: shard.layer_key(
                timeline,
                &LayerFileName::new("delta-b").unwrap(),
                Generation::new(3).unwrap(),
            ),
            bytes: bytes::Bytes::from_static(b"layer"),
            mode: WriteMode::Overwrite,
        }))
        .unwrap();
        assert_eq!(latest(1), Some(first.clone()), "{name}");
        assert_eq!(latest(2), Some(first), "{name}");
        assert_eq!(latest(3), Some(third.clone()), "{name}");
        assert_eq!(latest(9), Some(third), "{name}");

        // An index whose content names another generation than its object,
        // and one that does not decode, are refused.
        let key = shard.index_key(timeline, Generation::new(4).unwrap());
        block_on(storage.call(PutBytes {
            key: key.clone(),
            bytes: index(3, 0x400, &[]).encode().unwrap().into(),
            mode: WriteMode::Overwrite,
        }))
        .unwrap();
        let error = block_on(storage.call(LatestIndex {
            shard,
            timeline,
            at_most: Generation::new(4).unwrap(),
        }))
        .unwrap_err();
        assert!(
            matches!(error, RemoteError::Corrupt { .. }),
            "{name}: {error}"
        );
        block_on(storage.call(PutBytes {
            key,
            bytes: bytes::Bytes::from_static(b"QRINDEX1 but not really"),
            mode: WriteMode::Overwrite,
        }))
        .unwrap();
        let error = block_on(storage.call(LatestIndex {
            shard,
            timeline,
            at_most: Generation::new(4).unwrap(),
        }))
        .unwrap_err();
        assert!(
            matches!(error, RemoteError::Index { .. }),
            "{name}: {error}"
        );
        storage.shutdown();
    }
}
