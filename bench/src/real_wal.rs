//! Real WAL for benchmarks: segments Postgres 17 wrote under pgbench.
//!
//! `QUIRE_BENCH_WAL_DIR` names a directory of WAL segments to use as they
//! are; otherwise a throwaway cluster runs `pgbench` (scale 10, then TPC-B
//! for `QUIRE_BENCH_WAL_SECONDS`, default 20) and its segments are copied
//! out before the cluster is removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, run_checked, wal_segment_files};

/// A directory of WAL segments, and the install that wrote them.
pub struct RealWal {
    /// The segment files, in LSN order.
    pub segments: Vec<PathBuf>,
    /// The Postgres build (for its `pg_waldump`).
    pub install: PgInstall,
    /// Kept alive so the copied segments are removed at the end.
    _dir: Option<tempfile::TempDir>,
}

impl RealWal {
    /// Total bytes of the segments.
    pub fn bytes(&self) -> Result<u64> {
        self.segments
            .iter()
            .map(|p| Ok(fs::metadata(p)?.len()))
            .sum()
    }
}

/// Real WAL: `QUIRE_BENCH_WAL_DIR`, or freshly generated with pgbench.
pub fn real_wal() -> Result<RealWal> {
    let install = PgInstall::locate()?;
    if let Some(dir) = std::env::var_os("QUIRE_BENCH_WAL_DIR") {
        let segments = wal_segment_files(Path::new(&dir))?;
        if segments.is_empty() {
            bail!("no WAL segments in {}", Path::new(&dir).display());
        }
        return Ok(RealWal {
            segments,
            install,
            _dir: None,
        });
    }
    let seconds: u64 = std::env::var("QUIRE_BENCH_WAL_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let options = PgClusterOptions::default()
        .setting("wal_keep_size", "'8GB'")
        .setting("max_wal_size", "'8GB'")
        .setting("synchronous_commit", "off");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;
    let timeout = Duration::from_secs(seconds + 600);
    run_checked(
        pg.client("pgbench")
            .args(["--initialize", "--quiet", "--scale", "10"]),
        timeout,
    )?;
    run_checked(
        pg.client("pgbench").args([
            "--client",
            "4",
            "--jobs",
            "2",
            "--time",
            &seconds.to_string(),
        ]),
        timeout,
    )?;
    pg.stop()?;
    let dir = tempfile::Builder::new()
        .prefix("quire-bench-wal-")
        .tempdir()?;
    for segment in wal_segment_files(&pg.datadir().join("pg_wal"))? {
        if let Some(name) = segment.file_name() {
            fs::copy(&segment, dir.path().join(name))
                .with_context(|| format!("copy {}", segment.display()))?;
        }
    }
    let segments = wal_segment_files(dir.path())?;
    Ok(RealWal {
        segments,
        install,
        _dir: Some(dir),
    })
}
