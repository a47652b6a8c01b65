//! `quire bench pgbench` is in `bench_pgbench.rs`.
//!
//! `quire bench getpage`: the GetPage load generator (`perf::getpage` says
//! what it measures) against a running pageserver, on one client executor
//! pinned to `--cpu` (default: the last CPU, away from a pageserver started
//! with fewer cores from CPU 0).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use quire_io::{LocalConfig, run_local};
use quire_net::id::ShardIdentity;
use quire_net::page_client::Target;
use quire_perf::getpage::{GetPageBench, Pattern, machine, render};
use quire_postgres::Lsn;
use quire_postgres::types::{ForkNumber, RelTag};
use serde_json::Value;

/// `quire bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// GetPage load over the page protocol, with the loopback round trip and an O_DIRECT read as peers.
    Getpage(Box<GetPageArgs>),
    /// pgbench on a compute over Quire beside vanilla Postgres with the same `shared_buffers`.
    Pgbench(crate::bench_pgbench::PgbenchArgs),
}

/// Options of `quire bench getpage`.
#[derive(Args)]
pub struct GetPageArgs {
    /// The page service's `host:port`.
    #[arg(long)]
    pageserver: String,
    /// The admin API's `host:port` (to find the largest relation when
    /// --rel is not given).
    #[arg(long)]
    pageserver_http: Option<String>,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The timeline.
    #[arg(long)]
    timeline: String,
    /// The relation fork: `SPC/DB/REL` (main fork) or `SPC/DB/REL/FORK`.
    #[arg(long)]
    rel: Option<String>,
    /// Blocks of it (with --rel; without, the admin API says).
    #[arg(long)]
    blocks: Option<u32>,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// `uniform`, `sequential` or `zipf` (`zipf:EXPONENT`, default 1.0).
    #[arg(long, default_value = "uniform")]
    pattern: String,
    /// Read at this LSN instead of the latest.
    #[arg(long)]
    lsn: Option<String>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Stop after this many requests (if before the duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Read every block once before measuring (a warm server cache).
    #[arg(long)]
    warm_up: bool,
    /// Where the O_DIRECT peer's file goes: the filesystem under test (the
    /// pageserver's data directory).
    #[arg(long, default_value = ".")]
    odirect_dir: PathBuf,
    /// Samples of each peer.
    #[arg(long, default_value_t = 20_000)]
    peer_samples: u32,
    /// The CPU of the client executor (default: the last).
    #[arg(long)]
    cpu: Option<usize>,
    /// A token of scope `compute`, when the pageserver checks tokens.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Also time the round trip against an echo on a `quire_io` executor on
    /// this CPU (the runtime's floor), spinning as the client does.
    #[arg(long)]
    runtime_echo_cpu: Option<usize>,
    /// Time the O_DIRECT peer on this CPU (the server's) instead of the
    /// client's: where the disk's completion interrupts go decides what a
    /// read costs on each CPU (on this 2-vCPU machine, 70 us on the CPU
    /// taking them, 100 us on the other).
    #[arg(long)]
    odirect_cpu: Option<usize>,
    /// Microseconds the client executor polls before it parks (0: park at
    /// once), as the pageserver's cores do.
    #[arg(long, default_value_t = 50)]
    spin_before_park_us: u64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.command {
        BenchCommand::Getpage(args) => getpage(args),
        BenchCommand::Pgbench(args) => crate::bench_pgbench::run(args),
    }
}

fn parse_rel(text: &str) -> Result<RelTag> {
    let parts: Vec<&str> = text.split('/').collect();
    let number = |s: &str| s.parse::<u32>().with_context(|| format!("--rel {text}"));
    let (spc, db, rel, fork) = match parts.as_slice() {
        [spc, db, rel] => (number(spc)?, number(db)?, number(rel)?, ForkNumber::Main),
        [spc, db, rel, fork] => (
            number(spc)?,
            number(db)?,
            number(rel)?,
            fork_named(fork).with_context(|| format!("--rel {text}: fork"))?,
        ),
        _ => bail!("--rel {text}: expected SPC/DB/REL or SPC/DB/REL/FORK"),
    };
    Ok(RelTag {
        spc_oid: spc,
        db_oid: db,
        rel_number: rel,
        fork,
    })
}

fn fork_named(name: &str) -> Result<ForkNumber> {
    Ok(match name {
        "main" | "0" => ForkNumber::Main,
        "fsm" | "1" => ForkNumber::Fsm,
        "vm" | "2" => ForkNumber::VisibilityMap,
        "init" | "3" => ForkNumber::Init,
        _ => bail!("unknown fork {name}"),
    })
}

/// The largest main fork of the timeline, from the admin API.
fn largest_relation(http: &str, tenant: &str, timeline: &str) -> Result<(RelTag, u32)> {
    let url = format!("http://{http}/v1/tenant/{tenant}/timeline/{timeline}/relations");
    let answer: Value = ureq::get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_json()
        .context("relations: not JSON")?;
    let mut best: Option<(RelTag, u32)> = None;
    for rel in answer["relations"].as_array().into_iter().flatten() {
        if rel["fork"] != "main" {
            continue;
        }
        let field = |name: &str| {
            rel[name]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| anyhow!("relations: {name} missing"))
        };
        let tag = RelTag {
            spc_oid: field("spc_oid")?,
            db_oid: field("db_oid")?,
            rel_number: field("rel_number")?,
            fork: ForkNumber::Main,
        };
        let blocks = field("blocks")?;
        if best.is_none_or(|(_, b)| blocks > b) {
            best = Some((tag, blocks));
        }
    }
    best.context("the timeline has no relation")
}

fn getpage(args: &GetPageArgs) -> Result<()> {
    let address = args
        .pageserver
        .to_socket_addrs()
        .context("--pageserver")?
        .next()
        .context("--pageserver resolves to no address")?;
    let (rel, blocks) = match (&args.rel, args.blocks, &args.pageserver_http) {
        (Some(rel), Some(blocks), _) => (parse_rel(rel)?, blocks),
        (None, _, Some(http)) => largest_relation(http, &args.tenant, &args.timeline)?,
        _ => bail!("give --rel with --blocks, or --pageserver-http to find the largest relation"),
    };
    let pattern = match args.pattern.as_str() {
        "uniform" => Pattern::Uniform,
        "sequential" => Pattern::Sequential,
        "zipf" => Pattern::Zipf(1.0),
        other => match other.strip_prefix("zipf:") {
            Some(s) => Pattern::Zipf(s.parse().context("--pattern zipf:EXPONENT")?),
            None => bail!("--pattern {other}: expected uniform, sequential or zipf[:EXPONENT]"),
        },
    };
    let lsn = args
        .lsn
        .as_deref()
        .map(|text| {
            text.parse::<Lsn>()
                .map_err(|_| anyhow!("--lsn {text}: not an LSN"))
        })
        .transpose()?;
    let bench = GetPageBench {
        address,
        target: Target {
            tenant: args.tenant.parse().map_err(|e| anyhow!("--tenant: {e}"))?,
            timeline: args
                .timeline
                .parse()
                .map_err(|e| anyhow!("--timeline: {e}"))?,
            shard: ShardIdentity::unsharded(),
            token: crate::auth_files::read_token(args.auth_token_file.as_deref())?
                .unwrap_or_default(),
        },
        rel,
        blocks,
        connections: args.connections,
        depth: args.depth,
        pattern,
        lsn,
        duration: Duration::from_secs(args.duration_secs),
        requests: args.requests,
        warm_up: args.warm_up,
        odirect_dir: args.odirect_dir.clone(),
        peer_samples: args.peer_samples,
        odirect_cpu: args.odirect_cpu,
        runtime_echo: args.runtime_echo_cpu.map(|cpu| {
            (
                Some(cpu),
                (args.spin_before_park_us > 0)
                    .then(|| Duration::from_micros(args.spin_before_park_us)),
            )
        }),
        busy_poll: (args.spin_before_park_us > 0)
            .then(|| Duration::from_micros(args.spin_before_park_us)),
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let config = LocalConfig {
        cpu: Some(args.cpu.unwrap_or(cores - 1)),
        name: "quire-bench".into(),
        spin_before_park: (args.spin_before_park_us > 0)
            .then(|| Duration::from_micros(args.spin_before_park_us)),
        ..LocalConfig::default()
    };
    println!("{}", machine(&args.odirect_dir));
    let runner = bench.clone();
    let report = run_local(&config, move || async move { runner.run().await })
        .map_err(|e| anyhow!("{e}"))??;
    for line in render(&bench, &report) {
        println!("{line}");
    }
    if report.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}
