//! Postgres 17 starts from WAL and `pg_control` that Quire wrote.
//!
//! A compute will start from a basebackup whose `pg_wal` holds nothing but
//! one shutdown checkpoint record at an arbitrary LSN, written by
//! `quire_postgres::wal::writer::checkpoint_segment`, with a `pg_control`
//! pointing at it. This test takes a cleanly stopped cluster, replaces all of
//! its WAL by such a segment at an LSN well past the old end of WAL (and not
//! at a segment or page start), and checks that Postgres starts without
//! recovery, serves the old data, accepts writes, checkpoints and restarts
//! cleanly. No startup patch is involved: the core patch does not touch
//! startup. `pg_waldump`, reading from the segment start, must find the
//! record too.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, RunAs, run_bounded};
use quire_postgres::Lsn;
use quire_postgres::control::{ControlFileData, DbState};
use quire_postgres::wal::writer::{checkpoint_segment, segment_file_name};
use quire_tests::waldump_oracle::{pg_waldump_lines, wal_segments};
use quire_tests::{assert_log_clean, pg_install};

#[test]
fn postgres_starts_from_a_generated_checkpoint_segment() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
    pg.start()?;
    pg.psql(
        "postgres",
        "CREATE TABLE kept (id int PRIMARY KEY, v text); \
         INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 1000) g;",
    )?;
    pg.stop()?;

    let datadir = pg.datadir();
    let control_path = datadir.join("global/pg_control");
    let old = ControlFileData::decode(&fs::read(&control_path)?).context("decode pg_control")?;
    let segment_size = old.xlog_seg_size.get();
    let old_end = old.checkpoint_lsn();

    // Three segments past the old end of WAL, at an arbitrary aligned offset.
    let segment = u64::from(segment_size);
    let lsn = Lsn((old_end.0 / segment + 3) * segment + 0x5A38);
    let mut checkpoint = old.checkpoint_copy;
    checkpoint.redo.set(lsn.0);
    checkpoint.oldest_active_xid.set(0);
    let mut control = old;
    control.checkpoint.set(lsn.0);
    control.checkpoint_copy = checkpoint;
    control.state.set(DbState::Shutdowned as u32);
    control.min_recovery_point.set(0);
    control.min_recovery_point_tli.set(0);

    let wal = checkpoint_segment(
        &checkpoint,
        lsn,
        old_end,
        segment_size,
        old.system_identifier.get(),
    )?;
    let timeline = checkpoint.this_timeline.get();
    for stale in wal_segments(&datadir)? {
        fs::remove_file(&stale).with_context(|| format!("remove {}", stale.display()))?;
    }
    let run_as = RunAs::detect()?;
    let segment_path = datadir
        .join("pg_wal")
        .join(segment_file_name(timeline, lsn, segment_size));
    for (path, bytes) in [(&segment_path, &wal), (&control_path, &control.encode())] {
        fs::write(path, bytes).with_context(|| format!("write {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        run_as.give(path)?;
    }

    // pg_waldump finds the record from the segment start, past the gap.
    // pg_waldump exits 1 at the zeros after the record; its stdout counts.
    let dump = run_bounded(
        Command::new(install.bin("pg_waldump"))
            .arg("--bkp-details")
            .arg(&segment_path),
        Duration::from_secs(60),
    )?;
    let records = pg_waldump_lines(&String::from_utf8_lossy(&dump.stdout))?;
    ensure!(
        records == [format!("lsn={lsn} rmgr=XLOG len=114 blocks=0")],
        "pg_waldump read {records:?} from the generated segment"
    );

    pg.start()?;
    let rows = pg.psql("postgres", "SELECT count(*), sum(id) FROM kept")?;
    ensure!(
        rows.trim() == "1000|500500",
        "old data after the new start: {rows}"
    );
    let started_at: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_lsn()")?
        .trim()
        .parse()?;
    ensure!(
        started_at > lsn,
        "WAL continues at {started_at}, not after {lsn}"
    );
    let redo: Lsn = pg
        .psql("postgres", "SELECT redo_lsn FROM pg_control_checkpoint()")?
        .trim()
        .parse()?;
    ensure!(
        redo == lsn,
        "Postgres started from checkpoint {redo}, not {lsn}"
    );
    pg.psql(
        "postgres",
        "INSERT INTO kept VALUES (1001, 'after start'); CHECKPOINT;",
    )?;
    pg.restart()?;
    let rows = pg.psql("postgres", "SELECT count(*) FROM kept")?;
    ensure!(rows.trim() == "1001", "rows after restart: {rows}");
    // Starting without replaying anything is the point: no redo in the log.
    let log = fs::read_to_string(pg.log_path())?;
    ensure!(
        !log.contains("redo starts at"),
        "Postgres ran crash recovery:\n{log}"
    );
    assert_log_clean(&pg, &[])?;
    pg.stop()
}
