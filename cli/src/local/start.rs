//! `quire start [--dir DIR]`: a local cluster on loopback. On an empty (or
//! new) DIR it brings up three safekeepers and a pageserver, bootstraps a
//! tenant's timeline from initdb (a scratch cluster, imported into the
//! pageserver and created on the safekeepers at its import LSN), writes
//! `cluster.json`, and starts a compute. On a DIR whose cluster is stopped
//! it starts the same servers on the same data and new computes (a new
//! election and basebackup each); on a running one it refuses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall, RunAs};
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::wire::TimelineKey;
use serde_json::{Value, json};

use super::cluster_file::{ComputeEntry, Layout, LocalCluster, PageserverEntry, SafekeeperEntry};
use super::{ComputeOverrides, free_port, servers, start_compute};
use crate::admin::call_api;
use crate::compute::{
    SHARED_BUFFERS_DEFAULT, locate_install, postgres, start::check_has_quire_smgr,
};

/// Options of `quire start`.
#[derive(Args)]
pub struct StartArgs {
    /// The cluster's directory (made if missing).
    #[arg(long, default_value = ".quire")]
    dir: PathBuf,
    /// The Postgres install with Quire's extensions (default:
    /// `QUIRE_PG_PREFIX`, else what `postgres/extensions.sh --prefix` says).
    #[arg(long)]
    pg_prefix: Option<PathBuf>,
    /// The compute's `shared_buffers`.
    #[arg(long, default_value = SHARED_BUFFERS_DEFAULT)]
    shared_buffers: String,
    /// The compute's `quire.local_cache_size` (`0` for none).
    #[arg(long, default_value = crate::compute::LOCAL_CACHE_DEFAULT)]
    local_cache_size: String,
    /// The compute's port (default: a free one).
    #[arg(long)]
    compute_port: Option<u16>,
    /// Local-data mode, for debugging: the compute starts from a full
    /// basebackup (relation files local) without `quire_smgr`.
    #[arg(long)]
    full_basebackup: bool,
    /// The pageserver's executors.
    #[arg(long, default_value_t = 1)]
    pageserver_cores: usize,
    /// The pageserver's block cache per core, MiB.
    #[arg(long, default_value_t = 128)]
    pageserver_cache_mib: usize,
    /// The pageserver's object storage: `s3://bucket/prefix` (with the
    /// `AWS_*` environment) or `file:///dir`; layers are uploaded there and
    /// `quire tenant attach` brings the tenant back from it. Kept for
    /// later starts of the cluster.
    #[arg(long)]
    remote: Option<String>,
}

/// How many safekeepers a local cluster has.
const SAFEKEEPERS: u32 = 3;
/// The bound on one admin call while bootstrapping (the import included).
const BOOTSTRAP_CALL: Duration = Duration::from_secs(600);

pub fn run(args: &StartArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let layout = super::layout_of(&args.dir)?;
    let began = Instant::now();
    if layout.file().exists() {
        restart(&layout)?;
    } else {
        let nonempty = std::fs::read_dir(&layout.dir)
            .with_context(|| format!("list {}", layout.dir.display()))?
            .next()
            .is_some();
        if nonempty {
            bail!(
                "{} holds files but no cluster.json: give an empty or new --dir",
                layout.dir.display()
            );
        }
        create(&layout, args)?;
    }
    println!(
        "quire start: the cluster in {} is up in {:.1} s",
        layout.dir.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Stops what a failed start left running, then returns `error`.
fn undo(layout: &Layout, cluster: &LocalCluster, error: anyhow::Error) -> anyhow::Error {
    eprintln!(
        "quire start failed; stopping what it started (the logs stay in {})",
        layout.dir.join("logs").display()
    );
    let _ = super::stop::stop_cluster(layout, cluster);
    error
}

fn create(layout: &Layout, args: &StartArgs) -> Result<()> {
    let install = locate_install(args.pg_prefix.as_deref())?;
    if !args.full_basebackup {
        check_has_quire_smgr(&install)?;
    }
    RunAs::detect()?.check_reaches(&layout.dir)?;
    layout.make_dirs()?;
    // Held together so that no two are the same; released before use.
    let probes: Vec<std::net::TcpListener> = (0..5)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("probe for free loopback ports")?;
    let mut ports = Vec::new();
    for probe in &probes {
        ports.push(probe.local_addr()?.port());
    }
    let compute_port = free_port(args.compute_port)?;
    drop(probes);
    let address = |i: usize| format!("127.0.0.1:{}", ports.get(i).copied().unwrap_or(0));
    let mut cluster = LocalCluster {
        pg_prefix: install.prefix().to_owned(),
        tenant_id: String::new(),
        timeline_id: String::new(),
        timeline_start_lsn: String::new(),
        shard_count: 1,
        stripe_size: 0,
        system_id: 0,
        segment_size: 0,
        safekeepers: (1..=SAFEKEEPERS)
            .map(|id| SafekeeperEntry {
                id,
                listen: address(id as usize - 1),
            })
            .collect(),
        pageserver: PageserverEntry {
            listen: address(3),
            http: address(4),
            cores: args.pageserver_cores,
            cache_mib: args.pageserver_cache_mib,
            remote: args.remote.clone(),
        },
        compute: ComputeEntry {
            port: compute_port,
            shared_buffers: args.shared_buffers.clone(),
            local_cache_size: args.local_cache_size.clone(),
            full_basebackup: args.full_basebackup,
        },
        branches: Vec::new(),
    };
    let bootstrapped = servers::start_safekeepers(layout, &cluster.safekeepers)
        .and_then(|()| servers::start_pageserver(layout, &cluster.pageserver, &install))
        .and_then(|()| bootstrap(&install, &mut cluster))
        .and_then(|()| cluster.write(layout));
    if let Err(error) = bootstrapped {
        return Err(undo(layout, &cluster, error));
    }
    let overrides = ComputeOverrides {
        port: args.compute_port,
        ..ComputeOverrides::default()
    };
    match start_compute(layout, None, &overrides) {
        Ok((_, url)) => {
            println!("compute: {url}");
            Ok(())
        }
        Err(error) => Err(undo(layout, &cluster, error)),
    }
}

/// A string field of an admin API answer.
fn text_field(value: &Value, name: &str) -> Result<String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {name} in {value}"))
}

/// The tenant and its timeline: initdb into a scratch cluster, a tenant,
/// the scratch cluster imported as a timeline that follows the
/// safekeepers, and the safekeepers' timeline at the import LSN.
fn bootstrap(install: &PgInstall, cluster: &mut LocalCluster) -> Result<()> {
    let step = Instant::now();
    let scratch = PgCluster::create(install, PgClusterOptions::default()).context("initdb")?;
    let control = quire_pageserver::import::read_control(&scratch.datadir())?;
    cluster.system_id = control.system_identifier.get();
    cluster.segment_size = control.xlog_seg_size.get();
    println!(
        "quire start: initdb {:.1} s (system identifier {})",
        step.elapsed().as_secs_f64(),
        cluster.system_id
    );

    let http = cluster.pageserver.http.clone();
    let tenant = call_api(
        &http,
        None,
        "POST",
        "/v1/tenant",
        Some(&json!({})),
        BOOTSTRAP_CALL,
    )?;
    cluster.tenant_id = text_field(&tenant, "tenant_id")?;
    cluster.shard_count = tenant
        .get("shard_count")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .context("no shard_count in the new tenant")?;
    cluster.stripe_size = tenant
        .get("stripe_size")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .context("no stripe_size in the new tenant")?;

    let step = Instant::now();
    let body = json!({
        "import_pgdata": scratch.datadir(),
        "wal_source": {"safekeepers": {"safekeepers": cluster.safekeeper_addresses()}},
    });
    let timeline = call_api(
        &http,
        None,
        "POST",
        &format!("/v1/tenant/{}/timeline", cluster.tenant_id),
        Some(&body),
        BOOTSTRAP_CALL,
    )?;
    cluster.timeline_id = text_field(&timeline, "timeline_id")?;
    cluster.timeline_start_lsn = text_field(&timeline, "lsn")?;
    let start: Lsn = cluster
        .timeline_start_lsn
        .parse()
        .with_context(|| format!("the import LSN {:?}", cluster.timeline_start_lsn))?;
    println!(
        "quire start: imported into tenant {} timeline {} at {start} in {:.1} s",
        cluster.tenant_id,
        cluster.timeline_id,
        step.elapsed().as_secs_f64()
    );
    drop(scratch);
    create_safekeeper_timeline(cluster, &cluster.timeline_id, start)
}

/// Where the safekeepers' timeline begins for a pageserver timeline that
/// begins at `start`: the start of the segment holding it.
///
/// Not `start` itself: a pageserver that restarts (or a branch's receiver,
/// at once) asks the safekeepers for WAL from the start of the segment
/// holding its last record LSN (`wal_restart_lsn`), and a safekeeper
/// refuses to read below its timeline's beginning. Between the segment
/// start and `start` the safekeepers hold what the first compute's WAL
/// segment has there: pages of a skipped continuation, which every
/// decoder steps over; the first compute starts at `start`
/// (`Target::start_floor`).
pub fn safekeeper_wal_start(start: Lsn, segment_size: u32) -> Lsn {
    Lsn(start.0 - u64::from(start.segment_offset(segment_size)))
}

/// Creates the timeline `timeline` of the cluster's tenant on every
/// safekeeper, for a pageserver timeline beginning at `start`.
pub fn create_safekeeper_timeline(
    cluster: &LocalCluster,
    timeline: &str,
    start: Lsn,
) -> Result<()> {
    let key: TimelineKey = format!("{}/{timeline}", cluster.tenant_id)
        .parse()
        .map_err(|e: String| anyhow!("the timeline {e}"))?;
    let safekeepers = cluster.safekeeper_addresses();
    let (segment_size, system_id) = (cluster.segment_size, cluster.system_id);
    let wal_start = safekeeper_wal_start(start, segment_size);
    let within = Duration::from_secs(60);
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        quire_io::timeout(
            within,
            compute_control::create_timeline(
                &safekeepers,
                None,
                key,
                wal_start,
                segment_size,
                system_id,
            ),
        )
        .await
    })
    .map_err(|e| anyhow!("{e}"))?
    .map_err(|_| {
        anyhow!(
            "creating the timeline on the safekeepers took over {} s",
            within.as_secs()
        )
    })?
    .context("create the timeline on the safekeepers")
}

/// Starts a stopped cluster again: its servers on the same data and ports,
/// then the main compute and each branch's.
fn restart(layout: &Layout) -> Result<()> {
    let cluster = LocalCluster::read(layout)?;
    let servers = servers::all(layout, &cluster);
    let mut up: Vec<String> = servers
        .iter()
        .filter_map(|s| s.running().map(|pid| format!("{} (pid {pid})", s.name)))
        .collect();
    for branch in
        std::iter::once(None).chain(cluster.branches.iter().map(|b| Some(b.name.as_str())))
    {
        if let Some(pid) = postgres::running(&layout.compute_data(branch)) {
            up.push(format!(
                "the compute{} (pid {pid})",
                branch.map_or_else(String::new, |b| format!(" of branch {b}"))
            ));
        }
    }
    if !up.is_empty() {
        bail!(
            "the cluster in {} is running: {}; `quire stop --dir {}` first",
            layout.dir.display(),
            up.join(", "),
            layout.dir.display()
        );
    }
    let install = PgInstall::at(&cluster.pg_prefix)?;
    layout.make_dirs()?;
    let started = servers::start_safekeepers(layout, &cluster.safekeepers)
        .and_then(|()| servers::start_pageserver(layout, &cluster.pageserver, &install));
    if let Err(error) = started {
        return Err(undo(layout, &cluster, error));
    }
    let overrides = ComputeOverrides::default();
    let mut branches = vec![None];
    branches.extend(cluster.branches.iter().map(|b| Some(b.name.clone())));
    for branch in branches {
        match start_compute(layout, branch.as_deref(), &overrides) {
            Ok((_, url)) => match &branch {
                None => println!("compute: {url}"),
                Some(name) => println!("branch {name}: compute: {url}"),
            },
            Err(error) => return Err(undo(layout, &cluster, error)),
        }
    }
    Ok(())
}
