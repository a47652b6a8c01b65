//! `quire compute start|stop`: compute control. `start` runs the start
//! sequence (`start.rs`: election, ingest wait, basebackup with its
//! checkpoint record linked to the timeline's last record, which the
//! election reports),
//! settings from `config.rs`, Postgres until its first answer) on a
//! timeline named by flags, or on a local cluster's (`--cluster DIR`, which
//! reads `DIR/cluster.json`); `stop` stops a compute by its data directory
//! (`postgres.rs`: fast shutdown, bounded, then SIGKILL).

pub mod config;
pub mod postgres;
pub mod start;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use quire_cluster::PgInstall;

use crate::auth_files::read_token;
use crate::daemon::Stopped;
use crate::local;

/// `quire compute`.
#[derive(Args)]
pub struct ComputeArgs {
    #[command(subcommand)]
    command: ComputeCommand,
}

#[derive(Subcommand)]
enum ComputeCommand {
    /// Start a compute: the election on the safekeepers, the pageserver's
    /// ingest up to its start LSN, a basebackup at that LSN into an empty
    /// data directory, Postgres; prints each step's time and
    /// `compute: postgresql://…`.
    Start(Box<StartArgs>),
    /// Stop a compute: fast shutdown, a bounded wait, then SIGKILL.
    Stop(StopArgs),
}

/// `quire compute start`.
#[derive(Args)]
struct StartArgs {
    /// A local cluster's directory (made by `quire start`): the addresses
    /// and ids come from its `cluster.json`, and the compute's data
    /// directory under it is made anew.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// With --cluster: the compute of this branch (`quire branch create`).
    #[arg(long, requires = "cluster")]
    branch: Option<String>,
    /// The data directory: absent or empty.
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    dir: Option<PathBuf>,
    /// The loopback port Postgres listens on (with --cluster: the one it
    /// had).
    #[arg(long)]
    port: Option<u16>,
    /// The safekeepers, `host:port,...` (their standby names are `sk1`...
    /// in this order).
    #[arg(long, value_delimiter = ',', required_unless_present = "cluster")]
    safekeepers: Vec<String>,
    /// The page service, `host:port`.
    #[arg(long, required_unless_present = "cluster")]
    pageserver: Option<String>,
    /// The pageserver's admin API, `host:port`.
    #[arg(long, required_unless_present = "cluster")]
    pageserver_http: Option<String>,
    /// The tenant (32 hex digits).
    #[arg(long, required_unless_present = "cluster")]
    tenant: Option<String>,
    /// The timeline (32 hex digits).
    #[arg(long, required_unless_present = "cluster")]
    timeline: Option<String>,
    /// The tenant's shards.
    #[arg(long, default_value_t = 1)]
    shard_count: u32,
    /// The tenant's stripe, in pages.
    #[arg(long, default_value_t = 32768)]
    stripe_size: u32,
    /// The timeline's WAL segment size in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    segment_size: u32,
    /// Where the timeline begins on the pageserver (its import or branch
    /// LSN), when the safekeepers' timeline begins below it (at the start
    /// of its segment): the first compute starts there, not below.
    #[arg(long)]
    timeline_start: Option<quire_postgres::Lsn>,
    /// The Postgres install with Quire's extensions (default:
    /// `QUIRE_PG_PREFIX`, else what `postgres/extensions.sh --prefix` says).
    #[arg(long)]
    pg_prefix: Option<PathBuf>,
    /// `shared_buffers` (default 128MB; with --cluster: what it had).
    #[arg(long)]
    shared_buffers: Option<String>,
    /// `quire.local_cache_size`, the compute's cache of pages that left
    /// shared buffers (default 256MB, `0` for none; with --cluster: what
    /// it had).
    #[arg(long)]
    local_cache_size: Option<String>,
    /// Local-data mode, for debugging: a full basebackup (every relation
    /// file local) and no `quire_smgr`; WAL still goes to the safekeepers.
    #[arg(long)]
    full_basebackup: bool,
    /// A token of scope `admin` for the pageserver's admin API.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// A token of scope `compute_control` for the safekeepers.
    #[arg(long)]
    safekeeper_token_file: Option<PathBuf>,
    /// The token the compute shows the page service (`quire.auth_token`).
    #[arg(long)]
    page_token_file: Option<PathBuf>,
    /// Seconds the pageserver may take to ingest up to the start LSN.
    #[arg(long, default_value_t = 60)]
    ingest_timeout_s: u64,
    /// Seconds Postgres may take to answer its first query.
    #[arg(long, default_value_t = 60)]
    start_timeout_s: u64,
}

/// `quire compute stop`.
#[derive(Args)]
struct StopArgs {
    /// The compute's data directory.
    #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
    dir: Option<PathBuf>,
    /// A local cluster's directory: its main compute, or --branch's.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// With --cluster: the compute of this branch.
    #[arg(long, requires = "cluster")]
    branch: Option<String>,
    /// Seconds the fast shutdown may take before SIGKILL.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

/// `shared_buffers` when none is given.
pub const SHARED_BUFFERS_DEFAULT: &str = "128MB";
/// A compute's `quire.local_cache_size` unless told.
pub const LOCAL_CACHE_DEFAULT: &str = "256MB";

pub fn run(args: &ComputeArgs) -> Result<()> {
    match &args.command {
        ComputeCommand::Start(args) => run_start(args),
        ComputeCommand::Stop(args) => run_stop(args),
    }
}

/// The install at `prefix`, else the one `PgInstall::locate` finds.
pub fn locate_install(prefix: Option<&Path>) -> Result<PgInstall> {
    match prefix {
        Some(prefix) => PgInstall::at(prefix),
        None => PgInstall::locate(),
    }
}

fn required<'a>(value: Option<&'a String>, flag: &str) -> Result<&'a String> {
    value.with_context(|| format!("give {flag}"))
}

fn run_start(args: &StartArgs) -> Result<()> {
    let deadlines = start::Deadlines {
        ingest: Duration::from_secs(args.ingest_timeout_s),
        postgres: Duration::from_secs(args.start_timeout_s),
        ..start::Deadlines::default()
    };
    if let Some(dir) = &args.cluster {
        let overrides = local::ComputeOverrides {
            port: args.port,
            shared_buffers: args.shared_buffers.clone(),
            local_cache_size: args.local_cache_size.clone(),
            full_basebackup: args.full_basebackup.then_some(true),
            pg_prefix: args.pg_prefix.clone(),
            deadlines,
        };
        let layout = local::layout_of(dir)?;
        let (_, url) = local::start_compute(&layout, args.branch.as_deref(), &overrides)?;
        println!("compute: {url}");
        return Ok(());
    }
    let Some(dir) = &args.dir else {
        bail!("give --dir or --cluster");
    };
    let data = absolute(dir)?;
    let target = start::Target {
        safekeepers: args.safekeepers.clone(),
        safekeeper_token: read_token(args.safekeeper_token_file.as_deref())?,
        pageserver: required(args.pageserver.as_ref(), "--pageserver")?.clone(),
        pageserver_http: required(args.pageserver_http.as_ref(), "--pageserver-http")?.clone(),
        admin_token: read_token(args.admin_token_file.as_deref())?,
        page_token: read_token(args.page_token_file.as_deref())?,
        tenant: required(args.tenant.as_ref(), "--tenant")?.clone(),
        timeline: required(args.timeline.as_ref(), "--timeline")?.clone(),
        shard_count: args.shard_count,
        stripe_blocks: args.stripe_size,
        segment_size: args.segment_size,
        start_floor: args.timeline_start,
    };
    let port = args.port.context("give --port")?;
    let launch = start::Launch {
        install: locate_install(args.pg_prefix.as_deref())?,
        log: data.with_extension("log"),
        data,
        port,
        shared_buffers: args
            .shared_buffers
            .clone()
            .unwrap_or_else(|| SHARED_BUFFERS_DEFAULT.to_owned()),
        local_cache_size: args
            .local_cache_size
            .clone()
            .unwrap_or_else(|| LOCAL_CACHE_DEFAULT.to_owned()),
        full_basebackup: args.full_basebackup,
        deadlines,
    };
    start::start(&target, &launch)?;
    println!("compute: {}", postgres::url(port));
    Ok(())
}

fn run_stop(args: &StopArgs) -> Result<()> {
    let grace = Duration::from_secs(args.timeout_s);
    let data = match (&args.dir, &args.cluster) {
        (Some(dir), _) => absolute(dir)?,
        (None, Some(cluster)) => local::layout_of(cluster)?.compute_data(args.branch.as_deref()),
        (None, None) => bail!("give --dir or --cluster"),
    };
    report_stop(&data, postgres::stop(&data, grace)?);
    Ok(())
}

/// Prints how the stop of the compute on `data` went.
pub fn report_stop(data: &Path, how: Stopped) {
    let what = match how {
        Stopped::WasDown => "was not running",
        Stopped::Exited => "stopped",
        Stopped::Killed => "did not stop in time: killed (SIGKILL)",
    };
    println!("compute {}: {what}", data.display());
}

/// `path` made absolute (against the current directory) without resolving
/// links, so it matches what a process was started with.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("resolve {}", path.display()))?;
    // A data directory that exists is named by its canonical path, as
    // every later command will name it.
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}
