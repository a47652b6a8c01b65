//! The servers of a local cluster as background processes: each
//! safekeeper (`quire safekeeper`) and the pageserver (`quire pageserver`)
//! is this same binary started detached, its log under `DIR/logs`, its pid
//! under `DIR/run`, found again by its data directory in its command
//! line, and stopped within a bound.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use quire_cluster::PgInstall;

use super::cluster_file::{Layout, LocalCluster, PageserverEntry, SafekeeperEntry};
use crate::admin::call_api;
use crate::daemon::{self, Stopped};

/// How long a safekeeper may take to listen.
const SAFEKEEPER_READY: Duration = Duration::from_secs(30);
/// How long the pageserver may take to answer its admin API (it loads its
/// tenants first).
const PAGESERVER_READY: Duration = Duration::from_secs(120);
/// How long a server may take to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// One server process of the cluster.
#[derive(Clone, Debug)]
pub struct Server {
    /// `sk1`, `pageserver`.
    pub name: String,
    /// Its data directory: also how its process is recognised.
    pub data: PathBuf,
    /// Its pid file.
    pub pid_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Server {
    /// Its pid while it runs.
    pub fn running(&self) -> Option<u32> {
        daemon::running(&self.pid_file, &self.data)
    }

    /// Stops it (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&self) -> Result<Stopped> {
        match self.running() {
            None => Ok(Stopped::WasDown),
            Some(pid) => daemon::stop(pid, &self.data, Signal::SIGTERM, STOP_GRACE),
        }
    }
}

/// Safekeeper `id`.
pub fn safekeeper(layout: &Layout, id: u32) -> Server {
    let name = format!("sk{id}");
    Server {
        data: layout.safekeeper_data(id),
        pid_file: layout.pid_file(&name),
        log: layout.log(&name),
        name,
    }
}

/// The pageserver.
pub fn pageserver(layout: &Layout) -> Server {
    Server {
        name: "pageserver".to_owned(),
        data: layout.pageserver_data(),
        pid_file: layout.pid_file("pageserver"),
        log: layout.log("pageserver"),
    }
}

/// Every server of `cluster`, safekeepers first.
pub fn all(layout: &Layout, cluster: &LocalCluster) -> Vec<Server> {
    let mut servers: Vec<Server> = cluster
        .safekeepers
        .iter()
        .map(|s| safekeeper(layout, s.id))
        .collect();
    servers.push(pageserver(layout));
    servers
}

/// How long a port may still answer after its server exited (io_uring
/// tears a dead process's sockets down asynchronously).
const PORT_RELEASE: Duration = Duration::from_secs(10);

/// Fails if something listens on `address` (`127.0.0.1:PORT`) for longer
/// than [`PORT_RELEASE`]: `what` names whose it should be. A bind would be
/// the wrong probe: our servers bind with `SO_REUSEPORT`, and the
/// connections they closed a moment ago (in `TIME_WAIT`) refuse a plain
/// bind for a minute but not theirs. A port taken otherwise makes the
/// server exit, and its log says so.
pub fn check_free(address: &str, what: &str) -> Result<()> {
    let began = Instant::now();
    while daemon::listens(address) {
        if began.elapsed() >= PORT_RELEASE {
            bail!("{address} ({what}) is taken by another process: free it, or make a new cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts the safekeepers, each naming the others as peers, and waits
/// until each listens.
pub fn start_safekeepers(layout: &Layout, safekeepers: &[SafekeeperEntry]) -> Result<()> {
    let binary = std::env::current_exe().context("find the quire binary")?;
    for entry in safekeepers {
        check_free(&entry.listen, &format!("safekeeper {}", entry.id))?;
    }
    for entry in safekeepers {
        let server = safekeeper(layout, entry.id);
        std::fs::create_dir_all(&server.data)
            .with_context(|| format!("create {}", server.data.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("safekeeper")
            .args(["--id", &entry.id.to_string(), "--listen", &entry.listen])
            .arg("--data")
            .arg(&server.data);
        for peer in safekeepers.iter().filter(|p| p.id != entry.id) {
            command.args(["--peer", &format!("{}={}", peer.id, peer.listen)]);
        }
        let mut child = daemon::spawn_detached(&mut command, &server.log)?;
        daemon::write_pid(&server.pid_file, child.id())?;
        let address = entry.listen.clone();
        daemon::wait_ready(
            &mut child,
            &format!("safekeeper {} on {address}", entry.id),
            &server.log,
            SAFEKEEPER_READY,
            || daemon::listens(&address),
        )?;
    }
    Ok(())
}

/// Starts the pageserver (its wal-redo processes from `install`) and waits
/// until its admin API answers.
pub fn start_pageserver(
    layout: &Layout,
    entry: &PageserverEntry,
    install: &PgInstall,
) -> Result<()> {
    check_free(&entry.listen, "the page service")?;
    check_free(&entry.http, "the pageserver's admin API")?;
    let binary = std::env::current_exe().context("find the quire binary")?;
    let server = pageserver(layout);
    let mut command = Command::new(&binary);
    command
        .arg("pageserver")
        .arg("--dir")
        .arg(&server.data)
        .args(["--listen", &entry.listen, "--http", &entry.http])
        .args(["--cores", &entry.cores.to_string()])
        .args(["--cache-mib", &entry.cache_mib.to_string()])
        .args(["--index-cache-mib", "16"])
        .args(
            entry
                .remote
                .iter()
                .flat_map(|url| ["--remote", url.as_str()]),
        )
        .env("QUIRE_PG_PREFIX", install.prefix());
    let mut child = daemon::spawn_detached(&mut command, &server.log)?;
    daemon::write_pid(&server.pid_file, child.id())?;
    let http = entry.http.clone();
    daemon::wait_ready(
        &mut child,
        &format!("the pageserver (admin API {http})"),
        &server.log,
        PAGESERVER_READY,
        || {
            call_api(
                &http,
                None,
                "GET",
                "/v1/status",
                None,
                Duration::from_secs(1),
            )
            .is_ok()
        },
    )?;
    Ok(())
}

/// Stops every server of `servers` that runs, in order; prints each.
pub fn stop_all(servers: &[Server]) -> Result<()> {
    let mut failed = Vec::new();
    for server in servers {
        match server.stop() {
            Ok(how) => println!("{}: {}", server.name, describe(how)),
            Err(error) => {
                println!("{}: {error:#}", server.name);
                failed.push(server.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not stop {}", failed.join(", "));
    }
    Ok(())
}

/// How a stop went, in words.
pub fn describe(how: Stopped) -> &'static str {
    match how {
        Stopped::WasDown => "was not running",
        Stopped::Exited => "stopped",
        Stopped::Killed => "did not stop in time: killed (SIGKILL)",
    }
}
