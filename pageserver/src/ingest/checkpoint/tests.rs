//! The advancing rules of the running checkpoint: xid steps and epoch
//! wraparound, multixact wraparound, nothing moving back, and which record
//! replaces what.
#![allow(clippy::unwrap_used)]

use quire_postgres::types::MultiXactId;
use quire_postgres::wal::effects::XactStatus;

use super::*;

const EPOCH: u64 = 1 << 32;

/// `next_xid_past(next, xid) == expected`.
fn check_xid(next: u64, xid: u32, expected: Option<u64>) {
    assert_eq!(
        next_xid_past(next, xid),
        expected,
        "next {next:#x} ({}:{}), xid {xid}",
        next >> 32,
        next & 0xFFFF_FFFF
    );
}

#[test]
fn an_xid_moves_next_xid_to_the_step_above_it() {
    check_xid(100, 100, Some(1024));
    check_xid(100, 1023, Some(1024));
    check_xid(100, 1024, Some(2048));
    check_xid(1024, 1024, Some(2048));
    // Already past: no change, the put is saved.
    check_xid(1024, 1023, None);
    check_xid(1024, 5, None);
    // Special xids are never assigned.
    for special in 0..3 {
        check_xid(100, special, None);
    }
    // The epoch is kept.
    check_xid(7 * EPOCH + 5000, 6000, Some(7 * EPOCH + 6144));
    // The last xid of a pg_xact page rounds to the next page's first.
    check_xid(32_000, 32_767, Some(32_768));
    // The step never leaves the page of the xid unless onto the next one.
    for xid in (3..200_000).step_by(97) {
        let next = next_xid_past(3, xid).unwrap();
        let next_low = u32::try_from(next).unwrap();
        assert!(next > u64::from(xid) && next - u64::from(xid) <= XID_STEP);
        assert!(next_low / 32_768 == xid / 32_768 || next_low.is_multiple_of(32_768));
    }
}

#[test]
fn an_xid_that_wraps_starts_the_next_epoch() {
    let near_end = 2 * EPOCH + u64::from(u32::MAX - 2000);
    // An xid past 2^32 - 1, seen as a small number: the next epoch.
    check_xid(near_end, 10, Some(3 * EPOCH + 1024));
    // The last xid of an epoch: the next one's first normal xid, 3.
    check_xid(near_end, u32::MAX, Some(3 * EPOCH + 3));
    check_xid(near_end, u32::MAX - 1023, Some(3 * EPOCH + 3));
    // Within the epoch still.
    check_xid(near_end, u32::MAX - 1024, Some(3 * EPOCH - 1024));
    // Half the xid space behind (modulo 2^32): before next, ignored.
    check_xid(near_end, u32::MAX - 2001, None);
    check_xid(near_end, u32::MAX / 2, None);
    // From epoch 0 at its first normal xid, as initdb leaves it.
    check_xid(3, u32::MAX / 2, Some(u64::from(u32::MAX / 2) + 1));
}

#[test]
fn multixact_comparisons_wrap_at_2_32() {
    assert!(precedes_mod32(1, 2));
    assert!(!precedes_mod32(2, 2));
    assert!(precedes_mod32(u32::MAX, 0));
    assert!(precedes_mod32(u32::MAX - 5, 3));
    assert!(!precedes_mod32(3, u32::MAX - 5));
    // Exactly half way: the signed difference is -2^31, "before".
    assert!(precedes_mod32(0, 1 << 31));
    assert!(!precedes_mod32(0, (1 << 31) + 1));
    assert!(xid_precedes(0, 3));
    assert!(xid_precedes(u32::MAX, 3));
    assert!(!xid_follows_or_equals(2, 3));
}

fn base() -> CheckPoint {
    let mut cp = CheckPoint::zeroed();
    cp.next_xid.set(5 * EPOCH + 2000);
    cp.next_oid.set(20_000);
    cp.next_multi.set(10);
    cp.next_multi_offset.set(40);
    cp.oldest_xid.set(700);
    cp.oldest_xid_db.set(1);
    cp.oldest_multi.set(1);
    cp.oldest_multi_db.set(1);
    cp.redo.set(0x1000);
    cp
}

fn multixact(mid: u32, offset: u32, members: u32) -> Effect {
    Effect::MultiXactCreate {
        mid: MultiXactId(mid),
        offset,
        members: (0..members).map(|i| (TransactionId(1990 + i), 1)).collect(),
    }
}

fn checkpoint(cp: CheckPoint, shutdown: bool) -> Effect {
    Effect::Checkpoint {
        checkpoint: Box::new(cp),
        shutdown,
    }
}

fn running() -> RunningCheckpoint {
    RunningCheckpoint::new(Some(base()))
}

#[test]
fn records_move_the_counters_forward_only() {
    let mut run = running();
    run.note_record(TransactionId(1500), &[]);
    assert_eq!(run.take_changed(), None, "an older xid changes nothing");
    run.note_record(TransactionId(2100), &[]);
    let cp = run.take_changed().unwrap();
    assert_eq!(cp.next_xid.get(), 5 * EPOCH + 3072);
    assert_eq!(run.take_changed(), None, "taken once");

    // Subtransactions and multixact members count too.
    let commit = Effect::XactStatus {
        status: XactStatus::Committed,
        xid: TransactionId(2200),
        subxacts: vec![TransactionId(2201), TransactionId(5000)],
        prepared: false,
        time: quire_postgres::timestamp::TimestampTz(0),
    };
    run.note_record(TransactionId(2200), &[commit]);
    assert_eq!(run.value().unwrap().next_xid.get(), 5 * EPOCH + 5120);

    run.note_record(TransactionId::INVALID, &[multixact(10, 40, 3)]);
    let cp = run.take_changed().unwrap();
    assert_eq!((cp.next_multi.get(), cp.next_multi_offset.get()), (11, 43));
    // An older multixact (replayed out of order) moves nothing back.
    run.note_record(TransactionId::INVALID, &[multixact(4, 12, 2)]);
    assert_eq!(run.take_changed(), None);

    run.note_record(TransactionId::INVALID, &[Effect::NextOid(28_192)]);
    assert_eq!(run.take_changed().unwrap().next_oid.get(), 28_192);
    // NEXTOID is taken as it is: OIDs wrap, and the record is always ahead.
    run.note_record(TransactionId::INVALID, &[Effect::NextOid(16_384)]);
    assert_eq!(run.take_changed().unwrap().next_oid.get(), 16_384);
}

#[test]
fn multixact_counters_wrap_through_zero() {
    let mut cp = base();
    cp.next_multi.set(u32::MAX - 1);
    cp.next_multi_offset.set(u32::MAX - 3);
    let mut run = RunningCheckpoint::new(Some(cp));
    run.note_record(
        TransactionId::INVALID,
        &[multixact(u32::MAX, u32::MAX - 3, 5)],
    );
    let cp = run.take_changed().unwrap();
    // 0 is kept as Postgres' counter holds it: it skips 0 when it assigns.
    assert_eq!((cp.next_multi.get(), cp.next_multi_offset.get()), (0, 1));
    run.note_record(TransactionId::INVALID, &[multixact(1, 1, 2)]);
    let cp = run.take_changed().unwrap();
    assert_eq!((cp.next_multi.get(), cp.next_multi_offset.get()), (2, 3));
    // The one before the wrap is behind now.
    run.note_record(
        TransactionId::INVALID,
        &[multixact(u32::MAX - 1, u32::MAX - 10, 1)],
    );
    assert_eq!(run.take_changed(), None);
}

#[test]
fn an_online_checkpoint_never_moves_counters_back() {
    let mut run = running();
    run.note_record(TransactionId(2500), &[multixact(12, 50, 2)]);
    run.note_record(TransactionId::INVALID, &[Effect::NextOid(30_000)]);
    let ours = run.take_changed().unwrap();

    // Read at the checkpoint's start: older counters, newer limits.
    let mut online = base();
    online.next_xid.set(5 * EPOCH + 2400);
    online.next_oid.set(20_500);
    online.next_multi.set(11);
    online.next_multi_offset.set(45);
    online.oldest_xid.set(900);
    online.oldest_xid_db.set(5);
    online.oldest_active_xid.set(2300);
    online.redo.set(0x9000);
    online.time.set(77);
    run.note_record(TransactionId::INVALID, &[checkpoint(online, false)]);
    let cp = run.take_changed().unwrap();
    assert_eq!(cp.next_xid, ours.next_xid);
    assert_eq!(
        cp.next_oid.get(),
        30_000,
        "an online checkpoint's nextOid is ignored"
    );
    assert_eq!(cp.next_multi.get(), 13);
    assert_eq!(cp.next_multi_offset.get(), 52);
    assert_eq!((cp.oldest_xid.get(), cp.oldest_xid_db.get()), (900, 5));
    assert_eq!(cp.redo.get(), 0x9000);
    assert_eq!(cp.oldest_active_xid.get(), 2300);
    assert_eq!(cp.time.get(), 77);

    // Counters ahead of ours are taken; an older oldestXid is not.
    let mut later = online;
    later.next_xid.set(6 * EPOCH + 10);
    later.next_multi.set(100);
    later.next_multi_offset.set(400);
    later.oldest_xid.set(800);
    run.note_record(TransactionId::INVALID, &[checkpoint(later, false)]);
    let cp = run.take_changed().unwrap();
    assert_eq!(cp.next_xid.get(), 6 * EPOCH + 10);
    assert_eq!(
        (cp.next_multi.get(), cp.next_multi_offset.get()),
        (100, 400)
    );
    assert_eq!(cp.oldest_xid.get(), 900);
}

#[test]
fn a_shutdown_checkpoint_is_taken_exactly() {
    let mut run = running();
    run.note_record(TransactionId(2500), &[Effect::NextOid(30_000)]);
    assert_eq!(run.value().unwrap().next_xid.get(), 5 * EPOCH + 3072);
    let mut shutdown = base();
    shutdown.next_xid.set(5 * EPOCH + 2501);
    shutdown.next_oid.set(20_017);
    run.note_record(TransactionId::INVALID, &[checkpoint(shutdown, true)]);
    assert_eq!(run.take_changed(), Some(shutdown));
    // The same again changes nothing.
    run.note_record(TransactionId::INVALID, &[checkpoint(shutdown, true)]);
    assert_eq!(run.take_changed(), None);
}

#[test]
fn without_a_start_the_first_checkpoint_record_is_taken() {
    let mut run = RunningCheckpoint::new(None);
    run.note_record(TransactionId(2500), &[Effect::NextOid(30_000)]);
    assert_eq!(run.take_changed(), None);
    run.note_record(TransactionId::INVALID, &[checkpoint(base(), false)]);
    assert_eq!(run.take_changed(), Some(base()));
}

#[test]
fn a_multixact_truncation_sets_oldest_multi() {
    let mut run = running();
    let truncate = Effect::MultiXactTruncate {
        oldest_multi_db: 5,
        start_multi: 1,
        end_multi: 8,
        start_offset: 0,
        end_offset: 30,
    };
    run.note_record(TransactionId::INVALID, &[truncate]);
    let cp = run.take_changed().unwrap();
    assert_eq!((cp.oldest_multi.get(), cp.oldest_multi_db.get()), (8, 5));
}
