//! Full-stack tests: real processes on loopback, bounded in time.
//!
//! The tests in `tests/tests/` start the patched Postgres (and, as they
//! arrive, the pageserver and safekeepers) through `quire-cluster`, drive
//! them with real clients, and fail on any unexpected ERROR, FATAL or PANIC
//! in the server logs. This library holds what those tests share.
#![forbid(unsafe_code)]

pub mod effects_oracle;
pub mod regress;
pub mod safekeepers;
pub mod waldump_oracle;

use anyhow::{Context, Result, bail};
use quire_cluster::{PgCluster, PgInstall};

/// The patched Postgres build the tests run (see [`PgInstall::locate`]).
pub fn pg_install() -> Result<PgInstall> {
    PgInstall::locate().context("locate the patched Postgres build")
}

/// Fails with the offending lines if the server log holds an ERROR, FATAL
/// or PANIC that contains none of `expected`.
pub fn assert_log_clean(cluster: &PgCluster, expected: &[&str]) -> Result<()> {
    let unexpected = cluster.unexpected_log_errors(expected)?;
    if !unexpected.is_empty() {
        bail!(
            "unexpected errors in the server log:\n{}",
            unexpected.join("\n")
        );
    }
    Ok(())
}
