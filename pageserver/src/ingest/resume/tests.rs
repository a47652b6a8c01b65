//! Resumed ingest state equals the state ingest had (sizes of grown,
//! truncated and dropped forks, SLRU pages, a branch's inherited keys), and
//! the WAL decodes from where a restart starts it again: at record ends on
//! page and segment boundaries, with a split record header, after
//! `XLOG_SWITCH`, and one past a record end (a reloaded timeline's LSN).
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quire_postgres::types::{ForkNumber, RelFileLocator};
use quire_postgres::wal::record::XLOG_SWITCH;
use quire_postgres::wal::rmgr::{RM_LOGICALMSG_ID, RM_XLOG_ID};
use quire_postgres::wal::stream::{RawRecord, WalStreamDecoder};
use quire_postgres::wal::writer::{BlockToWrite, WalWriter, build_record};
use quire_shard::CoreContext;

use super::*;

const SEGMENT: u32 = 1 << 20;
const PAGE: u64 = 8192;

const REL_A: RelFileLocator = RelFileLocator {
    spc_oid: 1663,
    db_oid: 5,
    rel_number: 16_384,
};
const REL_B: RelFileLocator = RelFileLocator {
    rel_number: 16_385,
    ..REL_A
};
const REL_C: RelFileLocator = RelFileLocator {
    rel_number: 16_386,
    ..REL_A
};

fn main_fork(rel: RelFileLocator) -> RelTag {
    RelTag::new(rel, ForkNumber::Main)
}

type State = (
    HashMap<RelTag, u32>,
    Vec<(u32, u32)>,
    Vec<((u32, u32), u32)>,
);

/// What ingest keeps that resume must rebuild (SLRUs by number).
fn state(ingest: &WalIngest) -> State {
    let mut pages: Vec<_> = ingest
        .slru_pages
        .iter()
        .map(|&(kind, page)| (kind as u32, page))
        .collect();
    pages.sort_unstable();
    let mut segments: Vec<_> = ingest
        .slru_segments
        .iter()
        .map(|(&(kind, segment), &size)| ((kind as u32, segment), size))
        .collect();
    segments.sort_unstable();
    (ingest.sizes.clone(), pages, segments)
}

/// A logical message whose one block reference (will-init) is `block` of `rel`.
fn record_on(rel: RelFileLocator, block: u32) -> Vec<u8> {
    let blocks = [BlockToWrite {
        id: 0,
        rel,
        fork: 0,
        block,
        will_init: true,
        image: None,
        data: &[1, 2, 3],
    }];
    build_record(RM_LOGICALMSG_ID, 0, 1, Lsn(0x100), &blocks, &[9; 8]).unwrap()
}

fn run(test: impl AsyncFnOnce(PathBuf) + Send + 'static) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        test(path).await;
    })
    .unwrap();
}

async fn load(dir: &Path, id: u8, ancestor: Option<Rc<Timeline>>) -> Rc<Timeline> {
    let core = CoreContext::new(8 << 20);
    Rc::new(
        Timeline::load(dir, [1; 16], [id; 16], core, ancestor)
            .await
            .unwrap(),
    )
}

/// Grows A to 10 blocks and B to 4, truncates A to 3, drops B, zeroes
/// `pg_xact` pages 0 and 33 (two segments) and grows C to 8 through a WAL
/// record; returns the end of that record.
async fn workload(ingest: &mut WalIngest) -> Lsn {
    let a = main_fork(REL_A);
    ingest.set_size(a, 10, Lsn(0x1100)).await.unwrap();
    ingest
        .set_size(main_fork(REL_B), 4, Lsn(0x1108))
        .await
        .unwrap();
    ingest
        .set_size(RelTag::new(REL_B, ForkNumber::Fsm), 2, Lsn(0x1108))
        .await
        .unwrap();
    ingest
        .truncate_relation(
            REL_A,
            3,
            crate::ingest::cut::TruncatedForks {
                main: true,
                fsm: false,
                vm: false,
            },
            Lsn(0x1110),
        )
        .await
        .unwrap();
    for fork in super::super::ALL_FORKS {
        ingest
            .drop_fork(RelTag::new(REL_B, fork), Lsn(0x1118))
            .await
            .unwrap();
    }
    ingest
        .zero_slru_page(SlruKind::Clog, 0, Lsn(0x1120))
        .await
        .unwrap();
    ingest
        .zero_slru_page(SlruKind::Clog, 33, Lsn(0x1128))
        .await
        .unwrap();
    let record = record_on(REL_C, 7);
    ingest
        .ingest_record(Lsn(0x2000), Lsn(0x2000 + record.len() as u64), &record)
        .await
        .unwrap()
}

#[test]
fn resume_after_a_reload_rebuilds_the_state_ingest_had() {
    run(async |root| {
        let dir = root.join("timeline");
        let core = CoreContext::new(8 << 20);
        let timeline = Rc::new(
            Timeline::create(&dir, [1; 16], [2; 16], Lsn(0x1000), core)
                .await
                .unwrap(),
        );
        let mut ingest = WalIngest::new(timeline, HashMap::new(), HashSet::new(), None, None);
        let end = workload(&mut ingest).await;
        let before = state(&ingest);
        assert_eq!(before.0.get(&main_fork(REL_A)), Some(&3));
        assert_eq!(before.0.get(&main_fork(REL_C)), Some(&8));
        assert!(!before.0.contains_key(&main_fork(REL_B)));
        let clog = SlruKind::Clog as u32;
        assert_eq!(before.2, vec![((clog, 0), 1), ((clog, 1), 2)]);

        // Resumed on the live timeline (nothing flushed) and after a reload.
        let live = WalIngest::resume(Rc::clone(ingest.timeline()), None)
            .await
            .unwrap();
        assert_eq!(state(&live), before);
        ingest.flush().await.unwrap();
        drop((ingest, live));
        let timeline = load(&dir, 2, None).await;
        assert_eq!(timeline.last_record_lsn(), Lsn(end.0 + 1));
        let mut resumed = WalIngest::resume(Rc::clone(&timeline), None).await.unwrap();
        assert_eq!(state(&resumed), before);

        // The WAL read again: the record already held is skipped, the next is not.
        let record = record_on(REL_C, 7);
        resumed
            .ingest_record(Lsn(0x2000), Lsn(0x2000 + record.len() as u64), &record)
            .await
            .unwrap();
        assert_eq!(resumed.stats().skipped_records, 1);
        assert_eq!(resumed.stats().records, 0);
        let next = record_on(REL_A, 5);
        resumed
            .ingest_record(end, Lsn(end.0 + next.len() as u64), &next)
            .await
            .unwrap();
        assert_eq!(resumed.stats().records, 1);
        assert_eq!(resumed.relation_sizes().get(&main_fork(REL_A)), Some(&6));
    });
}

#[test]
fn resume_on_a_branch_sees_the_ancestors_keys_below_the_branch_point() {
    run(async |root| {
        let parent_dir = root.join("parent");
        let child_dir = root.join("child");
        let core = CoreContext::new(8 << 20);
        let parent = Rc::new(
            Timeline::create(&parent_dir, [1; 16], [2; 16], Lsn(0x1000), core.clone())
                .await
                .unwrap(),
        );
        let mut ingest = WalIngest::new(
            Rc::clone(&parent),
            HashMap::new(),
            HashSet::new(),
            None,
            None,
        );
        let at = workload(&mut ingest).await;
        let parent_state = state(&ingest);
        ingest.flush().await.unwrap();
        // The parent goes on past the branch point: none of it is the child's.
        ingest
            .set_size(main_fork(REL_B), 9, Lsn(at.0 + 0x100))
            .await
            .unwrap();
        ingest
            .zero_slru_page(SlruKind::Clog, 70, Lsn(at.0 + 0x108))
            .await
            .unwrap();
        ingest.flush().await.unwrap();
        let child = Rc::new(
            Timeline::branch(&child_dir, [3; 16], Rc::clone(&parent), at, core)
                .await
                .unwrap(),
        );
        let mut on_child = WalIngest::resume(Rc::clone(&child), None).await.unwrap();
        assert_eq!(state(&on_child), parent_state);
        let next = Lsn(child.last_record_lsn().0.next_multiple_of(8));
        on_child.drop_fork(main_fork(REL_A), next).await.unwrap();
        on_child.timeline().advance(next);
        let child_state = state(&on_child);
        on_child.flush().await.unwrap();
        drop((on_child, child, ingest, parent));

        let parent = load(&parent_dir, 2, None).await;
        let child = load(&child_dir, 3, Some(Rc::clone(&parent))).await;
        let resumed = WalIngest::resume(child, None).await.unwrap();
        assert_eq!(state(&resumed), child_state);
        assert!(!resumed.relation_sizes().contains_key(&main_fork(REL_A)));
        let resumed_parent = WalIngest::resume(parent, None).await.unwrap();
        assert_eq!(
            resumed_parent.relation_sizes().get(&main_fork(REL_B)),
            Some(&9)
        );
        assert!(resumed_parent.slru_pages().contains(&(SlruKind::Clog, 70)));
    });
}

/// Appends a logical message of exactly `total` bytes (26..=281, or 285
/// and more: the main data's length takes 1 byte up to 255, else 4).
fn append(writer: &mut WalWriter, total: u64) {
    let main = if total - 26 <= 255 {
        total - 26
    } else {
        total - 29
    };
    assert!(
        total <= 281 || main > 255,
        "{total} bytes cannot be laid out"
    );
    let start = writer.insert_position();
    writer
        .append(RM_LOGICALMSG_ID, 0, 1, &[], &vec![7; main as usize])
        .unwrap_or_else(|e| panic!("record at {start}: {e}"));
}

/// Appends records until the next one starts `left` bytes before the end
/// of the current page (0: exactly at the next page), the last of them
/// ending 3 bytes short of that point (its padding fills them).
fn fill_page_leaving(writer: &mut WalWriter, left: u64) {
    loop {
        let position = writer.insert_position();
        let offset = position.0 % PAGE;
        // A position at a page start gets the page header first.
        let header = match (offset, position.0 % u64::from(SEGMENT)) {
            (0, 0) => 40,
            (0, _) => 24,
            _ => 0,
        };
        let room = PAGE - offset - header - left;
        if (40..=8000).contains(&room) && !(282..=287).contains(&room) {
            append(writer, room - 3);
            return;
        }
        append(writer, if room > 8000 { 4000 } else { 200 });
    }
}

/// A WAL stream with record ends at a page boundary, at a segment boundary,
/// 16 bytes before a page end (the next header splits), and after a switch.
fn wal() -> (Lsn, Vec<u8>) {
    let base = Lsn(3 * u64::from(SEGMENT));
    let mut writer = WalWriter::new(base, SEGMENT, 42, 1).unwrap();
    append(&mut writer, 100);
    fill_page_leaving(&mut writer, 0);
    append(&mut writer, 100);
    fill_page_leaving(&mut writer, 16);
    append(&mut writer, 300);
    while writer.insert_position().0 < base.0 + u64::from(SEGMENT) - 3 * PAGE {
        append(&mut writer, 6000);
    }
    while writer.insert_position().0 < base.0 + u64::from(SEGMENT) {
        fill_page_leaving(&mut writer, 0);
    }
    append(&mut writer, 100);
    append(&mut writer, 5000);
    writer.switch_segment().unwrap();
    append(&mut writer, 100);
    append(&mut writer, 100);
    (base, writer.into_segments())
}

/// The records decoded from `from` on, and the error that stopped them
/// (the zeros past the written WAL, at the latest).
fn decode_from(base: Lsn, bytes: &[u8], from: Lsn) -> (Vec<RawRecord>, String) {
    let mut decoder = WalStreamDecoder::new(from, SEGMENT);
    decoder.feed(&bytes[(from.0 - base.0) as usize..]);
    let mut records = Vec::new();
    loop {
        match decoder.next_record() {
            Ok(Some(record)) => records.push(record.to_raw()),
            Ok(None) => return (records, "end of input".into()),
            Err(e) => return (records, e.to_string()),
        }
    }
}

#[test]
fn the_wal_decodes_again_from_where_a_restart_takes_it_up() {
    let (base, bytes) = wal();
    let (all, stop) = decode_from(base, &bytes, base);
    let written_end = all.last().unwrap().end.align_up(8).unwrap();
    assert_eq!(stop, format!("{written_end} invalid record length 0"));
    let ends: Vec<Lsn> = all.iter().map(|r| r.end.align_up(8).unwrap()).collect();
    let segment_end = Lsn(base.0 + u64::from(SEGMENT));
    assert!(ends.iter().any(|e| e.0 % PAGE == 0 && *e != segment_end));
    assert!(
        ends.contains(&segment_end),
        "a record ends at the segment end"
    );
    assert!(ends.iter().any(|e| e.0 % PAGE == PAGE - 16));
    let switch = all
        .iter()
        .position(|r| r.bytes[17] == RM_XLOG_ID && r.bytes[16] & 0xF0 == XLOG_SWITCH)
        .unwrap();
    assert_eq!(all[switch + 1].start.0 % u64::from(SEGMENT), 40);

    for (i, next) in all.iter().enumerate().skip(1) {
        let end = ends[i - 1];
        // The boundaries above, a switch, and the first and last few.
        let boundary = end.0.is_multiple_of(PAGE) || end.0 % PAGE == PAGE - 16 || i - 1 == switch;
        if !(boundary || i < 5 || i + 3 > all.len()) {
            continue;
        }
        // Straight from the record end: right, except after a switch.
        let (direct, stop) = decode_from(base, &bytes, end);
        if i - 1 == switch {
            assert!(direct.is_empty(), "zeros after a switch: {direct:?}");
            assert!(stop.ends_with("invalid record length 0"), "{stop}");
        } else {
            assert_eq!(direct.first(), Some(next), "decoding from {end}: {stop}");
        }
        // From the restart point of the end and of one past it, skipping
        // what ends at or below: right in every case.
        for last in [end, Lsn(end.0 + 1)] {
            let from = wal_restart_lsn(last, SEGMENT);
            let (records, stop) = decode_from(base, &bytes, from);
            let first = records.iter().find(|r| r.end.align_up(8).unwrap() > last);
            assert_eq!(
                first,
                Some(next),
                "restarting after {last} from {from}: {stop}"
            );
        }
    }
}

#[test]
fn a_resume_never_asks_for_wal_below_the_timelines_own_start() {
    let start = Lsn(0x014E_6140);
    let segment = wal_restart_lsn(start, SEGMENT);
    assert!(segment < start);
    // Nothing flushed past the import: from the import LSN itself.
    assert_eq!(
        wal_resume_lsn(Lsn(start.0 + 1), SEGMENT, Some(start)),
        start
    );
    assert_eq!(wal_resume_lsn(start, SEGMENT, Some(start)), start);
    // Past it in the same segment: still the import LSN, the record
    // start below the last record that the source holds.
    let same_segment = Lsn(start.0 + 0x1000);
    assert_eq!(wal_restart_lsn(same_segment, SEGMENT), segment);
    assert_eq!(wal_resume_lsn(same_segment, SEGMENT, Some(start)), start);
    // A later segment: its start, as without a known start.
    let later = Lsn(start.0 + 3 * u64::from(SEGMENT));
    assert_eq!(
        wal_resume_lsn(later, SEGMENT, Some(start)),
        wal_restart_lsn(later, SEGMENT)
    );
    // Unknown, or a start past the last record (not a start of this
    // timeline's WAL): the segment start.
    assert_eq!(wal_resume_lsn(Lsn(start.0 + 1), SEGMENT, None), segment);
    assert_eq!(wal_resume_lsn(segment, SEGMENT, Some(start)), segment);
}
