//! The seeds of the `redo_record` fuzz target (`fuzz/seeds/redo_record/`):
//! every record kind ingest stores, the Postgres ones holding real WAL
//! records (taken from the WAL decoder's seeds, which Postgres 17 wrote),
//! and reply streams as a redo process frames them. The test fails when a
//! committed seed differs from what today's encoders write;
//! `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.

use quire_fuzz_seeds::seed;
use std::path::PathBuf;

use quire_postgres::Lsn;
use quire_postgres::types::TransactionId;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_redo::RedoRecord;

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

/// The first records of a WAL decoder seed: its first byte is that
/// target's chunk selector, then WAL of 1 MiB segments from the address
/// its first page header states.
fn real_records(name: &str, count: usize) -> Vec<(Lsn, Lsn, Vec<u8>)> {
    let bytes = std::fs::read(seeds_dir().join("wal_decoder").join(name)).expect("WAL seed");
    let wal = &bytes[1..];
    let start = Lsn(u64::from_le_bytes(wal[8..16].try_into().expect("8 bytes")));
    let mut decoder = WalStreamDecoder::new(start, 1 << 20);
    decoder.feed(wal);
    let mut records = Vec::new();
    while let Ok(Some(record)) = decoder.next_record() {
        records.push((record.start, record.end, record.bytes.to_vec()));
        if records.len() == count {
            break;
        }
    }
    assert_eq!(records.len(), count, "{name} holds {count} records");
    records
}

#[test]
fn redo_record_seeds() {
    for (name, wal) in [("segment-start.bin", 3), ("zstd-seg5-at-942080.bin", 2)] {
        for (i, (start, end, record)) in real_records(name, wal).into_iter().enumerate() {
            let stored = RedoRecord::Postgres {
                start,
                end: Lsn(end.0.next_multiple_of(8)),
                record: &record,
            };
            let stem = name.trim_end_matches(".bin");
            seed(
                "redo_record",
                &format!("postgres-{stem}-{i}.bin"),
                &stored.encode(),
            );
        }
    }
    let rust = [
        (
            "clog-set",
            RedoRecord::ClogSetStatus {
                status: 1,
                xids: vec![
                    TransactionId(745),
                    TransactionId(746),
                    TransactionId(33_500),
                ],
            },
        ),
        (
            "multixact-offsets",
            RedoRecord::MultiXactOffsets(vec![(1, 1), (2, 3)]),
        ),
        (
            "multixact-members",
            RedoRecord::MultiXactMembers(vec![
                (1, TransactionId(745), 0),
                (2, TransactionId(746), 5),
            ]),
        ),
        (
            "vm-clear",
            RedoRecord::VmClear {
                heap_blocks: vec![0, 40_000],
                bits: 0b11,
            },
        ),
        (
            "vm-clear-logged",
            RedoRecord::VmClearLogged {
                lsn: Lsn(0x0152_3A80),
                heap_blocks: vec![9, 9],
                bits: 0b10,
            },
        ),
        ("vm-truncate", RedoRecord::VmTruncate { heap_blocks: 6 }),
    ];
    for (name, record) in rust {
        seed("redo_record", &format!("{name}.bin"), &record.encode());
    }
    // Replies as a redo process frames them: a page, then an error.
    let mut replies = vec![b'K'];
    replies.extend_from_slice(&8192u32.to_le_bytes());
    replies.extend((0..8192u32).map(|i| (i % 251) as u8));
    let message = b"could not apply record: invalid block reference";
    replies.push(b'E');
    replies.extend_from_slice(&u32::try_from(message.len()).expect("short").to_le_bytes());
    replies.extend_from_slice(message);
    seed("redo_record", "replies-page-then-error.bin", &replies);
}
