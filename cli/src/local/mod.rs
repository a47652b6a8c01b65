//! A local cluster on loopback, like `neon_local` but simpler: `quire
//! start` (`start.rs`) brings up three safekeepers, a pageserver, a tenant
//! with a timeline bootstrapped from initdb and a compute, as background
//! processes (`servers.rs`) whose logs and pid files live under the
//! cluster's directory; `quire status` (`status.rs`), `quire stop`
//! (`stop.rs`) and `quire branch create` (`branch.rs`) find everything
//! through `DIR/cluster.json` (`cluster_file.rs`).
//!
//! It is tooling for one machine: every address is loopback and nothing
//! authenticates.

pub mod branch;
pub mod cluster_file;
pub mod servers;
pub mod start;
pub mod status;
pub mod stop;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use quire_postgres::Lsn;

use crate::compute::{locate_install, postgres, start as compute_start};
use cluster_file::{ComputeEntry, Layout, LocalCluster};

/// The layout of an existing cluster directory (named by its canonical
/// path, as the processes were started with it).
pub fn layout_of(dir: &Path) -> Result<Layout> {
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("{}: no such cluster directory", dir.display()))?;
    Ok(Layout::new(dir))
}

/// What `quire compute start --cluster` may change about a compute.
#[derive(Clone, Debug, Default)]
pub struct ComputeOverrides {
    /// Another port.
    pub port: Option<u16>,
    /// Another `shared_buffers`.
    pub shared_buffers: Option<String>,
    /// Another `quire.local_cache_size`.
    pub local_cache_size: Option<String>,
    /// Full basebackup or not.
    pub full_basebackup: Option<bool>,
    /// Another Postgres install.
    pub pg_prefix: Option<PathBuf>,
    /// The bounds on each step.
    pub deadlines: compute_start::Deadlines,
}

/// The compute target of `cluster`'s `timeline`, which begins at
/// `start_floor` on the pageserver.
pub fn target_of(
    cluster: &LocalCluster,
    timeline: &str,
    start_floor: Option<Lsn>,
) -> compute_start::Target {
    compute_start::Target {
        safekeepers: cluster.safekeeper_addresses(),
        safekeeper_token: None,
        pageserver: cluster.pageserver.listen.clone(),
        pageserver_http: cluster.pageserver.http.clone(),
        admin_token: None,
        page_token: None,
        tenant: cluster.tenant_id.clone(),
        timeline: timeline.to_owned(),
        shard_count: cluster.shard_count,
        stripe_blocks: cluster.stripe_size,
        segment_size: cluster.segment_size,
        start_floor,
    }
}

/// A free loopback port, `preferred` when it is free.
pub fn free_port(preferred: Option<u16>) -> Result<u16> {
    if let Some(port) = preferred
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    {
        return Ok(port);
    }
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("probe for a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Starts the compute of the main timeline (`branch` `None`) or of a
/// branch, in a data directory made anew; records its settings in
/// `cluster.json`. Its start and connection string.
pub fn start_compute(
    layout: &Layout,
    branch: Option<&str>,
    overrides: &ComputeOverrides,
) -> Result<(compute_start::StepTimes, String)> {
    let mut cluster = LocalCluster::read(layout)?;
    let (timeline, start, entry) = match branch {
        None => (
            cluster.timeline_id.clone(),
            cluster.timeline_start_lsn.clone(),
            cluster.compute.clone(),
        ),
        Some(name) => {
            let found = cluster.branch(name)?;
            (
                found.timeline_id.clone(),
                found.lsn.clone(),
                found.compute.clone(),
            )
        }
    };
    let start: Lsn = start
        .parse()
        .with_context(|| format!("the timeline's start LSN {start:?} in cluster.json"))?;
    let data = layout.compute_data(branch);
    if let Some(pid) = postgres::running(&data) {
        bail!(
            "the compute on {} is running (pid {pid}): `quire compute stop --cluster {}{}` first",
            data.display(),
            layout.dir.display(),
            branch.map_or_else(String::new, |b| format!(" --branch {b}"))
        );
    }
    let port = match overrides.port {
        Some(port) => port,
        None => free_port(Some(entry.port))?,
    };
    let entry = ComputeEntry {
        port,
        shared_buffers: overrides
            .shared_buffers
            .clone()
            .unwrap_or(entry.shared_buffers),
        local_cache_size: overrides
            .local_cache_size
            .clone()
            .unwrap_or(entry.local_cache_size),
        full_basebackup: overrides.full_basebackup.unwrap_or(entry.full_basebackup),
    };
    if data.exists() {
        // The compute keeps nothing: its files come from the basebackup.
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("remove the old compute directory {}", data.display()))?;
    }
    if let Some(parent) = data.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let prefix = overrides.pg_prefix.as_deref().unwrap_or(&cluster.pg_prefix);
    let launch = compute_start::Launch {
        install: locate_install(Some(prefix))?,
        data,
        log: layout.compute_log(branch),
        port,
        shared_buffers: entry.shared_buffers.clone(),
        local_cache_size: entry.local_cache_size.clone(),
        full_basebackup: entry.full_basebackup,
        deadlines: overrides.deadlines,
    };
    let started = compute_start::start(&target_of(&cluster, &timeline, Some(start)), &launch)?;
    match branch {
        None => cluster.compute = entry,
        Some(name) => {
            if let Some(found) = cluster.branches.iter_mut().find(|b| b.name == name) {
                found.compute = entry;
            }
        }
    }
    cluster.write(layout)?;
    Ok((started, postgres::url(port)))
}
