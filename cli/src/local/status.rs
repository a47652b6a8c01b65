//! `quire status [--dir DIR]`: each process of a local cluster up or down
//! (its pid alive and its own), the safekeepers' term, flush and commit
//! LSNs of each timeline, the pageserver's LSNs of each timeline, and each
//! compute's connection string. Every call is bounded; a server that does
//! not answer is reported, not waited for.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use quire_safekeeper::server::conn::FramedConn;
use quire_safekeeper::wire::{Message, TimelineKey};
use serde_json::Value;

use super::cluster_file::LocalCluster;
use super::{servers, target_of};
use crate::compute::{postgres, start::timeline_status};

/// Options of `quire status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The cluster's directory.
    #[arg(long, default_value = ".quire")]
    dir: PathBuf,
}

/// The bound on one safekeeper's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: &StatusArgs) -> Result<()> {
    let layout = super::layout_of(&args.dir)?;
    let cluster = LocalCluster::read(&layout)?;
    println!(
        "cluster {}: tenant {}, timeline {} (from {})",
        layout.dir.display(),
        cluster.tenant_id,
        cluster.timeline_id,
        cluster.timeline_start_lsn
    );
    let mut timelines = vec![("main".to_owned(), cluster.timeline_id.clone())];
    timelines.extend(
        cluster
            .branches
            .iter()
            .map(|b| (format!("branch {}", b.name), b.timeline_id.clone())),
    );
    let mut down = 0;
    for entry in &cluster.safekeepers {
        let server = servers::safekeeper(&layout, entry.id);
        let Some(pid) = server.running() else {
            println!("{}: down ({})", server.name, entry.listen);
            down += 1;
            continue;
        };
        let mut line = format!("{}: up, pid {pid}, {}", server.name, entry.listen);
        for (name, timeline) in &timelines {
            let _ = match safekeeper_status(&entry.listen, &cluster.tenant_id, timeline) {
                Ok((term, flush, commit, health)) => write!(
                    line,
                    "; {name}: term {term}, flush {flush}, commit {commit}{health}"
                ),
                Err(error) => write!(line, "; {name}: no status ({error:#})"),
            };
        }
        println!("{line}");
    }
    let pageserver = servers::pageserver(&layout);
    if let Some(pid) = pageserver.running() {
        let mut line = format!(
            "pageserver: up, pid {pid}, page service {}, admin API {}",
            cluster.pageserver.listen, cluster.pageserver.http
        );
        for (name, timeline) in &timelines {
            let _ = write!(line, "; {name}: {}", pageserver_lsns(&cluster, timeline));
        }
        println!("{line}");
    } else {
        println!(
            "pageserver: down (page service {})",
            cluster.pageserver.listen
        );
        down += 1;
    }
    let mut computes = vec![("compute".to_owned(), None, cluster.compute.port)];
    for branch in &cluster.branches {
        computes.push((
            format!(
                "branch {} (timeline {} at {}): compute",
                branch.name, branch.timeline_id, branch.lsn
            ),
            Some(branch.name.as_str()),
            branch.compute.port,
        ));
    }
    for (name, branch, port) in computes {
        if let Some(pid) = postgres::running(&layout.compute_data(branch)) {
            println!("{name}: up, pid {pid}, {}", postgres::url(port));
        } else {
            println!("{name}: down");
            down += 1;
        }
    }
    if down > 0 {
        println!("{down} process(es) down");
    }
    Ok(())
}

/// The pageserver's LSNs of `timeline`, in words.
fn pageserver_lsns(cluster: &LocalCluster, timeline: &str) -> String {
    match timeline_status(&target_of(cluster, timeline, None)) {
        Ok(status) => format!(
            "last record {}, ingested {}, disk-consistent {}{}",
            text(&status, "last_record_lsn"),
            text(&status, "ingested_lsn"),
            text(&status, "disk_consistent_lsn"),
            match status.get("receiver_error").and_then(Value::as_str) {
                Some(why) => format!(", receiver stopped: {why}"),
                None => String::new(),
            }
        ),
        Err(error) => format!("no status ({error:#})"),
    }
}

fn text<'a>(status: &'a Value, name: &str) -> &'a str {
    status.get(name).and_then(Value::as_str).unwrap_or("?")
}

/// `(term, flush, commit)` of a timeline on the safekeeper at `address`.
/// What a status line says of a safekeeper timeline's storage health: its
/// damaged range and repairs, when there are any.
fn health_text(health: &quire_safekeeper::wire::StorageHealth) -> String {
    let mut text = String::new();
    if health.damaged_until.0 != 0 {
        let _ = write!(
            text,
            ", WAL DAMAGED {}..{} (repairing from peers; no votes until then)",
            health.damaged_from, health.damaged_until
        );
    }
    if health.wal_repairs + health.wal_repair_refusals + health.control_repairs > 0 {
        let _ = write!(
            text,
            ", repaired {} WAL range(s) ({} bytes, {} refused fetches), {} control-file copies",
            health.wal_repairs,
            health.wal_repaired_bytes,
            health.wal_repair_refusals,
            health.control_repairs
        );
    }
    text
}

fn safekeeper_status(
    address: &str,
    tenant: &str,
    timeline: &str,
) -> Result<(u64, String, String, String)> {
    let key: TimelineKey = format!("{tenant}/{timeline}")
        .parse()
        .map_err(|e: String| anyhow!("the timeline {e}"))?;
    let address = address.to_owned();
    let answer = quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        let call = async {
            let mut conn = FramedConn::connect(&address).await?;
            conn.set_read_timeout(Some(CALL_TIMEOUT));
            conn.call(&Message::GetStatus { key }).await
        };
        match quire_io::timeout(CALL_TIMEOUT * 2, call).await {
            Ok(Ok(message)) => Ok(message),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer".to_owned()),
        }
    })
    .map_err(|e| anyhow!("{e}"))?
    .map_err(|e| anyhow!("{e}"))?;
    match answer {
        Message::Status {
            term,
            flush,
            commit,
            health,
            ..
        } => Ok((
            term,
            flush.to_string(),
            commit.to_string(),
            health_text(&health),
        )),
        Message::Error { message } => bail!("{message}"),
        other => bail!("answered {other:?}"),
    }
}
