//! The unprivileged user that runs Postgres.
//!
//! Postgres refuses to run as root. When we are root, every Postgres program
//! runs as `QUIRE_PG_USER` (default `quire`, created by `postgres/build.sh`)
//! and the directories it writes are handed to that user; otherwise programs
//! run as ourselves.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bounded::run_checked;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Who runs Postgres programs.
#[derive(Clone, Debug)]
pub struct RunAs {
    /// `(uid, gid)` to switch to, or `None` to run as ourselves.
    ids: Option<(u32, u32)>,
}

impl RunAs {
    /// Ourselves when unprivileged; the `QUIRE_PG_USER` user when root.
    pub fn detect() -> Result<RunAs> {
        // The owner of /proc/self is this process's effective uid.
        let euid = fs::metadata("/proc/self").context("read /proc/self")?.uid();
        if euid != 0 {
            return Ok(RunAs { ids: None });
        }
        let user = std::env::var("QUIRE_PG_USER").unwrap_or_else(|_| "quire".to_owned());
        let uid = id_of(&user, "-u")?;
        let gid = id_of(&user, "-g")?;
        if uid == 0 {
            bail!("QUIRE_PG_USER={user} is root; Postgres needs an unprivileged user");
        }
        Ok(RunAs {
            ids: Some((uid, gid)),
        })
    }

    /// `(uid, gid)` programs switch to, or `None` when they run as ourselves.
    pub fn ids(&self) -> Option<(u32, u32)> {
        self.ids
    }

    /// A command for `program` that will run as this user.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            // std drops supplementary groups when it switches uid as root.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Makes `path` owned by this user (a no-op when running as ourselves).
    pub fn give(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// [`RunAs::give`] on `path` and everything under it (no symbolic links
    /// followed).
    pub fn give_tree(&self, path: &Path) -> Result<()> {
        if self.ids.is_none() {
            return Ok(());
        }
        self.give(path)?;
        let metadata =
            fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
        if metadata.is_dir() {
            for entry in fs::read_dir(path).with_context(|| format!("list {}", path.display()))? {
                self.give_tree(&entry?.path())?;
            }
        }
        Ok(())
    }

    /// Fails, naming the directory, unless this user may search every
    /// directory from the root down to `path` (Postgres, run as this user,
    /// must reach its data directory). Supplementary groups are not
    /// counted: a switched process has none.
    pub fn check_reaches(&self, path: &Path) -> Result<()> {
        let Some((uid, gid)) = self.ids else {
            return Ok(());
        };
        let path = fs::canonicalize(path).with_context(|| format!("resolve {}", path.display()))?;
        for dir in path.ancestors() {
            let metadata = fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
            let mode = metadata.mode();
            let bit = if metadata.uid() == uid {
                0o100
            } else if metadata.gid() == gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                bail!(
                    "{} (mode {:o}) is not searchable by uid {uid}, which runs Postgres: \
                     choose a directory it can reach (under /tmp, say)",
                    dir.display(),
                    mode & 0o7777
                );
            }
        }
        Ok(())
    }
}

fn id_of(user: &str, flag: &str) -> Result<u32> {
    let output = run_checked(Command::new("id").args([flag, user]), LOOKUP_TIMEOUT)
        .with_context(|| format!("look up user {user} (postgres/build.sh creates it)"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .with_context(|| format!("parse the id of user {user}"))
}
