//! `quire branch create NAME --at LSN|TIMESTAMP [--dir DIR]`: a branch of
//! a local cluster's main timeline on the pageserver (sharing its history
//! up to the branch point), its own timeline on the safekeepers beginning
//! at the branch LSN, and a compute on it on a port of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use quire_postgres::Lsn;
use serde_json::{Value, json};

use super::cluster_file::{BranchEntry, ComputeEntry, LocalCluster};
use super::start::create_safekeeper_timeline;
use super::{ComputeOverrides, free_port, start_compute, target_of};
use crate::admin::call_api;
use crate::compute::start::timeline_status;

/// `quire branch`.
#[derive(Args)]
pub struct BranchArgs {
    #[command(subcommand)]
    command: BranchCommand,
}

#[derive(Subcommand)]
enum BranchCommand {
    /// Branch the main timeline and start a compute on the branch.
    Create {
        /// The branch's name (letters, digits, `-`, `_`).
        name: String,
        /// The branch point: an LSN (`X/Y`), or a time (RFC 3339 or
        /// Postgres' output, with an offset) meaning the last commit at or
        /// before it.
        #[arg(long)]
        at: String,
        /// The cluster's directory.
        #[arg(long, default_value = ".quire")]
        dir: PathBuf,
        /// The branch compute's port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
}

/// The longest a branch's name may be.
const NAME_BYTES_MAX: usize = 64;

pub fn run(args: &BranchArgs) -> Result<()> {
    let BranchCommand::Create {
        name,
        at,
        dir,
        port,
    } = &args.command;
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("a branch's name is 1 to {NAME_BYTES_MAX} letters, digits, `-` or `_`: {name:?}");
    }
    let layout = super::layout_of(dir)?;
    let mut cluster = LocalCluster::read(&layout)?;
    if cluster.branches.iter().any(|b| &b.name == name) {
        bail!("the cluster already has a branch {name:?}");
    }
    let mut body = json!({
        "ancestor_timeline_id": cluster.timeline_id,
        "wal_source": {"safekeepers": {"safekeepers": cluster.safekeeper_addresses()}},
    });
    if at.contains('/') {
        let lsn: Lsn = at.parse().with_context(|| format!("--at {at}"))?;
        body["ancestor_lsn"] = json!(lsn.to_string());
    } else {
        body["ancestor_timestamp"] = json!(at);
    }
    let answer = call_api(
        &cluster.pageserver.http,
        None,
        "POST",
        &format!("/v1/tenant/{}/timeline", cluster.tenant_id),
        Some(&body),
        Duration::from_secs(120),
    )
    .context("branch on the pageserver")?;
    let field = |name: &str| {
        answer
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no {name} in {answer}"))
    };
    let timeline_id = field("timeline_id")?;
    // The branch point is the ancestor LSN the branch shares history up
    // to (the answer's `lsn` is the branch's last record LSN, one past it).
    let status = timeline_status(&target_of(&cluster, &timeline_id, None))?;
    let lsn_text = status
        .get("ancestor")
        .and_then(|a| a.get("lsn"))
        .and_then(Value::as_str)
        .map_or_else(|| field("lsn"), |lsn| Ok(lsn.to_owned()))?;
    let lsn: Lsn = lsn_text
        .parse()
        .with_context(|| format!("the branch LSN {lsn_text:?}"))?;
    if let Some(commit) = answer.get("ancestor_commit") {
        println!("branch {name}: the last commit at or before {at}: {commit}");
    }
    println!("branch {name}: timeline {timeline_id} at {lsn}");
    create_safekeeper_timeline(&cluster, &timeline_id, lsn)?;
    cluster.branches.push(BranchEntry {
        name: name.clone(),
        timeline_id,
        lsn: lsn_text,
        compute: ComputeEntry {
            port: free_port(*port)?,
            ..cluster.compute.clone()
        },
    });
    cluster.write(&layout)?;
    let (_, url) = start_compute(&layout, Some(name), &ComputeOverrides::default())?;
    println!("branch {name}: compute: {url}");
    Ok(())
}
