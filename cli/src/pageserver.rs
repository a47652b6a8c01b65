//! `quire pageserver --dir DIR --listen ADDR --http ADDR`: runs the
//! pageserver until killed (`pageserver::service` says what it is): one
//! executor per core (`--cores`), tenant shards kept under DIR and loaded
//! again at start, the page protocol on `--listen`, the admin API and
//! `/metrics` on `--http`, layers uploaded to `--remote` object storage.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use quire_cluster::{PgInstall, RunAs};
use quire_net::page_protocol::{PIPELINE_DEPTH_DEFAULT, PIPELINE_DEPTH_MAX};
use quire_net::page_service::ServiceLimits;
use quire_pageserver::service::{self, PageserverConfig};
use quire_redo::RedoConfig;
use quire_remote::RemoteConfig;

/// Options of `quire pageserver`.
#[derive(Args, Clone)]
pub struct PageserverArgs {
    /// The data directory (tenants, timelines, layers).
    #[arg(long)]
    dir: PathBuf,
    /// The page service's `host:port` (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:6400")]
    listen: String,
    /// The admin API's `host:port` (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:9898")]
    http: String,
    /// Executors, one per CPU from CPU 0 (default: every CPU).
    #[arg(long, conflicts_with = "cpus")]
    cores: Option<usize>,
    /// The CPUs to run one executor each on, as a list (`1`, `0,2`, `2-5`):
    /// for example the CPUs that take the disk's interrupts, where an
    /// O_DIRECT read completes without a wake-up from another CPU.
    #[arg(long, value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// Block cache per core, MiB.
    #[arg(long, default_value_t = 512)]
    cache_mib: usize,
    /// Layer index cache per core, MiB (index blocks kept apart from
    /// values: about 1/200 of the image layers' size keeps every index
    /// block cached, so a page missing from the block cache costs one read).
    #[arg(long, default_value_t = 64)]
    index_cache_mib: usize,
    /// Requests a connection reads ahead.
    #[arg(long, default_value_t = PIPELINE_DEPTH_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=i64::from(PIPELINE_DEPTH_MAX)))]
    pipeline_depth: u32,
    /// Milliseconds a request waits for WAL up to its `not_modified_since`.
    #[arg(long, default_value_t = 10_000)]
    lsn_wait_ms: u64,
    /// Milliseconds a connection's handshake may take.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// Page connections one core serves at once.
    #[arg(long, default_value_t = 1024)]
    max_connections_per_core: usize,
    /// Take only tokens signed by this Ed25519 public key (PEM), on the
    /// page service and the admin API.
    #[arg(long)]
    auth_public_key: Option<PathBuf>,
    /// Spare redo processes per core.
    #[arg(long, default_value_t = 1)]
    redo_spares: usize,
    /// Microseconds an idle core keeps polling before it parks (0: park at
    /// once); trades idle CPU for the wake-up latency of each request.
    #[arg(long, default_value_t = 50)]
    spin_before_park_us: u64,
    /// Object storage for the layers: `s3://bucket/prefix` (endpoint,
    /// region and credentials from `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) or `file:///dir`.
    /// Each tenant shard claims a generation there and uploads every
    /// layer; WAL is removed from the safekeepers only once it is there.
    #[arg(long)]
    remote: Option<String>,
    /// With `--remote`: MiB of WAL a timeline's disk may hold past object
    /// storage before its ingest waits for uploads (back-pressure while the
    /// store is slow or down).
    #[arg(long, default_value_t = 1024)]
    max_upload_lag_mib: u64,
    /// With `--remote`: MiB of layer files the local disk may hold; the
    /// layers read least recently that object storage holds are evicted
    /// past it and downloaded again when a read needs them. Default: no
    /// limit.
    #[arg(long, requires = "remote")]
    disk_budget_mib: Option<u64>,
    /// MiB per second each core's background scrub reads of its layer
    /// files (checking every block; a corrupt one is replaced from object
    /// storage when it holds the layer); 0 turns the scrub off.
    #[arg(long, default_value_t = 8)]
    scrub_mib_per_s: u64,
}

pub fn run(args: &PageserverArgs) -> Result<()> {
    let install = PgInstall::locate()?;
    let run_as = RunAs::detect()?;
    let cpus = args.cpus.as_ref().map(|list| list.0.clone());
    let cores = cpus.as_ref().map_or_else(
        || {
            args.cores.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            })
        },
        Vec::len,
    );
    let scratch_root = args.dir.join("redo");
    let config = PageserverConfig {
        dir: args.dir.clone(),
        listen: args.listen.clone(),
        http: args.http.clone(),
        cores,
        cpus,
        cache_bytes_per_core: args.cache_mib << 20,
        index_cache_bytes_per_core: args.index_cache_mib << 20,
        io_memory_bytes: 2 << 20,
        limits: ServiceLimits {
            pipeline_depth: args.pipeline_depth,
            lsn_wait: Duration::from_millis(args.lsn_wait_ms),
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            ..ServiceLimits::default()
        },
        max_connections_per_core: args.max_connections_per_core,
        auth_public_key: args.auth_public_key.clone(),
        redo: RedoConfig {
            postgres: install.bin("postgres"),
            run_as: run_as.ids(),
            scratch_root,
            timeout: Duration::from_secs(60),
        },
        redo_spares: args.redo_spares,
        spin_before_park: (args.spin_before_park_us > 0)
            .then(|| Duration::from_micros(args.spin_before_park_us)),
        remote: args
            .remote
            .as_deref()
            .map(RemoteConfig::from_url)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--remote: {e}"))?,
        upload_lag_max: args.max_upload_lag_mib.saturating_mul(1 << 20),
        disk_budget: args.disk_budget_mib.map(|mib| mib.saturating_mul(1 << 20)),
        scrub_bytes_per_second: args.scrub_mib_per_s.saturating_mul(1 << 20),
    };
    service::run(&config)
}

/// CPU numbers, in the order given, each once.
#[derive(Clone, Debug)]
pub struct CpuList(Vec<usize>);

/// Parses `1`, `0,2` or `2-5,7`.
fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.trim(), last.trim()),
            None => (part, part),
        };
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("`{part}` is not a CPU number or range"))
        };
        let (first, last) = (number(first)?, number(last)?);
        if first > last || last - first >= 4096 {
            return Err(format!("`{part}` is not a CPU range"));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is named twice"));
            }
            cpus.push(cpu);
        }
    }
    Ok(CpuList(cpus))
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_cpu_list("1").map(|l| l.0), Ok(vec![1]));
        assert_eq!(parse_cpu_list("0,2-4").map(|l| l.0), Ok(vec![0, 2, 3, 4]));
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }
}
