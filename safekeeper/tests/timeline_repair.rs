//! A safekeeper timeline on a real file system, damaged and repaired: real
//! WAL (from `quire_postgres`' writer) taken through the acceptor, a byte
//! flipped in its segment, the timeline reopened damaged; repair bytes are
//! written only where they decode, a chunk whose record (begun in the
//! chunk before) fails its check is refused and the log cut back to the
//! record's start, and the repaired WAL reads back as written.

use std::path::Path;

use quire_io::{LocalConfig, run_local};
use quire_postgres::Lsn;
use quire_postgres::wal::writer::WalWriter;
use quire_safekeeper::acceptor::Request;
use quire_safekeeper::history::{TermEntry, TermHistory};
use quire_safekeeper::membership::{Membership, NodeId, Sender};
use quire_safekeeper::server::timeline::{RepairStep, Timeline};
use quire_safekeeper::wire::TimelineKey;

const SEGMENT: u32 = 1 << 20;
const START: Lsn = Lsn(3 << 20);
const KEY: TimelineKey = TimelineKey {
    tenant: [3; 16],
    timeline: [4; 16],
};

/// About 600 KB of records of varied sizes, and each record's end.
fn real_wal() -> (Vec<u8>, Vec<Lsn>) {
    let mut writer = WalWriter::new(START, SEGMENT, 7, 1).expect("writer");
    let mut ends = Vec::new();
    let mut seed = 0x9E37_79B9_u64;
    while writer.insert_position().0 < START.0 + 600_000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = (seed >> 33) as usize % 12_000;
        writer
            .append(0, 0x00, 0, &[], &vec![(seed >> 7).to_le_bytes()[0]; len])
            .expect("append");
        ends.push(writer.insert_position());
    }
    let end = writer.insert_position();
    let mut bytes = writer.into_segments();
    bytes.truncate(usize::try_from(end.0 - START.0).expect("small"));
    (bytes, ends)
}

fn at(bytes: &[u8], from: Lsn, to: Lsn) -> Vec<u8> {
    bytes[usize::try_from(from.0 - START.0).expect("small")
        ..usize::try_from(to.0 - START.0).expect("small")]
        .to_vec()
}

async fn write_wal(data: &Path, bytes: &[u8], end: Lsn) {
    let members =
        Membership::numbered(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]).expect("members");
    let timeline = Timeline::create(data, NodeId(1), KEY, START, SEGMENT, 7, members)
        .await
        .expect("create");
    timeline
        .handle(Sender::Proposer, &Request::Vote { term: 1 }, &[])
        .await
        .expect("vote");
    let history = TermHistory(vec![TermEntry {
        term: 1,
        start: START,
    }]);
    timeline
        .handle(
            Sender::Proposer,
            &Request::Elected { term: 1, history },
            &[],
        )
        .await
        .expect("elected");
    let mut begin = START;
    while begin < end {
        let to = end.min(Lsn(begin.0 + 50_000));
        let chunk = at(bytes, begin, to);
        let append = Request::Append {
            term: 1,
            begin,
            len: chunk.len() as u64,
        };
        timeline
            .handle(Sender::Proposer, &append, &chunk)
            .await
            .expect("append");
        timeline.flush().await.expect("flush");
        begin = to;
    }
    assert_eq!(timeline.status().await.expect("status").1, end);
}

#[test]
fn repair_writes_only_bytes_that_decode_and_cuts_back_a_bad_record() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let data = dir.path().to_owned();
    let config = LocalConfig {
        io_memory_bytes: 4 << 20,
        ..LocalConfig::default()
    };
    run_local(&config, move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        write_wal(&data, &bytes, end).await;
        // Flip a byte of a record in the middle.
        let flipped = ends[ends.len() / 2];
        let segment = Timeline::dir_of(&data, &KEY).join("000000010000000000000003");
        let mut file = std::fs::read(&segment).expect("segment");
        let offset = usize::try_from(flipped.0 % u64::from(SEGMENT)).expect("small") + 30;
        file[offset] ^= 0x20;
        std::fs::write(&segment, &file).expect("write segment");

        let timeline = Timeline::open(&data, NodeId(1), KEY).await.expect("reopen");
        let health = timeline.health().await;
        assert_eq!((health.damaged_from, health.damaged_until), (flipped, end));
        assert_eq!(timeline.status().await.expect("status").1, flipped);

        // A first chunk ending inside a record is taken.
        let middle = ends
            .iter()
            .find(|e| e.0 > flipped.0 + 100_000)
            .expect("a record");
        let straddled = *ends
            .iter()
            .rev()
            .find(|e| **e < *middle)
            .expect("its start");
        let cut_inside = Lsn(straddled.0 + 100);
        let first = at(&bytes, flipped, cut_inside);
        assert_eq!(
            timeline
                .repair(flipped, &first, "peer a")
                .await
                .expect("repair"),
            RepairStep::More
        );
        assert_eq!(timeline.health().await.damaged_from, cut_inside);
        // The next chunk damages that record's rest: refused, and the log
        // goes back to the record's start.
        let mut second = at(&bytes, cut_inside, end);
        second[200] ^= 0x01;
        let step = timeline
            .repair(cut_inside, &second, "peer b")
            .await
            .expect("repair");
        assert!(matches!(step, RepairStep::Refused(_)), "{step:?}");
        let health = timeline.health().await;
        assert_eq!(health.damaged_from, straddled);
        assert_eq!(health.wal_repair_refusals, 1);
        // Sound bytes from there end the damage.
        let rest = at(&bytes, straddled, end);
        assert_eq!(
            timeline
                .repair(straddled, &rest, "peer c")
                .await
                .expect("repair"),
            RepairStep::Done
        );
        let health = timeline.health().await;
        assert_eq!((health.damaged_until, health.wal_repairs), (Lsn(0), 1));
        assert_eq!(timeline.status().await.expect("status").1, end);
        let mut state = timeline.lock().await.expect("lock");
        let read = state.wal.read(START, end).await.expect("read");
        assert!(read == at(&bytes, START, end), "the repaired WAL differs");
    })
    .expect("the test task");
}
