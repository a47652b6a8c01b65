//! `quire verify --base BASEDIR --pgdata DIR`: every page Quire rebuilds
//! from DIR's WAL, compared with the page Postgres wrote.
//!
//! BASEDIR is a copy of the cluster taken right after initdb; DIR is the
//! same cluster later, cleanly stopped, with all WAL since still in
//! `pg_wal` (set `wal_keep_size`); or, with `--primary`, DIR still running,
//! its WAL followed over replication until it stops. The work happens on one pinned executor
//! with one redo process (`pageserver::verify` says what is compared and
//! how). Exit status 1 when any page differs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use quire_cluster::{PgInstall, RunAs};
use quire_io::{ExecutorConfig, run_per_core};
use quire_pageserver::wal_receiver::{ConnInfo, PrimarySource, SafekeeperSource, WalSource};
use quire_redo::{RedoConfig, RedoPool};
use quire_safekeeper::wire::TimelineKey;

/// Options of `quire verify`.
#[derive(Args, Clone)]
pub struct VerifyArgs {
    /// The cluster right after initdb (a copy, cleanly stopped); not with
    /// --pageserver.
    #[arg(long, required_unless_present = "pageserver")]
    base: Option<PathBuf>,
    /// The same cluster later, cleanly stopped, its WAL kept.
    #[arg(long)]
    pub(crate) pgdata: PathBuf,
    /// Where the timeline and redo scratch directories go (default: a
    /// temporary directory, removed afterwards).
    #[arg(long)]
    pub(crate) work: Option<PathBuf>,
    /// Take the WAL from these safekeepers (`host:port,...`) through the
    /// pageserver's WAL receiver instead of DIR's `pg_wal`.
    #[arg(long, value_delimiter = ',')]
    safekeepers: Vec<String>,
    /// The timeline on the safekeepers: `TENANT/TIMELINE` (32 hex digits
    /// each); with --pageserver, the timeline alone.
    #[arg(long)]
    pub(crate) timeline: Option<String>,
    /// Compare with the pages a running pageserver serves at this page
    /// service address instead of rebuilding them here.
    #[arg(long, requires_all = ["tenant", "timeline"], conflicts_with_all = ["base", "safekeepers", "primary"])]
    pub(crate) pageserver: Option<String>,
    /// The tenant on the pageserver (32 hex digits).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// The token to show the pageserver (scope `compute`), when it checks.
    #[arg(long)]
    pub(crate) pageserver_token_file: Option<PathBuf>,
    /// With --pageserver: read every page at this LSN (`X/Y`) instead of
    /// the latest (a snapshot compared with a point in the timeline's
    /// history, e.g. a branch at its branch point).
    #[arg(long, requires = "pageserver")]
    pub(crate) at_lsn: Option<String>,
    /// Seconds to wait for the pageserver to ingest the cluster's WAL.
    #[arg(long, default_value_t = 300)]
    pub(crate) wait_secs: u64,
    /// The token to show the safekeepers (scope `pageserver`), when they
    /// check tokens.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Halfway through the WAL, flush, drop the timeline, load it again
    /// from disk and resume ingest from it, as after a restart.
    #[arg(long)]
    restart_midway: bool,
    /// Follow the running primary DIR belongs to instead, as a physical
    /// replication client (`host=... port=... user=...` or
    /// `postgresql://user@host:port/db`), from BASE's checkpoint until the
    /// primary shuts down; its WAL must still hold BASE's checkpoint.
    #[arg(long, conflicts_with = "safekeepers")]
    primary: Option<String>,
    /// The primary's physical replication slot (created if missing).
    #[arg(long, default_value = "quire_verify", requires = "primary")]
    slot: String,
}

pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    if args.pageserver.is_some() {
        return crate::verify_remote::run(args);
    }
    let install = PgInstall::locate()?;
    let run_as = RunAs::detect()?;
    let temp = tempfile_dir()?;
    let work = args.work.clone().unwrap_or_else(|| temp.clone());
    let config = RedoConfig {
        postgres: install.bin("postgres"),
        run_as: run_as.ids(),
        scratch_root: work.join("redo"),
        timeout: Duration::from_secs(60),
    };
    let source = if let Some(primary) = &args.primary {
        let conninfo = ConnInfo::parse(primary).map_err(|e| anyhow!("--primary: {e}"))?;
        let base = quire_pageserver::import::read_control(
            args.base.as_deref().context("--primary needs --base")?,
        )?;
        Some(WalSource::Primary(
            PrimarySource::new(
                conninfo,
                &args.slot,
                base.system_identifier.get(),
                base.xlog_seg_size.get(),
            )
            .map_err(|e| anyhow!("--slot: {e}"))?,
        ))
    } else if args.safekeepers.is_empty() {
        None
    } else {
        let key: TimelineKey = args
            .timeline
            .as_deref()
            .context("--safekeepers needs --timeline")?
            .parse()
            .map_err(|e: String| anyhow!("--timeline {e}"))?;
        let segment_size = quire_pageserver::import::read_control(&args.pgdata)?
            .xlog_seg_size
            .get();
        Some(WalSource::Safekeepers(SafekeeperSource {
            safekeepers: args.safekeepers.clone(),
            key,
            segment_size,
            token: crate::auth_files::read_token(args.auth_token_file.as_deref())?,
            report_durable: true,
        }))
    };
    let args = args.clone();
    on_verify_executor(config, &temp, move |pool| {
        let args = args.clone();
        let work = work.clone();
        let source = source.clone();
        async move {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let base = args.base.clone().context("--base is needed")?;
            let report = quire_pageserver::verify::verify_with(
                &base,
                &args.pgdata,
                &work,
                pool,
                source.as_ref(),
                args.restart_midway,
                &mut out,
            )
            .await?;
            out.flush().context("write to standard output")?;
            Ok(report.different)
        }
    })
}

/// Runs `task` with a one-process redo pool (`config`) on one executor
/// pinned to CPU 0, shuts the pool down after it (the processes end before
/// their scratch directory goes), removes `temp`, and turns the number of
/// different pages it returns into the exit status.
pub(crate) fn on_verify_executor<F, Fut>(
    config: RedoConfig,
    temp: &Path,
    task: F,
) -> Result<ExitCode>
where
    F: Fn(Rc<RedoPool>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64>> + 'static,
{
    let executor = ExecutorConfig {
        cpus: vec![0],
        io_memory_bytes: 2 * 1024 * 1024,
        name: "quire-verify".into(),
        spin_before_park: None,
    };
    let (_, mut results) = run_per_core(&executor, move |_| {
        let config = config.clone();
        let task = task.clone();
        async move {
            let pool = RedoPool::new(config, 1, Duration::from_secs(60))
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let verified = task(Rc::clone(&pool)).await;
            pool.shutdown().await;
            verified
        }
    })
    .map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(temp);
    let different = results.pop().context("no result from the executor")??;
    Ok(if different == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("quire-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
