//! The safekeeper's WAL segments on a real file system with direct I/O:
//! group-committed appends read back byte for byte after a reopen, a
//! restart ends the WAL at its last whole record, and a cut stays cut.
//!
//! The WAL is real Postgres WAL laid out by `quire_postgres`' writer
//! (records across pages and 1 MiB segments), so the restart decode is
//! the one a safekeeper does on WAL from a compute.

use std::path::Path;

use quire_io::{LocalConfig, run_local};
use quire_postgres::Lsn;
use quire_postgres::wal::writer::WalWriter;
use quire_safekeeper::wal_store::WalStore;

const SEGMENT: u32 = 1 << 20;
const START: Lsn = Lsn(3 << 20);

/// About 2.6 MiB of records of varied sizes; returns the bytes from
/// `START` and each record's end (rounded up to 8, where the next begins).
fn real_wal() -> (Vec<u8>, Vec<Lsn>) {
    let mut writer = WalWriter::new(START, SEGMENT, 7_000_000_001, 1).expect("writer");
    let mut ends = Vec::new();
    let mut seed = 0x1234_5678_u64;
    while writer.insert_position().0 < START.0 + (2 << 20) + 600_000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = (seed >> 33) as usize % 20_000;
        let main: Vec<u8> = (0..len)
            .map(|i| (i as u64 ^ seed).to_le_bytes()[0])
            .collect();
        writer.append(0, 0x00, 0, &[], &main).expect("append");
        ends.push(writer.insert_position());
    }
    let end = writer.insert_position();
    let mut bytes = writer.into_segments();
    bytes.truncate(usize::try_from(end.0 - START.0).expect("small"));
    (bytes, ends)
}

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let config = LocalConfig {
        io_memory_bytes: 2 << 20,
        ..LocalConfig::default()
    };
    run_local(&config, f).expect("the test task");
}

fn slice(bytes: &[u8], from: Lsn, to: Lsn) -> &[u8] {
    &bytes[usize::try_from(from.0 - START.0).expect("small")
        ..usize::try_from(to.0 - START.0).expect("small")]
}

async fn append_all(store: &mut WalStore, bytes: &[u8], from: Lsn, to: Lsn, chunk: usize) {
    let mut at = from;
    for part in slice(bytes, from, to).chunks(chunk) {
        store.append(at, part).expect("append");
        at = Lsn(at.0 + part.len() as u64);
        if at.0.is_multiple_of(3) {
            store.flush().await.expect("flush");
        }
    }
    store.flush().await.expect("flush");
}

#[test]
fn group_committed_wal_reads_back_after_a_reopen() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        assert_eq!(store.flush_lsn(), START, "an empty directory holds no WAL");
        append_all(&mut store, &bytes, START, end, 7_777).await;
        assert_eq!(store.flush_lsn(), end);
        let read = store.read(START, end).await.expect("read");
        assert!(
            read == slice(&bytes, START, end),
            "read differs before the reopen"
        );
        store.close().await.expect("close");

        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(
            store.flush_lsn(),
            end,
            "the reopened WAL ends at the last record"
        );
        let read = store.read(START, end).await.expect("read");
        assert!(
            read == slice(&bytes, START, end),
            "read differs after the reopen"
        );
        for number in 3..=5 {
            assert!(
                Path::new(&path)
                    .join(format!("0000000100000000{number:08X}"))
                    .exists(),
                "segment {number} is named as in pg_wal"
            );
        }
        store.close().await.expect("close");
    });
}

#[test]
fn a_restart_ends_the_wal_at_its_last_whole_record() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        // Stop in the middle of a record that crosses into the next segment.
        let crossing = ends
            .windows(2)
            .find(|w| {
                w[0].0 < START.0 + u64::from(SEGMENT) * 2
                    && w[1].0 > START.0 + u64::from(SEGMENT) * 2
            })
            .expect("a record across the second segment boundary");
        let partial = Lsn(crossing[1].0 - 100);
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        append_all(&mut store, &bytes, START, partial, 50_000).await;
        assert_eq!(store.flush_lsn(), partial);
        store.close().await.expect("close");
        let store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(
            store.flush_lsn(),
            crossing[0],
            "the partial record is dropped, the whole ones kept"
        );
        store.close().await.expect("close");
    });
}

#[test]
fn a_cut_stays_cut_across_a_reopen() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        let cut = ends[ends.len() / 3];
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        append_all(&mut store, &bytes, START, end, 100_000).await;
        store.truncate(cut).await.expect("truncate");
        assert_eq!((store.write_lsn(), store.flush_lsn()), (cut, cut));
        assert!(store.read(cut, end).await.is_err(), "nothing past the cut");
        store.close().await.expect("close");

        // The old records after the cut are valid WAL: only the cut's
        // zeroes and holes keep a restart from finding them again.
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), cut);
        let later = cut.0 / u64::from(SEGMENT) + 1;
        assert!(
            !Path::new(&path)
                .join(format!("0000000100000000{later:08X}"))
                .exists(),
            "segments after the cut are removed"
        );
        // The same WAL written again from the cut reads back whole.
        append_all(&mut store, &bytes, cut, end, 30_000).await;
        store.close().await.expect("close");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), end);
        let read = store.read(START, end).await.expect("read");
        assert!(read == slice(&bytes, START, end));
        // Unflushed bytes after a cut are gone at a reopen too.
        store.truncate(cut).await.expect("truncate");
        store.append(cut, &[0xAB; 5000]).expect("append");
        store.close().await.expect("close");
        let store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), cut);
        store.close().await.expect("close");
    });
}

#[test]
fn removed_segments_are_gone_and_never_read_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        append_all(&mut store, &bytes, START, end, 64 << 10).await;
        let second = Lsn(START.0 + u64::from(SEGMENT));
        // Everything below the second segment's end goes: two whole segments.
        let removed = store
            .remove_segments_before(Lsn(second.0 + u64::from(SEGMENT) + 5))
            .await
            .expect("remove");
        assert_eq!(removed, 2);
        assert!(!Path::new(&path).join("000000010000000000000003").exists());
        assert!(!Path::new(&path).join("000000010000000000000004").exists());
        assert!(
            store.read(START, second).await.is_err(),
            "removed WAL is not served"
        );
        let kept = Lsn(second.0 + u64::from(SEGMENT));
        let read = store.read(kept, end).await.expect("the rest reads");
        assert!(read == slice(&bytes, kept, end));
        store.close().await.expect("close");
        // A reopen still finds the end, and does not bring removed WAL back.
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), end);
        assert!(store.read(START, second).await.is_err());
        store.close().await.expect("close");
    });
}

/// While the WAL fills a segment the next one is written ahead (zeros,
/// whole, under its final name only when complete); a preparation a crash
/// interrupted is removed at the next open and changes nothing.
#[test]
fn the_next_segment_is_written_ahead_and_a_crashed_preparation_is_removed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        // Stay inside the first segment (3).
        let end = *ends
            .iter()
            .take_while(|end| end.0 < START.0 + 300_000)
            .last()
            .expect("records");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        append_all(&mut store, &bytes, START, end, 7_777).await;
        // Closing waits for the preparation under way.
        store.close().await.expect("close");
        let next = path.join("000000010000000000000004");
        let ahead = std::fs::read(&next).expect("segment 4 was written ahead");
        assert_eq!(ahead.len(), SEGMENT as usize, "at full size");
        assert!(ahead.iter().all(|&b| b == 0), "and all zeros");
        let leftovers: Vec<_> = std::fs::read_dir(&path)
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".prep"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left");

        // A crash in the middle of preparing segment 5.
        let stale = path.join("000000010000000000000005.prep");
        std::fs::write(&stale, vec![7u8; 8192]).expect("stale file");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert!(!stale.exists(), "the unfinished preparation is removed");
        assert_eq!(store.flush_lsn(), end, "the WAL still ends where it did");
        // Writing on into the prepared segment reads back.
        let later = *ends.last().expect("records");
        append_all(&mut store, &bytes, end, later, 50_000).await;
        let read = store.read(START, later).await.expect("read");
        assert!(read == slice(&bytes, START, later));
        store.close().await.expect("close");
        let store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), later);
        store.close().await.expect("close");
    });
}

/// A segment size of 0 (a corrupt control file, an unchecked request) is a
/// typed error at open, not a division by zero.
#[test]
fn invalid_segment_sizes_are_refused_at_open() {
    use quire_safekeeper::wal_store::WalStoreError;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        for size in [0, 1, 8192, 3 << 20, 2 << 30] {
            assert!(matches!(
                WalStore::open(&path, START, size, 1).await,
                Err(WalStoreError::InvalidSegmentSize(s)) if s == size
            ));
        }
    });
}

/// File names that look like segments but name none (a segment number
/// past the segments of a 4 GiB log, another timeline) are not WAL; WAL
/// at the very end of the LSN space is refused, not wrapped.
#[test]
fn odd_names_and_the_end_of_the_lsn_space_do_not_panic() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    for name in [
        "00000001FFFFFFFFFFFFFFFF",
        "000000010000000000001000",
        "00000002FFFFFFFF00000FFF",
        "not-a-segment",
    ] {
        std::fs::write(path.join(name), b"").expect("write");
    }
    on_executor(move || async move {
        let store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        assert_eq!(store.flush_lsn(), START);
        store.close().await.expect("close");
        for name in ["00000001FFFFFFFFFFFFFFFF", "not-a-segment"] {
            assert!(path.join(name).exists(), "{name} is not ours to remove");
        }
        let near_end = Lsn(u64::MAX - 100);
        let mut store = WalStore::open(&path, near_end, SEGMENT, 1)
            .await
            .expect("open near the end");
        assert!(store.append(near_end, &[0; 200]).is_err());
        store.append(near_end, &[0; 50]).expect("room for 50 bytes");
        store.close().await.expect("close");
    });
}

/// A store in `path` holding `bytes` up to `end`, written and closed.
async fn write_wal(path: &Path, bytes: &[u8], end: Lsn) {
    let mut store = WalStore::open(path, START, SEGMENT, 1).await.expect("open");
    append_all(&mut store, bytes, START, end, 65_536).await;
    store.close().await.expect("close");
}

/// Flips one byte of the segment file holding `at`.
fn flip_byte(path: &Path, at: Lsn) {
    let number = at.0 / u64::from(SEGMENT);
    let file = path.join(format!("0000000100000000{number:08X}"));
    let mut bytes = std::fs::read(&file).expect("read segment");
    let offset = usize::try_from(at.0 % u64::from(SEGMENT)).expect("small");
    bytes[offset] ^= 0x40;
    std::fs::write(&file, &bytes).expect("write segment");
}

/// The scenario at the store: one byte flipped in the middle of the
/// last segment. The log reads only up to the record before it, but whole
/// records decode after it, so the store reports the WAL written up to the
/// real end, and the bytes up to a mark there do not continue the record.
#[test]
fn a_flipped_byte_with_records_after_it_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        write_wal(&path, &bytes, end).await;
        let flipped = Lsn((end.0 / u64::from(SEGMENT)) * u64::from(SEGMENT) + 0x4_0064);
        assert!(flipped < end, "the last segment reaches past the flip");
        flip_byte(&path, flipped);
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        let readable = store.flush_lsn();
        let before = *ends
            .iter()
            .rev()
            .find(|e| **e <= flipped)
            .expect("a record before");
        assert_eq!(
            readable, before,
            "the log reads up to the record holding the flip"
        );
        assert_eq!(
            store.written_after_end(),
            Some(end),
            "the records after the flip are found"
        );
        assert_eq!(store.damaged_below(end).await.expect("judge"), Some(end));
        assert_eq!(store.damaged_below(readable).await.expect("judge"), None);
        store.close().await.expect("close");
    });
}

/// A torn tail is not damage: a last record cut short across pages (its
/// continuation pages valid) and a mark at the cut.
#[test]
fn a_record_cut_short_across_pages_is_a_torn_tail() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        // A record spanning more than two pages; stop past its second page.
        let long = ends
            .windows(2)
            .find(|w| (w[0].0 / 8192 + 2) * 8192 + 100 < w[1].0 && w[0].0 > START.0 + 8192)
            .expect("a long record");
        let cut = Lsn((long[0].0 / 8192 + 2) * 8192 + 100);
        assert!(cut < long[1]);
        write_wal(&path, &bytes, cut).await;
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), long[0]);
        assert_eq!(store.written_after_end(), None, "a torn tail, not damage");
        assert_eq!(store.damaged_below(cut).await.expect("judge"), None);
        // A mark past what the disk holds at all is damage.
        assert_eq!(
            store.damaged_below(long[1]).await.expect("judge"),
            Some(long[1])
        );
        store.close().await.expect("close");
    });
}

/// A lost segment below the mark is damage.
#[test]
fn a_lost_segment_below_the_mark_is_damage() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let (bytes, ends) = real_wal();
        let end = *ends.last().expect("records");
        write_wal(&path, &bytes, end).await;
        let last = end.0 / u64::from(SEGMENT);
        std::fs::remove_file(path.join(format!("0000000100000000{last:08X}"))).expect("remove");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert!(store.flush_lsn() < Lsn(last * u64::from(SEGMENT)));
        assert_eq!(store.damaged_below(end).await.expect("judge"), Some(end));
        store.close().await.expect("close");
    });
}

/// A log ending with an `XLOG_SWITCH` ends at its segment's end (the
/// padding is WAL the compute sent), so a mark there is no damage.
#[test]
fn a_log_ending_in_a_segment_switch_ends_at_the_segment_end() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = dir.path().to_owned();
    on_executor(move || async move {
        let mut writer = WalWriter::new(START, SEGMENT, 7_000_000_001, 1).expect("writer");
        for _ in 0..20 {
            writer.append(0, 0x00, 0, &[], &[7; 3000]).expect("append");
        }
        writer.switch_segment().expect("switch");
        let end = writer.insert_position();
        assert_eq!(end, Lsn(START.0 + u64::from(SEGMENT)));
        let mut bytes = writer.into_segments();
        bytes.truncate(usize::try_from(end.0 - START.0).expect("small"));
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("open");
        store.append(START, &bytes).expect("append");
        store.flush().await.expect("flush");
        store.close().await.expect("close");
        let mut store = WalStore::open(&path, START, SEGMENT, 1)
            .await
            .expect("reopen");
        assert_eq!(store.flush_lsn(), end, "the switch's padding is kept");
        assert_eq!(store.written_after_end(), None);
        assert_eq!(store.damaged_below(end).await.expect("judge"), None);
        store.close().await.expect("close");
    });
}
