//! The core patch's `--wal-redo` entry: `postgres --wal-redo LIBRARY ARGS...`
//! prepares a standalone process and hands control to the library's
//! `WalRedoMain`, here the probe in `postgres/extensions/quire_walredo_probe`.

use std::time::Duration;

use anyhow::{Result, ensure};
use quire_cluster::{RunAs, run_bounded, run_checked};
use quire_tests::pg_install;

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn wal_redo_entry_hands_control_to_the_library() -> Result<()> {
    let install = pg_install()?;
    let run_as = RunAs::detect()?;
    let output = run_checked(
        run_as
            .command(install.bin("postgres"))
            .args(["--wal-redo", "quire_walredo_probe", "first", "second"])
            .current_dir("/"),
        TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        stdout.trim()
            == "wal-redo probe: argc=5 argv[1]=--wal-redo argv[2]=quire_walredo_probe \
                argv[3]=first argv[4]=second under_postmaster=no data_dir=none block_size=8192",
        "unexpected probe output: {stdout}"
    );
    Ok(())
}

#[test]
fn wal_redo_entry_rejects_a_missing_or_wrong_library() -> Result<()> {
    let install = pg_install()?;
    let run_as = RunAs::detect()?;
    for (args, expected) in [
        (
            vec!["--wal-redo"],
            "--wal-redo requires the name of a library",
        ),
        (
            vec!["--wal-redo", "no_such_library"],
            "could not access file \"no_such_library\"",
        ),
        // A real library without the entry point.
        (
            vec!["--wal-redo", "pg_walinspect"],
            "could not find function \"WalRedoMain\"",
        ),
    ] {
        let output = run_bounded(
            run_as
                .command(install.bin("postgres"))
                .args(&args)
                .current_dir("/"),
            TIMEOUT,
        )?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{args:?} succeeded");
        ensure!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    Ok(())
}

/// The redo service exits cleanly at the end of its input, inside its
/// sandbox: its shared memory goes with calls the sandbox allows (a
/// process that died of SIGSYS there left a `/dev/shm` file and a System V
/// segment behind at every stop).
#[test]
fn the_redo_service_exits_cleanly_at_the_end_of_its_input() -> Result<()> {
    let install = pg_install()?;
    let run_as = RunAs::detect()?;
    let scratch = tempfile::tempdir()?;
    run_as.give(scratch.path())?;
    let output = run_bounded(
        run_as
            .command(install.bin("postgres"))
            .arg("--wal-redo")
            .arg("quire_walredo")
            .arg(scratch.path())
            .current_dir("/"),
        TIMEOUT,
    )?;
    ensure!(
        output.status.success(),
        "the redo service ended with {:?} at the end of its input: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
