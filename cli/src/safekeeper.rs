//! `quire safekeeper`: runs one safekeeper until killed.
//!
//! It serves the safekeeper protocol (docs/safekeeper-protocol.md) on
//! `--listen`, keeps its timelines under `--data`, talks to the other
//! safekeepers named by `--peer ID=HOST:PORT`, and streams WAL from each
//! timeline's elected compute as standby `sk<ID>`. One executor,
//! pinned to `--cpu` (default: the id modulo the CPUs). Its limits
//! (`--max-connections`, `--max-timelines`, the `--*-timeout-ms` of each
//! connection) default to the constants of `server::limits`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use quire_io::{ExecutorConfig, run_per_core};
use quire_safekeeper::server::auth::Auth;
use quire_safekeeper::server::conn::Deadlines;
use quire_safekeeper::server::limits::{self, Limits};
use quire_safekeeper::server::peers::Peer;
use quire_safekeeper::server::{Config, Server};

use crate::auth_files::{read_token, read_verifier};

/// Options of `quire safekeeper`.
#[derive(Args, Clone)]
pub struct SafekeeperArgs {
    /// This safekeeper's id (its standby name is `sk<ID>`).
    #[arg(long)]
    id: u32,
    /// `host:port` to listen on.
    #[arg(long)]
    listen: String,
    /// Directory of its timelines.
    #[arg(long)]
    data: PathBuf,
    /// Another safekeeper, `ID=HOST:PORT` (repeat).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Postgres user for replication connections.
    #[arg(long, default_value = quire_cluster::SUPERUSER)]
    pg_user: String,
    /// CPU to run on.
    #[arg(long)]
    cpu: Option<usize>,
    /// Check every connection's token with this Ed25519 public key (PEM);
    /// without it connections are not authenticated, which is allowed on a
    /// loopback address only (see --allow-unauthenticated).
    #[arg(long)]
    auth_public_key: Option<PathBuf>,
    /// The token this safekeeper shows its peers (scope `safekeeper_peer`,
    /// naming its id), when they check tokens.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address.
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Connections served at once; more are refused with an error frame.
    #[arg(long, default_value_t = limits::MAX_CONNECTIONS_DEFAULT)]
    max_connections: usize,
    /// Timelines kept; more are refused.
    #[arg(long, default_value_t = limits::MAX_TIMELINES_DEFAULT)]
    max_timelines: usize,
    /// Milliseconds from accepting a connection to its whole first frame.
    #[arg(long, default_value_t = millis(limits::HANDSHAKE_TIMEOUT_DEFAULT))]
    handshake_timeout_ms: u64,
    /// Milliseconds from a frame's first byte to its last.
    #[arg(long, default_value_t = millis(limits::FRAME_TIMEOUT_DEFAULT))]
    frame_timeout_ms: u64,
    /// Milliseconds a connection may wait between requests.
    #[arg(long, default_value_t = millis(limits::IDLE_TIMEOUT_DEFAULT))]
    idle_timeout_ms: u64,
    /// Milliseconds the peer may take to read one frame sent to it.
    #[arg(long, default_value_t = millis(limits::WRITE_TIMEOUT_DEFAULT))]
    write_timeout_ms: u64,
}

/// Whether `listen` binds only to the loopback interface.
fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    listen
        .to_socket_addrs()
        .is_ok_and(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SafekeeperArgs {
    fn limits(&self) -> Result<Limits> {
        if self.max_connections == 0 || self.max_timelines == 0 {
            bail!("--max-connections and --max-timelines must be at least 1");
        }
        let timeout = |name: &str, ms: u64| {
            if ms == 0 {
                bail!("--{name} must be at least 1 ms");
            }
            Ok(Duration::from_millis(ms))
        };
        Ok(Limits {
            max_connections: self.max_connections,
            max_timelines: self.max_timelines,
            deadlines: Deadlines {
                handshake: timeout("handshake-timeout-ms", self.handshake_timeout_ms)?,
                frame: timeout("frame-timeout-ms", self.frame_timeout_ms)?,
                idle: timeout("idle-timeout-ms", self.idle_timeout_ms)?,
                write: timeout("write-timeout-ms", self.write_timeout_ms)?,
            },
        })
    }
}

fn parse_peer(text: &str) -> Result<Peer> {
    let (id, address) = text
        .split_once('=')
        .with_context(|| format!("--peer {text}: expected ID=HOST:PORT"))?;
    Ok(Peer {
        id: id
            .parse()
            .with_context(|| format!("--peer {text}: bad id"))?,
        address: address.to_owned(),
    })
}

pub fn run(args: &SafekeeperArgs) -> Result<()> {
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<Result<Vec<_>>>()?;
    let config = Config {
        id: args.id,
        listen: args.listen.clone(),
        data: args.data.clone(),
        peers,
        pg_user: args.pg_user.clone(),
        auth: Auth::new(read_verifier(args.auth_public_key.as_deref())?),
        peer_token: read_token(args.auth_token_file.as_deref())?,
        limits: args.limits()?,
    };
    if !config.auth.required() {
        if !is_loopback(&args.listen) && !args.allow_unauthenticated {
            bail!(
                "--listen {} is not a loopback address: give --auth-public-key (see `quire token`), or --allow-unauthenticated",
                args.listen
            );
        }
        eprintln!(
            "safekeeper {}: authentication is off: any client that reaches {} can run elections and report flushes (give --auth-public-key to check tokens)",
            args.id, args.listen
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpu = args.cpu.unwrap_or(args.id as usize % cpus);
    let executor = ExecutorConfig {
        cpus: vec![cpu],
        io_memory_bytes: 4 << 20,
        name: format!("quire-sk{}", args.id),
        spin_before_park: None,
    };
    let (_, mut results) = run_per_core(&executor, move |_| {
        let config = config.clone();
        async move {
            let server = Server::open(config).await.map_err(|e| anyhow!("{e}"))?;
            server.serve().await.context("serve")
        }
    })
    .map_err(|e| anyhow!("{e}"))?;
    match results.pop() {
        Some(result) => result,
        None => bail!("the executor returned nothing"),
    }
}
