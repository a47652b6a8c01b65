//! `quire stop [--dir DIR]`: the computes (fast shutdown), then the
//! pageserver, then the safekeepers (SIGTERM), each within a bound and
//! killed with SIGKILL after it. What is not running is skipped, so a
//! second `quire stop` only says so.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use super::cluster_file::{Layout, LocalCluster};
use super::servers;
use crate::compute::postgres;

/// Options of `quire stop`.
#[derive(Args)]
pub struct StopArgs {
    /// The cluster's directory.
    #[arg(long, default_value = ".quire")]
    dir: PathBuf,
}

/// How long a compute's fast shutdown may take before SIGKILL.
const COMPUTE_GRACE: Duration = Duration::from_secs(30);

pub fn run(args: &StopArgs) -> Result<()> {
    let layout = super::layout_of(&args.dir)?;
    let cluster = LocalCluster::read(&layout)?;
    stop_cluster(&layout, &cluster)
}

/// Stops every process of `cluster`, computes first (their shutdown
/// checkpoints still reach the safekeepers), then the pageserver and the
/// safekeepers.
pub fn stop_cluster(layout: &Layout, cluster: &LocalCluster) -> Result<()> {
    let mut failed = Vec::new();
    let computes =
        std::iter::once(None).chain(cluster.branches.iter().map(|b| Some(b.name.as_str())));
    for branch in computes {
        let data = layout.compute_data(branch);
        let name = branch.map_or_else(
            || "compute".to_owned(),
            |b| format!("compute of branch {b}"),
        );
        match postgres::stop(&data, COMPUTE_GRACE) {
            Ok(how) => println!("{name}: {}", servers::describe(how)),
            Err(error) => {
                println!("{name}: {error:#}");
                failed.push(name);
            }
        }
    }
    let mut order = servers::all(layout, cluster);
    // The pageserver before the safekeepers it follows.
    order.rotate_right(1);
    if let Err(error) = servers::stop_all(&order) {
        failed.push(format!("{error:#}"));
    }
    if !failed.is_empty() {
        bail!("quire stop: {}", failed.join("; "));
    }
    Ok(())
}
