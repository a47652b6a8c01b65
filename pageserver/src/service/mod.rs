//! `quire pageserver`: the long-running, thread-per-core server.
//!
//! One executor per core (`io::run_per_core`), each owning whole tenant
//! shards ([`core`]): their timelines, block cache share, redo processes
//! and page connections. Every core listens on the page port and hands a
//! connection whose shard lives elsewhere to that core once, after its
//! handshake ([`accept`]); from then on its requests are served on that
//! core alone ([`session`]). The admin API runs on threads of its own
//! ([`http`]) and reaches the cores through bounded queues ([`admin`]).
//! What is persisted about shards and timelines, and where, is
//! [`settings`] (through [`files`]: checksummed, replaced atomically); the
//! layers and timeline metadata are the storage engine's.
//!
//! A restart loads every shard onto the core its settings name (a core
//! beyond the ones running now is replaced by one that is), each timeline
//! at its disk-consistent LSN. With object storage (`--remote`), each
//! shard claims a generation and each timeline uploads its layers and
//! index there ([`remote_sync`]).

pub mod accept;
pub mod admin;
pub mod attach;
pub mod basebackup;
pub mod core;
pub mod files;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod receiver;
pub mod remote_sync;
pub mod residence;
pub mod scrub;
pub mod session;
pub mod settings;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use futures::channel::mpsc;
use quire_io::handoff::{self, HandoffReceiver, HandoffSender};
use quire_io::net::TcpListener;
use quire_io::{ExecutorConfig, run_per_core};
use quire_net::page_service::ServiceLimits;
use quire_net::token::TokenVerifier;
use quire_redo::{RedoConfig, RedoPool};
use quire_remote::{RemoteConfig, RemoteStorage};
use quire_shard::CoreContext;

use self::accept::Handed;
use self::admin::AdminCommand;
use self::core::{Core, ShardPlace, Shared};
use self::metrics::Metrics;
use self::settings::ShardSettings;

/// Admin commands queued per core before the API answers 503.
const ADMIN_QUEUE: usize = 64;
/// Connections queued from one core to another.
const HANDOFF_QUEUE: usize = 256;
/// Threads serving the admin API.
const ADMIN_THREADS: usize = 4;

/// How to run the pageserver.
#[derive(Clone, Debug)]
pub struct PageserverConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// The page service's address.
    pub listen: String,
    /// The admin API's address.
    pub http: String,
    /// Executors (one per CPU, from CPU 0 unless `cpus` names them).
    pub cores: usize,
    /// The CPUs to pin the executors to, one each (its length is `cores`);
    /// `None`: CPUs 0 to `cores - 1`.
    pub cpus: Option<Vec<usize>>,
    /// Block cache per core, bytes.
    pub cache_bytes_per_core: usize,
    /// Layer index cache per core, bytes.
    pub index_cache_bytes_per_core: usize,
    /// Registered I/O memory per core, bytes.
    pub io_memory_bytes: usize,
    /// Page connections' limits.
    pub limits: ServiceLimits,
    /// Page connections one core serves at once.
    pub max_connections_per_core: usize,
    /// Where the public key of signed tokens is, if the server takes only
    /// signed ones.
    pub auth_public_key: Option<PathBuf>,
    /// The redo processes (their scratch root is per core below it).
    pub redo: RedoConfig,
    /// Spare redo processes per core.
    pub redo_spares: usize,
    /// How long an idle core polls before it parks.
    pub spin_before_park: Option<Duration>,
    /// Object storage, if any.
    pub remote: Option<RemoteConfig>,
    /// Bytes of WAL a timeline's disk may hold past object storage before
    /// its ingest waits for uploads.
    pub upload_lag_max: u64,
    /// Bytes of layer files the local disk may hold (split evenly between
    /// the cores); `None`: no limit. Needs object storage.
    pub disk_budget: Option<u64>,
    /// Bytes per second each core's scrub reads (0: no scrub).
    pub scrub_bytes_per_second: u64,
}

/// Every tenant's shards and their cores.
type Placement = HashMap<quire_net::id::TenantId, Vec<ShardPlace>>;
/// The shards one core loads at start, with their directories.
type CoreShards = Vec<(PathBuf, ShardSettings)>;

/// What one core takes at start.
struct CoreSetup {
    admin: mpsc::Receiver<AdminCommand>,
    inboxes: Vec<HandoffReceiver<Handed>>,
    outboxes: Vec<Option<HandoffSender<Handed>>>,
    shards: Vec<(PathBuf, ShardSettings)>,
}

impl PageserverConfig {
    /// The CPU of each executor, in core order.
    fn executor_cpus(&self) -> Vec<usize> {
        match &self.cpus {
            Some(cpus) if !cpus.is_empty() => cpus.clone(),
            _ => (0..self.cores.max(1)).collect(),
        }
    }
}

/// Runs the pageserver until a core fails; prints where it listens once
/// every core has loaded its shards and listens.
pub fn run(config: &PageserverConfig) -> Result<()> {
    let cpus = config.executor_cpus();
    let cores = cpus.len();
    std::fs::create_dir_all(settings::tenants_dir(&config.dir))
        .with_context(|| format!("create {}", config.dir.display()))?;
    let _lock = lock_dir(&config.dir)?;
    let verifier = token_verifier(config)?;
    let listen = resolve_port(&config.listen)?;
    if verifier.is_none() {
        eprintln!(
            "pageserver: WARNING: no --auth-public-key: the page service and admin API accept anyone who can connect{}",
            if listen.ip().is_loopback() {
                " (loopback only)"
            } else {
                ""
            }
        );
    }
    let (placement, per_core) = place_shards(&config.dir, cores)?;
    let metrics = Metrics::new()?;
    let (remote, holder) = start_remote(config, &metrics)?;
    let shared = Arc::new(Shared {
        root: config.dir.clone(),
        cores,
        limits: config.limits,
        max_connections_per_core: config.max_connections_per_core,
        max_handshakes_per_core: 1024,
        busy_poll: config.spin_before_park,
        verifier,
        placement: RwLock::new(placement),
        metrics,
        remote,
        holder,
        upload_lag_max: config.upload_lag_max,
        disk_budget: config.disk_budget,
        scrub_bytes_per_second: config.scrub_bytes_per_second,
    });
    // The queues: admin per core, hand-off per ordered pair of cores.
    let mut admin_senders = Vec::with_capacity(cores);
    let mut setups: Vec<CoreSetup> = Vec::with_capacity(cores);
    for shards in per_core {
        let (sender, receiver) = mpsc::channel(ADMIN_QUEUE);
        admin_senders.push(sender);
        setups.push(CoreSetup {
            admin: receiver,
            inboxes: Vec::new(),
            outboxes: (0..cores).map(|_| None).collect(),
            shards,
        });
    }
    for from in 0..cores {
        for to in 0..cores {
            if from != to {
                let (sender, receiver) = handoff::channel(HANDOFF_QUEUE);
                setups[from].outboxes[to] = Some(sender);
                setups[to].inboxes.push(receiver);
            }
        }
    }
    let http = tiny_http::Server::http(&config.http)
        .map_err(|e| anyhow!("admin API on {}: {e}", config.http))?;
    let http_addr = http
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("the admin API is not on an IP address"))?;
    http::start(
        http,
        http::AdminApi {
            shared: Arc::clone(&shared),
            cores: admin_senders,
        },
        ADMIN_THREADS,
    )
    .context("start the admin API threads")?;
    let ready = announce_when_listening(cores, listen, http_addr, &config.dir)?;
    let setups = Arc::new(Mutex::new(setups.into_iter().map(Some).collect::<Vec<_>>()));
    let executors = ExecutorConfig {
        cpus,
        io_memory_bytes: config.io_memory_bytes,
        name: "quire-pageserver".into(),
        spin_before_park: config.spin_before_park,
    };
    let config = config.clone();
    let (_, results) = run_per_core(&executors, move |index| {
        let setup = setups
            .lock()
            .ok()
            .and_then(|mut all| all.get_mut(index).and_then(Option::take));
        let shared = Arc::clone(&shared);
        let config = config.clone();
        let ready = ready.clone();
        async move {
            let setup = setup.ok_or_else(|| anyhow!("core {index} has no setup"))?;
            run_core(index, setup, shared, &config, listen, ready).await
        }
    })
    .map_err(|e| anyhow!("{e}"))?;
    for result in results {
        result?;
    }
    Ok(())
}

/// The token checker, when the server takes only signed tokens.
fn token_verifier(config: &PageserverConfig) -> Result<Option<TokenVerifier>> {
    let Some(path) = &config.auth_public_key else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(Some(
        TokenVerifier::from_pem(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))?,
    ))
}

/// The object storage runtime, when configured, and who this pageserver
/// is in the generations it claims.
fn start_remote(
    config: &PageserverConfig,
    metrics: &Metrics,
) -> Result<(Option<RemoteStorage>, String)> {
    let remote = match &config.remote {
        Some(remote) => {
            let storage = RemoteStorage::start(remote.clone(), metrics.registry())
                .map_err(|e| anyhow!("object storage: {e}"))?;
            eprintln!("pageserver: object storage at {}", remote.location);
            Some(storage)
        }
        None => None,
    };
    let holder = remote_sync::NodeIdentity::load_or_create(&config.dir)?.holder();
    Ok((remote, holder))
}

/// Prints where the server listens once each of the `cores` has said on
/// the channel returned that it has loaded its shards and listens. The line
/// says the server is ready: a client that connects once it reads it must
/// not be refused.
fn announce_when_listening(
    cores: usize,
    listen: SocketAddr,
    http: SocketAddr,
    dir: &std::path::Path,
) -> Result<std::sync::mpsc::SyncSender<usize>> {
    let line = format!(
        "pageserver: page service on {listen}, admin API on http://{http}, {cores} cores, data in {}",
        dir.display()
    );
    let (ready, listening) = std::sync::mpsc::sync_channel::<usize>(cores);
    std::thread::Builder::new()
        .name("quire-ready".into())
        .spawn(move || {
            // A core that fails before it listens never says so; the
            // process then ends with that core's error, without the line.
            if (0..cores).all(|_| listening.recv().is_ok()) {
                println!("{line}");
            }
        })
        .context("start the readiness thread")?;
    Ok(ready)
}

/// Every shard on disk with the core it runs on: the one its settings name,
/// or, when that core is not running now, the least loaded one (persisted).
fn place_shards(root: &std::path::Path, cores: usize) -> Result<(Placement, Vec<CoreShards>)> {
    let mut placement: HashMap<_, Vec<ShardPlace>> = HashMap::new();
    let mut per_core: Vec<Vec<(PathBuf, ShardSettings)>> = vec![Vec::new(); cores];
    let mut load = vec![0usize; cores];
    for (dir, mut shard) in settings::scan_shards(root)? {
        if shard.core >= cores {
            let core = (0..cores).min_by_key(|&c| (load[c], c)).unwrap_or(0);
            eprintln!(
                "pageserver: shard {} moves from core {} (not running) to core {core}",
                dir.display(),
                shard.core
            );
            shard.core = core;
            files::store(&settings::shard_file(&dir), &shard)?;
        }
        load[shard.core] += 1;
        placement
            .entry(shard.tenant_id()?)
            .or_default()
            .push(ShardPlace {
                identity: shard.identity()?,
                core: shard.core,
            });
        per_core[shard.core].push((dir, shard));
    }
    Ok((placement, per_core))
}

/// One core: its redo pool, its shards loaded, the hand-off queues, the
/// admin queue and the page listener (said on `ready` once it listens).
async fn run_core(
    index: usize,
    setup: CoreSetup,
    shared: Arc<Shared>,
    config: &PageserverConfig,
    listen: SocketAddr,
    ready: std::sync::mpsc::SyncSender<usize>,
) -> Result<()> {
    let mut redo_config = config.redo.clone();
    redo_config.scratch_root = redo_config.scratch_root.join(format!("core-{index}"));
    std::fs::create_dir_all(&redo_config.scratch_root)
        .with_context(|| format!("create {}", redo_config.scratch_root.display()))?;
    let redo = RedoPool::new(redo_config, config.redo_spares, Duration::from_secs(300))
        .await
        .map_err(|e| anyhow!("core {index}: {e}"))?;
    let core = Rc::new(Core {
        index,
        context: CoreContext::with_index_cache(
            config.cache_bytes_per_core,
            config.index_cache_bytes_per_core,
        ),
        redo,
        metrics: shared.metrics.core(index),
        shared,
        shards: RefCell::new(HashMap::new()),
        connections: Cell::new(0),
        handshakes: Cell::new(0),
        attaching: RefCell::default(),
    });
    for (dir, settings) in &setup.shards {
        core.load_shard(dir, settings)
            .await
            .with_context(|| format!("core {index}: load {}", dir.display()))?;
    }
    for inbox in setup.inboxes {
        let core = Rc::clone(&core);
        quire_io::spawn_local(async move {
            let inbox = inbox.connect().await;
            accept::inbox_loop(core, inbox).await;
        })
        .detach();
    }
    let mut outboxes = Vec::with_capacity(setup.outboxes.len());
    for sender in setup.outboxes {
        outboxes.push(match sender {
            Some(sender) => Some(sender.connect().await),
            None => None,
        });
    }
    let admin_core = Rc::clone(&core);
    let mut admin_queue = setup.admin;
    quire_io::spawn_local(async move {
        while let Some(command) = admin_queue.next().await {
            let core = Rc::clone(&admin_core);
            quire_io::spawn_local(admin::handle(core, command)).detach();
        }
    })
    .detach();
    let stats_core = Rc::clone(&core);
    quire_io::spawn_local(publish_stats(stats_core)).detach();
    residence::start_eviction(&core);
    scrub::start(&core);
    let listener =
        TcpListener::bind(listen).with_context(|| format!("core {index}: listen on {listen}"))?;
    // Room for every core's message was made when the channel was; a
    // failed send means the readiness thread is gone, which changes nothing.
    let _ = ready.try_send(index);
    drop(ready);
    accept::accept_loop(core, listener, Rc::new(outboxes)).await;
    Ok(())
}

/// Copies what lives in the core's cells into its gauges, once a second.
async fn publish_stats(core: Rc<Core>) {
    let label = core.metrics.core().to_owned();
    loop {
        let metrics = &core.metrics;
        for (cache, gauges) in [
            (&core.context.cache, &metrics.cache),
            (&core.context.index_cache, &metrics.index_cache),
        ] {
            let stats = cache.borrow().stats();
            for (what, value) in [
                ("hits", stats.hits),
                ("misses", stats.misses),
                ("evictions", stats.evictions),
            ] {
                gauges
                    .with_label_values(&[label.as_str(), what])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        let redo = core.redo.stats();
        for (what, value) in [
            ("process_pages", redo.process_pages),
            ("postgres_records", redo.postgres_records),
            ("rust_records", redo.rust_records),
            ("round_trips", redo.round_trips),
            ("spawned", redo.spawned),
        ] {
            metrics
                .redo_pages
                .with_label_values(&[label.as_str(), what])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        residence::publish(&core, &label);
        let (mut layers, mut l0) = (0usize, 0usize);
        for shard in core.shards.borrow().values() {
            for timeline in shard.timelines.borrow().values() {
                let name = format!("{}/{}", shard.tenant, timeline.id);
                let gauges = &timeline.receiver_gauges;
                for (what, lsn) in [
                    ("ingested", timeline.timeline.ingested_lsn()),
                    ("disk_consistent", timeline.timeline.disk_consistent_lsn()),
                    ("source_end", gauges.source_end.get()),
                ] {
                    metrics
                        .timeline_lsn
                        .with_label_values(&[label.as_str(), name.as_str(), what])
                        .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
                }
                if let Some(lsn) = gauges.remote_consistent.get() {
                    metrics
                        .timeline_lsn
                        .with_label_values(&[label.as_str(), name.as_str(), "remote_consistent"])
                        .set(i64::try_from(lsn.0).unwrap_or(i64::MAX));
                }
                let ingested = timeline.timeline.ingested_lsn();
                for (what, value) in [
                    ("wal_bytes_received", gauges.bytes.get()),
                    (
                        "lag_bytes",
                        gauges.source_end.get().0.saturating_sub(ingested.0),
                    ),
                    ("held_by_l0_debt", u64::from(gauges.held.get())),
                    ("held_by_uploads", u64::from(gauges.held_by_uploads.get())),
                ] {
                    metrics
                        .ingest
                        .with_label_values(&[label.as_str(), name.as_str(), what])
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
                let map = timeline.timeline.layer_map();
                layers += map.len();
                l0 += map
                    .layers()
                    .iter()
                    .filter(|l| quire_shard::compact::is_l0(l.name()))
                    .count();
            }
        }
        for (kind, value) in [("all", layers), ("l0", l0)] {
            metrics
                .layers
                .with_label_values(&[label.as_str(), kind])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        quire_io::sleep(Duration::from_secs(1)).await;
    }
}

/// The page service's address with its port chosen, when the one given is
/// 0 (the cores must all bind the same port).
fn resolve_port(listen: &str) -> Result<SocketAddr> {
    let address = listen
        .to_socket_addrs()
        .with_context(|| format!("resolve {listen}"))?
        .next()
        .ok_or_else(|| anyhow!("{listen} resolves to no address"))?;
    if address.port() != 0 {
        return Ok(address);
    }
    let probe = std::net::TcpListener::bind(address).with_context(|| format!("bind {address}"))?;
    let chosen = probe.local_addr().context("local address")?;
    drop(probe);
    Ok(chosen)
}

/// Holds `DIR/pageserver.lock` exclusively for the process's life: two
/// pageservers on one directory would corrupt it.
fn lock_dir(dir: &std::path::Path) -> Result<File> {
    let path = dir.join("pageserver.lock");
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "{} is locked: another pageserver uses this directory",
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("lock {}", path.display()))
        }
    }
}
