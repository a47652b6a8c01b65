//! Three `quire safekeeper` processes and a real Postgres 17 with
//! `synchronous_standby_names = 'ANY 2 (sk1, sk2, sk3)'`: after the
//! election the safekeepers stream the compute's WAL, commits return with
//! two of three up, wait with two down and resume when one returns; a
//! safekeeper killed with SIGKILL catches up after its restart; every
//! safekeeper's WAL is byte-identical to the compute's own `pg_wal`; once
//! `quire elect` elects a newer term for another compute, the old
//! compute's commits no longer complete; and a safekeeper that was down
//! fills its gap from its peers after the next election.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use quire_cluster::PgCluster;
use quire_postgres::Lsn;
use quire_tests::pg_install;
use quire_tests::safekeepers::{
    KEY, KEY_TEXT, Safekeeper, bootstrap, check_identical_wal, compute_options, elect_elsewhere,
    start_safekeepers, status, wal_bytes,
};

fn insert(pg: &PgCluster, from: u32, count: u32) -> Result<Duration> {
    let began = Instant::now();
    for id in from..from + count {
        pg.psql("postgres", &format!("INSERT INTO ledger VALUES ({id})"))?;
    }
    Ok(began.elapsed() / count)
}

/// With `down` stopped as well (one of three left), a commit waits; it
/// returns once `down` is back.
fn commit_waits_for_a_second_safekeeper(pg: &PgCluster, down: &mut Safekeeper) -> Result<()> {
    down.kill();
    let mut waiting = pg
        .client("psql")
        .args([
            "--no-psqlrc",
            "--quiet",
            "--command",
            "INSERT INTO ledger VALUES (5000)",
        ])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        waiting.try_wait()?.is_none(),
        "a commit returned with only one safekeeper up"
    );
    let began = Instant::now();
    down.start()?;
    let done = loop {
        if let Some(status) = waiting.try_wait()? {
            break status;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "the waiting commit never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(done.success(), "the waiting commit failed");
    println!(
        "a commit waited 2 s with 1 of 3 up and returned {:?} after sk2 was started again",
        began.elapsed()
    );
    Ok(())
}

/// With sk3 down, commits go on; then a newer term elected for another
/// compute fences this one (its commits no longer complete). With the
/// compute stopped, sk3 comes back behind; a third election makes it fill
/// its gap by peer recovery, after which its WAL equals sk1's.
fn fence_and_recover(
    pg: &mut PgCluster,
    safekeepers: &mut [Safekeeper],
    addresses: &[String],
) -> Result<()> {
    safekeepers[2].kill();
    insert(pg, 3000, 20)?;
    let behind: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?;
    ensure!(
        elect_elsewhere(Path::new(env!("CARGO_BIN_EXE_quire")), addresses)?
            .0
            .contains("elected term 2"),
        "expected term 2"
    );
    let mut fenced = pg
        .client("psql")
        .args([
            "--no-psqlrc",
            "--quiet",
            "--command",
            "INSERT INTO ledger VALUES (9000)",
        ])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    let committed = fenced.try_wait()?.is_some();
    let _ = fenced.kill();
    let _ = fenced.wait();
    ensure!(
        !committed,
        "the old compute committed after a newer term was elected"
    );
    println!(
        "after term 2 was elected for another compute, the old compute's commit waited 2 s and never returned"
    );
    pg.stop()?;

    safekeepers[2].start()?;
    let (_, sk3_flush, _) = status(&safekeepers[2].address, KEY)?;
    let (said, start) = elect_elsewhere(Path::new(env!("CARGO_BIN_EXE_quire")), addresses)?;
    ensure!(said.contains("elected term 3"), "expected term 3: {said}");
    ensure!(
        sk3_flush < behind && behind <= start,
        "sk3 was not behind: {sk3_flush} vs {behind}..{start}"
    );
    let began = Instant::now();
    loop {
        let (term, flush, _) = status(&safekeepers[2].address, KEY)?;
        if term == 3 && flush >= start {
            break;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "sk3 stays at {flush} (term {term}), short of {start}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let theirs = wal_bytes(&safekeepers[2].data.join(KEY_TEXT), sk3_flush, start)?;
    let reference = wal_bytes(&safekeepers[0].data.join(KEY_TEXT), sk3_flush, start)?;
    ensure!(
        theirs == reference,
        "sk3's recovered WAL differs from sk1's"
    );
    println!(
        "sk3 came back at {sk3_flush} and recovered {} bytes up to {start} from its peers",
        start.0 - sk3_flush.0
    );
    Ok(())
}

#[test]
fn commits_need_two_of_three_safekeepers_and_their_wal_matches_the_compute() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, compute_options())?;
    pg.start()?;
    let root = tempfile::tempdir()?;
    let (mut safekeepers, addresses) =
        start_safekeepers(Path::new(env!("CARGO_BIN_EXE_quire")), root.path())?;
    let won = bootstrap(&pg, &addresses)?;
    let wal_start = won.start;
    println!(
        "elected term {} at {} (donor {})",
        won.term, won.start, won.donor
    );

    // Nothing could commit before the election (no standby streamed).
    pg.psql("postgres", "CREATE TABLE ledger (id int PRIMARY KEY)")?;
    let all_up = insert(&pg, 0, 50)?;
    println!("commit with 3 of 3 safekeepers: {all_up:?} per transaction (psql each)");

    safekeepers[0].kill();
    let two_up = insert(&pg, 1000, 50)?;
    println!("commit with 2 of 3 (sk1 killed): {two_up:?} per transaction");

    commit_waits_for_a_second_safekeeper(&pg, &mut safekeepers[1])?;

    safekeepers[0].start()?;
    insert(&pg, 2000, 20)?;
    let count: u32 = pg
        .psql("postgres", "SELECT count(*) FROM ledger")?
        .trim()
        .parse()?;
    ensure!(count == 50 + 50 + 1 + 20, "ledger has {count} rows");

    // Every safekeeper catches up to the compute's flushed WAL, and holds
    // exactly its bytes.
    let flushed: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?;
    check_identical_wal(
        &safekeepers,
        KEY,
        &pg.datadir().join("pg_wal"),
        wal_start,
        flushed,
    )?;

    fence_and_recover(&mut pg, &mut safekeepers, &addresses)?;
    Ok(())
}
