//! Postgres' own regression suite (`make installcheck-parallel`, the
//! parallel schedule) against a running server, as the unprivileged user,
//! its results written to a directory of the run's own: the build tree is
//! shared by every checkout on the machine and must stay untouched.

use std::time::Duration;

use anyhow::Result;
use quire_cluster::{PgInstall, RunAs, run_bounded};

/// What one run of the suite printed.
pub struct RegressRun {
    /// Whether every test passed.
    pub passed: bool,
    /// `pg_regress`'s report (`ok` / `not ok` per test, the summary).
    pub stdout: String,
    /// `make`'s and `pg_regress`'s errors.
    pub stderr: String,
    /// `regression.diffs`: every failed test's diff (empty when none).
    pub diffs: String,
}

impl RegressRun {
    /// The names of the tests that failed (`not ok 54 + database 2346 ms`).
    pub fn failed(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix("not ok "))
            .filter_map(|rest| rest.split_whitespace().nth(2))
            .collect()
    }

    /// The summary line, if `pg_regress` printed one.
    pub fn summary(&self) -> Option<&str> {
        self.stdout
            .lines()
            .rev()
            .find(|line| line.contains("tests passed") || line.contains("tests failed"))
    }
}

/// Runs the suite of `install`'s build tree against the server on
/// loopback `port` (superuser `postgres`), bounded by `bound`.
pub fn installcheck(install: &PgInstall, port: u16, bound: Duration) -> Result<RegressRun> {
    let regress = install.build_tree()?.join("src/test/regress");
    let run_as = RunAs::detect()?;
    let outputs = tempfile::tempdir()?;
    run_as.give(outputs.path())?;
    let mut command = run_as.command("make");
    command
        .arg("-C")
        .arg(&regress)
        .args(["-s", "installcheck-parallel"])
        .arg(format!(
            "EXTRA_REGRESS_OPTS=--outputdir={}",
            outputs.path().display()
        ))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", quire_cluster::SUPERUSER);
    let output = run_bounded(&mut command, bound)?;
    Ok(RegressRun {
        passed: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        diffs: std::fs::read_to_string(outputs.path().join("regression.diffs")).unwrap_or_default(),
    })
}
