//! The commit-time index: the last commit at or before a time, across the
//! in-memory layer, delta layers and an image layer (which re-stores the
//! value at its own LSN), a branch reaching into its parent, and the PITR
//! horizon of GC.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use quire_io::{LocalConfig, run_local};
use quire_postgres::timestamp::TimestampTz;
use quire_postgres::{Key, Lsn};
use quire_shard::commit_time::commit_time_value;
use quire_shard::{CommitPoint, CoreContext, GcPolicy, ImagePolicy, Timeline};
use support::AppendRedo;

const TENANT: [u8; 16] = [3; 16];

/// Commit `n` ends at LSN `0x1000 + 0x100 n` at time `1_000_000 n` µs
/// (one second apart), with commit 7 a microsecond before commit 6 (as two
/// concurrent commits may be).
fn commit(n: u64) -> CommitPoint {
    let time = if n == 7 { 6_000_000 - 1 } else { 1_000_000 * n };
    CommitPoint {
        lsn: Lsn(0x1000 + 0x100 * n),
        time: TimestampTz(i64::try_from(time).unwrap()),
    }
}

async fn put_commits(timeline: &Timeline, range: std::ops::Range<u64>) {
    for n in range {
        let point = commit(n);
        timeline
            .put(
                Key::commit_time(),
                point.lsn,
                commit_time_value(point.lsn, point.time),
            )
            .await
            .unwrap();
        timeline.advance(point.lsn);
    }
}

async fn at_or_before(timeline: &Timeline, micros: i64) -> Option<Lsn> {
    timeline
        .commit_at_or_before(TimestampTz(micros))
        .await
        .unwrap()
        .map(|c| c.lsn)
}

async fn run(dir: &std::path::Path) {
    let core = CoreContext::new(8 << 20);
    let parent = Timeline::create(
        &dir.join("parent"),
        TENANT,
        [1; 16],
        Lsn(0x1000),
        core.clone(),
    )
    .await
    .unwrap();
    put_commits(&parent, 1..5).await;
    parent.freeze();
    parent.flush().await.unwrap();
    put_commits(&parent, 5..9).await;
    // Commits 1..=8 over a delta layer and the open layer.
    assert_eq!(at_or_before(&parent, 999_999).await, None);
    assert_eq!(at_or_before(&parent, 1_000_000).await, Some(commit(1).lsn));
    assert_eq!(at_or_before(&parent, 3_500_000).await, Some(commit(3).lsn));
    assert_eq!(at_or_before(&parent, 4_000_000).await, Some(commit(4).lsn));
    assert_eq!(at_or_before(&parent, 5_000_001).await, Some(commit(5).lsn));
    assert_eq!(at_or_before(&parent, 60_000_000).await, Some(commit(8).lsn));
    // Commit 7 is a microsecond earlier than 6: at 6 s both are at or
    // before the time and 7 is the later in the WAL; at 6 s - 1 µs 6 is
    // not, and the boundary is 5 or 7, either a commit at or before it.
    assert_eq!(at_or_before(&parent, 6_000_000).await, Some(commit(7).lsn));
    let found = at_or_before(&parent, 5_999_999).await;
    assert!(
        found == Some(commit(5).lsn) || found == Some(commit(7).lsn),
        "{found:?}"
    );

    // An image layer stores the value at its own LSN; the commit's stays.
    parent.freeze();
    parent.flush().await.unwrap();
    let policy = ImagePolicy {
        partition_keys: 16,
        max_delta_layers: 0,
        max_chain_records: 0,
    };
    let report = parent
        .create_image_layers(&AppendRedo, policy)
        .await
        .unwrap();
    assert!(!report.layers.is_empty(), "{report:?}");
    put_commits(&parent, 9..11).await;
    assert_eq!(at_or_before(&parent, 8_500_000).await, Some(commit(8).lsn));
    assert_eq!(
        at_or_before(&parent, 10_000_000).await,
        Some(commit(10).lsn)
    );

    // A branch at commit 4 sees the parent's commits up to it, then its own.
    let child = Timeline::branch(
        &dir.join("child"),
        [2; 16],
        std::rc::Rc::new(parent),
        commit(4).lsn,
        core,
    )
    .await
    .unwrap();
    assert_eq!(at_or_before(&child, 60_000_000).await, Some(commit(4).lsn));
    let own = CommitPoint {
        lsn: Lsn(commit(4).lsn.0 + 0x80),
        time: TimestampTz(4_500_000),
    };
    child
        .put(
            Key::commit_time(),
            own.lsn,
            commit_time_value(own.lsn, own.time),
        )
        .await
        .unwrap();
    child.advance(own.lsn);
    assert_eq!(at_or_before(&child, 4_600_000).await, Some(own.lsn));
    assert_eq!(at_or_before(&child, 2_000_000).await, Some(commit(2).lsn));

    // The PITR horizon: the last commit at or before now - pitr.
    let epoch = TimestampTz(0).to_system_time().unwrap();
    let policy = GcPolicy {
        horizon_bytes: u64::MAX,
        pitr: Duration::from_secs(10),
    };
    let now = epoch + Duration::from_millis(13_500);
    let (parent, _) = child.ancestor().unwrap();
    assert_eq!(parent.gc_cutoff_for(policy, now).await.unwrap(), Lsn(0));
    let policy = GcPolicy {
        horizon_bytes: 0,
        ..policy
    };
    assert_eq!(
        parent.gc_cutoff_for(policy, now).await.unwrap(),
        commit(3).lsn
    );
    let long_ago = epoch + Duration::from_millis(500) + policy.pitr;
    assert_eq!(
        parent.gc_cutoff_for(policy, long_ago).await.unwrap(),
        Lsn(0)
    );

    // GC past commit 2 (between it and commit 3): a time at or after commit
    // 2 and before 3 is answered at the cutoff, the lowest readable LSN
    // (without the clamp: commit 2's LSN, which a branch would refuse).
    let cutoff = Lsn(commit(2).lsn.0 + 0x80);
    parent.gc(cutoff, &[commit(4).lsn]).await.unwrap();
    assert_eq!(parent.gc_cutoff_lsn(), cutoff);
    assert_eq!(at_or_before(parent, 2_500_000).await, Some(cutoff));
    assert_eq!(at_or_before(parent, 3_000_000).await, Some(commit(3).lsn));
    // Before commit 2 the state is below the cutoff: not readable.
    assert_eq!(at_or_before(parent, 1_500_000).await, None);
}

#[test]
fn the_last_commit_at_or_before_a_time() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    run_local(
        &LocalConfig {
            io_memory_bytes: 2 << 20,
            ..LocalConfig::default()
        },
        move || async move { run(&path).await },
    )
    .unwrap();
}
