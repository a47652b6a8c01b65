//! `quire elect`: the election a compute start runs, against the
//! safekeepers (docs/safekeeper-protocol.md).
//!
//! It bumps the term on a majority, takes the most advanced log, cuts it at
//! its last whole record, announces the new history and the compute's
//! replication address, and prints where the compute's WAL must begin.
//! With `--create-at LSN --system-id ID` it first creates the timeline on
//! every safekeeper (its WAL beginning at that segment start). An older
//! compute can no longer commit afterwards: the safekeepers stream only
//! from the elected one.

use anyhow::{Context, Result, anyhow};
use clap::Args;
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::wire::TimelineKey;

/// Options of `quire elect`.
#[derive(Args, Clone)]
pub struct ElectArgs {
    /// The safekeepers, `host:port,...`.
    #[arg(long, value_delimiter = ',', required = true)]
    safekeepers: Vec<String>,
    /// The timeline, `TENANT/TIMELINE` (32 hex digits each).
    #[arg(long)]
    timeline: String,
    /// The compute's replication address, `host:port`.
    #[arg(long)]
    compute: String,
    /// The cluster's WAL segment size in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    segment_size: u32,
    /// Create the timeline first, its WAL starting at this segment start.
    #[arg(long, requires = "system_id")]
    create_at: Option<Lsn>,
    /// The cluster's system identifier (with `--create-at`).
    #[arg(long)]
    system_id: Option<u64>,
    /// The token to show the safekeepers (scope `compute_control`), when
    /// they check tokens.
    #[arg(long)]
    auth_token_file: Option<std::path::PathBuf>,
}

pub fn run(args: &ElectArgs) -> Result<()> {
    let key: TimelineKey = args
        .timeline
        .parse()
        .map_err(|e: String| anyhow!("--timeline {e}"))?;
    let token = crate::auth_files::read_token(args.auth_token_file.as_deref())?;
    let args = args.clone();
    let won = quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        if let (Some(start), Some(system_id)) = (args.create_at, args.system_id) {
            compute_control::create_timeline(
                &args.safekeepers,
                token.as_deref(),
                key,
                start,
                args.segment_size,
                system_id,
            )
            .await?;
        }
        anyhow::Ok(
            compute_control::elect(
                &args.safekeepers,
                token.as_deref(),
                key,
                &args.compute,
                args.segment_size,
            )
            .await?,
        )
    })
    .map_err(|e| anyhow!("{e}"))?
    .context("election")?;
    // The basebackup's checkpoint record must link back to the record
    // before the start (`quire timeline basebackup --prev-lsn`).
    if won.prev_record != Lsn::INVALID {
        println!("previous record at {}", won.prev_record);
    }
    println!(
        "elected term {} (donor safekeeper {}); the compute's WAL starts at {}",
        won.term, won.donor.0, won.start
    );
    Ok(())
}
