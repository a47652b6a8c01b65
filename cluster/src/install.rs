//! Where the patched Postgres 17 build lives.
//!
//! `postgres/build.sh` builds the pinned Postgres once per (source, patch
//! hash) into a cache outside the repository; `postgres/extensions.sh`
//! installs Quire's extensions into a copy of that build and prints the
//! copy's prefix. The Makefile exports that prefix as `QUIRE_PG_PREFIX`;
//! without it, we ask the script, which builds first if the cache lacks the
//! build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bounded::run_checked;

/// A cold build takes minutes on two cores; this bounds a stuck one.
const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// An installed, patched Postgres 17.
#[derive(Clone, Debug)]
pub struct PgInstall {
    prefix: PathBuf,
}

impl PgInstall {
    /// The build named by `QUIRE_PG_PREFIX`, else the one
    /// `postgres/extensions.sh` reports (building it if needed).
    pub fn locate() -> Result<PgInstall> {
        let prefix = if let Some(prefix) = std::env::var_os("QUIRE_PG_PREFIX") {
            PathBuf::from(prefix)
        } else {
            let script = repo_root().join("postgres/extensions.sh");
            let output = run_checked(Command::new(&script).arg("--prefix"), BUILD_TIMEOUT)
                .context("build Postgres and its extensions with postgres/extensions.sh")?;
            let stdout = String::from_utf8(output.stdout).context("read extensions.sh output")?;
            let Some(line) = stdout.lines().last() else {
                bail!("postgres/extensions.sh printed no prefix");
            };
            PathBuf::from(line.trim())
        };
        PgInstall::at(prefix)
    }

    /// The build installed at `prefix`.
    pub fn at(prefix: impl Into<PathBuf>) -> Result<PgInstall> {
        let install = PgInstall {
            prefix: prefix.into(),
        };
        let postgres = install.bin("postgres");
        if !postgres.is_file() {
            bail!(
                "{} is not a Postgres install: no {}",
                install.prefix.display(),
                postgres.display()
            );
        }
        Ok(install)
    }

    /// The install prefix.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The configured and built source tree this install came from, which
    /// holds Postgres' regression suite (`src/test/regress`): beside the
    /// install, or beside the base build whose copy (with the extensions) the
    /// install is.
    pub fn build_tree(&self) -> Result<PathBuf> {
        let tree = self
            .prefix
            .ancestors()
            .skip(1)
            .take(3)
            .map(|dir| dir.join("build"))
            .find(|tree| tree.join("src/test/regress/GNUmakefile").is_file());
        tree.with_context(|| {
            format!(
                "no Postgres build tree beside {} (postgres/build.sh makes one)",
                self.prefix.display()
            )
        })
    }

    /// The path of one of the installed programs (`postgres`, `psql`, ...).
    pub fn bin(&self, program: &str) -> PathBuf {
        self.prefix.join("bin").join(program)
    }
}

/// The repository this crate was built from.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
