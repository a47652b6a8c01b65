//! Throwaway Postgres clusters on loopback.
//!
//! A [`PgCluster`] is a data directory made by `initdb` in a fresh temporary
//! directory, run by the unprivileged user on a free loopback port, with its
//! Unix socket inside that directory. Start and stop are bounded in time.
//! Dropping it stops the server at once and removes the directory, except
//! when the thread is panicking (a failing test) or [`PgCluster::keep`] was
//! called: then the directory and the server log stay, and their paths and
//! the log's tail are printed.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bounded::{run_bounded, run_checked};
use crate::install::PgInstall;
use crate::run_as::RunAs;

/// The superuser every test cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// How a cluster is created and run.
#[derive(Clone, Debug)]
pub struct PgClusterOptions {
    /// Extra `postgresql.conf` settings, written verbatim as `name = value`.
    pub settings: Vec<(String, String)>,
    /// Extra `initdb` arguments (e.g. `--wal-segsize=1`).
    pub initdb_args: Vec<String>,
    /// Bound on `initdb`.
    pub init_timeout: Duration,
    /// Bound on a start (`pg_ctl start -w`).
    pub start_timeout: Duration,
    /// Bound on a stop (`pg_ctl stop -w`).
    pub stop_timeout: Duration,
    /// Bound on each client command (`psql`).
    pub query_timeout: Duration,
    /// The port to listen on (default: a free one, probed).
    pub port: Option<u16>,
}

impl Default for PgClusterOptions {
    fn default() -> Self {
        PgClusterOptions {
            settings: Vec::new(),
            initdb_args: Vec::new(),
            init_timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(60),
            query_timeout: Duration::from_secs(300),
            port: None,
        }
    }
}

impl PgClusterOptions {
    /// Adds a `postgresql.conf` setting; `value` is written as given, so quote
    /// strings (`"'quire_smgr_count'"`).
    #[must_use]
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Listens on `port` (one the caller must know before the cluster
    /// exists: a compute's address is announced to its safekeepers first).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds an `initdb` argument.
    #[must_use]
    pub fn initdb_arg(mut self, arg: &str) -> Self {
        self.initdb_args.push(arg.to_owned());
        self
    }
}

/// A Postgres cluster in a temporary directory, owned by this value.
#[derive(Debug)]
pub struct PgCluster {
    install: PgInstall,
    run_as: RunAs,
    options: PgClusterOptions,
    /// The temporary directory holding `data/`, the socket and `server.log`.
    root: PathBuf,
    port: u16,
    running: bool,
    keep: bool,
}

/// How many ports to try when another process takes ours between our probe
/// and the server's bind.
const START_ATTEMPTS_MAX: u32 = 3;

impl PgCluster {
    /// Runs `initdb` into a new temporary directory and writes the settings.
    /// The cluster is not started.
    pub fn create(install: &PgInstall, options: PgClusterOptions) -> Result<PgCluster> {
        let mut cluster = PgCluster::in_new_root(install, options)?;
        let data = cluster.datadir();
        run_checked(
            cluster
                .run_as
                .command(cluster.install.bin("initdb"))
                .arg("--pgdata")
                .arg(&data)
                .args(["--username", SUPERUSER, "--auth", "trust", "--no-sync"])
                .args(["--encoding", "UTF8", "--locale", "C"])
                .args(&cluster.options.initdb_args),
            cluster.options.init_timeout,
        )
        .context("initdb")?;
        cluster.port = cluster.options.port.map_or_else(free_port, Ok)?;
        cluster.write_settings()?;
        Ok(cluster)
    }

    /// A cluster on a data directory `fill` writes into `data/` of a new
    /// temporary directory (a basebackup unpacked, a copy): made the
    /// server user's, mode 0700, with the settings appended to its
    /// `postgresql.conf` (created if missing). The cluster is not started.
    pub fn adopt(
        install: &PgInstall,
        options: PgClusterOptions,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PgCluster> {
        let mut cluster = PgCluster::in_new_root(install, options)?;
        let data = cluster.datadir();
        fill(&data).context("fill the data directory")?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", data.display()))?;
        cluster.run_as.give_tree(&data)?;
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            fs::write(&conf, b"").with_context(|| format!("create {}", conf.display()))?;
            cluster.run_as.give(&conf)?;
        }
        cluster.port = cluster.options.port.map_or_else(free_port, Ok)?;
        cluster.write_settings()?;
        Ok(cluster)
    }

    /// A cluster value over a new temporary directory (the server user's),
    /// with no data directory yet.
    fn in_new_root(install: &PgInstall, options: PgClusterOptions) -> Result<PgCluster> {
        let run_as = RunAs::detect()?;
        let root = tempfile::Builder::new()
            .prefix("quire-pg-")
            .tempdir()
            .context("create a temporary directory for a Postgres cluster")?
            .keep();
        run_as.give(&root)?;
        Ok(PgCluster {
            install: install.clone(),
            run_as,
            options,
            root,
            port: 0,
            running: false,
            keep: false,
        })
    }

    /// The data directory.
    pub fn datadir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The installation this cluster runs.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// Keeps the directory and log after drop, e.g. for a demo to point at.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) -> Result<()> {
        for attempt in 1..=START_ATTEMPTS_MAX {
            let log_len = fs::metadata(self.log_path()).map_or(0, |m| m.len());
            let output = run_bounded(
                self.run_as
                    .command(self.install.bin("pg_ctl"))
                    .arg("start")
                    .arg("--pgdata")
                    .arg(self.datadir())
                    .arg("--log")
                    .arg(self.log_path())
                    .args(["--wait", "--timeout"])
                    .arg(self.options.start_timeout.as_secs().to_string()),
                self.options.start_timeout + Duration::from_secs(5),
            )
            .context("pg_ctl start")?;
            if output.status.success() {
                self.running = true;
                return Ok(());
            }
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let new_log = log
                .get(usize::try_from(log_len).unwrap_or(0)..)
                .unwrap_or("");
            if attempt < START_ATTEMPTS_MAX && new_log.contains("could not bind") {
                // Another process took the port between our pick and the
                // bind: not the server's error. Its FATAL would fail a later
                // check of the log, so the failed attempt's lines go (the
                // postmaster has exited; nothing else writes the file).
                if let Ok(file) = fs::OpenOptions::new().write(true).open(self.log_path()) {
                    let _ = file.set_len(log_len);
                }
                self.port = free_port()?;
                self.write_settings()?;
                continue;
            }
            bail!(
                "pg_ctl start failed ({}): {}\nserver log {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                self.log_path().display(),
                tail(new_log, 30)
            );
        }
        bail!("could not find a free port in {START_ATTEMPTS_MAX} attempts")
    }

    /// Stops the server cleanly (a shutdown checkpoint) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_with("fast")
    }

    /// Stops the server without a checkpoint, as a crash would.
    pub fn stop_immediate(&mut self) -> Result<()> {
        self.stop_with("immediate")
    }

    /// A clean stop followed by a start.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    fn stop_with(&mut self, mode: &str) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        run_checked(
            self.run_as
                .command(self.install.bin("pg_ctl"))
                .arg("stop")
                .arg("--pgdata")
                .arg(self.datadir())
                .args(["--mode", mode, "--wait", "--timeout"])
                .arg(self.options.stop_timeout.as_secs().to_string()),
            self.options.stop_timeout + Duration::from_secs(5),
        )
        .with_context(|| format!("pg_ctl stop --mode {mode}"))?;
        self.running = false;
        Ok(())
    }

    /// A client program of the install (`psql`, `pgbench`, ...) set up to
    /// connect to this cluster as the superuser over loopback TCP.
    pub fn client(&self, program: &str) -> Command {
        let mut command = Command::new(self.install.bin(program));
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", "postgres")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        command
    }

    /// Runs `sql` in `database` with psql, stopping at the first error, and
    /// returns the output unaligned, tuples only (`|` between columns).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let output = run_checked(
            self.client("psql")
                .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
                .args([
                    "--set",
                    "ON_ERROR_STOP=1",
                    "--dbname",
                    database,
                    "--command",
                    sql,
                ]),
            self.options.query_timeout,
        )
        .with_context(|| format!("psql: {}", first_line(sql)))?;
        String::from_utf8(output.stdout).context("read psql output")
    }

    /// Runs a multi-statement SQL script in `database` with psql (each
    /// statement in its own transaction unless the script groups them),
    /// stopping at the first error; returns the output as [`PgCluster::psql`] does.
    pub fn psql_script(&self, database: &str, script: &str) -> Result<String> {
        static SCRIPTS: AtomicU64 = AtomicU64::new(0);
        let n = SCRIPTS.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!("script-{n}.sql"));
        fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
        let output = run_checked(
            self.client("psql")
                .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
                .args(["--set", "ON_ERROR_STOP=1", "--dbname", database, "--file"])
                .arg(&path),
            self.options.query_timeout,
        )
        .with_context(|| format!("psql script starting {}", first_line(script)));
        let _ = fs::remove_file(&path);
        String::from_utf8(output?.stdout).context("read psql output")
    }

    /// Server log lines reporting an ERROR, FATAL or PANIC that contain none
    /// of `expected`. Full-stack tests fail when this is not empty.
    pub fn unexpected_log_errors(&self, expected: &[&str]) -> Result<Vec<String>> {
        let log = fs::read_to_string(self.log_path())
            .with_context(|| format!("read {}", self.log_path().display()))?;
        Ok(log
            .lines()
            .filter(|line| {
                ["ERROR:", "FATAL:", "PANIC:"]
                    .iter()
                    .any(|level| line.contains(level))
            })
            .filter(|line| !expected.iter().any(|allowed| line.contains(allowed)))
            .map(str::to_owned)
            .collect())
    }

    fn write_settings(&self) -> Result<()> {
        let mut text = String::from("\n# quire-cluster settings\n");
        // The last occurrence of a setting wins, so rewriting the port on a
        // retry only appends.
        let _ = writeln!(text, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(text, "port = {}", self.port);
        let _ = writeln!(text, "unix_socket_directories = '{}'", self.root.display());
        for (name, value) in &self.options.settings {
            let _ = writeln!(text, "{name} = {value}");
        }
        let conf = self.datadir().join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("open {}", conf.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("write {}", conf.display()))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if self.running {
            // Best effort: a drop cannot report an error, and the directory
            // (with the log saying why) is kept below if we are failing.
            let _ = self.stop_with("immediate");
        }
        if failing || self.keep {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            eprintln!(
                "quire-cluster: kept Postgres cluster {} (server log {}); last lines:\n{}",
                self.root.display(),
                self.log_path().display(),
                tail(&log, 40)
            );
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// A loopback port that was free a moment ago.
/// A free loopback port (probed: free when asked, not reserved).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probe for a free loopback port")?;
    Ok(listener
        .local_addr()
        .context("read the probed port")?
        .port())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}
