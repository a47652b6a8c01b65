//! The compute's Postgres process: started detached on its data directory
//! as the unprivileged user, awaited until it answers a query, and stopped
//! (fast shutdown, a bounded wait, then SIGKILL of its process group).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use nix::sys::signal::Signal;
use quire_cluster::{PgInstall, RunAs, SUPERUSER, run_bounded};

use crate::daemon::{self, Stopped};

/// How long one probe query may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection string of a compute on `port`.
pub fn url(port: u16) -> String {
    format!("postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres")
}

/// Starts `postgres -D data` detached (output to `log`) and waits until it
/// answers `SELECT 1` on `port`, at most `within`; its pid.
pub fn start(
    install: &PgInstall,
    run_as: &RunAs,
    data: &Path,
    log: &Path,
    port: u16,
    within: Duration,
) -> Result<u32> {
    let mut command = run_as.command(install.bin("postgres"));
    command.arg("-D").arg(data);
    let mut child = daemon::spawn_detached(&mut command, log)?;
    let pid = child.id();
    let mut last_error = String::new();
    let ready = daemon::wait_ready(
        &mut child,
        &format!("the compute on port {port}"),
        log,
        within,
        || match answers_query(install, port) {
            Ok(()) => true,
            Err(error) => {
                last_error = format!("{error:#}");
                false
            }
        },
    );
    if let Err(error) = ready {
        // A compute that never answered is not left behind.
        let _ = daemon::stop(pid, data, Signal::SIGINT, Duration::from_secs(10));
        return Err(error.context(format!("the last probe: {last_error}")));
    }
    Ok(pid)
}

/// Runs `SELECT 1` with psql against the compute on `port`.
pub fn answers_query(install: &PgInstall, port: u16) -> Result<()> {
    let output = run_bounded(
        Command::new(install.bin("psql"))
            .env("PGCONNECT_TIMEOUT", "2")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
            .arg("--dbname")
            .arg(url(port))
            .args(["--command", "SELECT 1"]),
        PROBE_TIMEOUT,
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.trim() == "1" {
        return Ok(());
    }
    bail!(
        "psql: {}",
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

/// The running postmaster of `data`, if there is one.
pub fn running(data: &Path) -> Option<u32> {
    daemon::running(&data.join("postmaster.pid"), data)
}

/// Stops the compute of `data`: SIGINT (Postgres' fast shutdown: sessions
/// end, a shutdown checkpoint is written and streamed), then after `grace`
/// SIGKILL of its whole process group.
pub fn stop(data: &Path, grace: Duration) -> Result<Stopped> {
    match running(data) {
        None => Ok(Stopped::WasDown),
        Some(pid) => daemon::stop(pid, data, Signal::SIGINT, grace),
    }
}
