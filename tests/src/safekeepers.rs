//! Safekeepers for full-stack tests: `quire safekeeper` processes on free
//! loopback ports, the timeline's bootstrap and election against a running
//! Postgres, status calls, and byte comparisons of their WAL.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_postgres::Lsn;
use quire_postgres::wal::stream::WalStreamDecoder;
use quire_safekeeper::compute_control;
use quire_safekeeper::election::Won;
use quire_safekeeper::wire::{Message, StorageHealth, TimelineKey};

/// The timeline the tests put on the safekeepers.
pub const KEY: TimelineKey = TimelineKey {
    tenant: [0x11; 16],
    timeline: [0x22; 16],
};

/// `KEY` as `quire verify --timeline` takes it.
pub const KEY_TEXT: &str = "11111111111111111111111111111111/22222222222222222222222222222222";

const SEGMENT: u64 = 16 << 20;

/// One `quire safekeeper` process.
pub struct Safekeeper {
    binary: PathBuf,
    /// Its id (standby name `sk<id>`).
    pub id: u32,
    /// Its `host:port`.
    pub address: String,
    /// Its data directory.
    pub data: PathBuf,
    peers: Vec<String>,
    /// More arguments for `quire safekeeper` (limits, say).
    pub args: Vec<String>,
    /// Where its standard error goes (appended) when set; inherited
    /// otherwise.
    pub log: Option<PathBuf>,
    child: Option<Child>,
}

impl Safekeeper {
    /// Starts it and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("safekeeper")
            .args(["--id", &self.id.to_string(), "--listen", &self.address])
            .arg("--data")
            .arg(&self.data)
            .stdout(Stdio::null());
        for peer in &self.peers {
            command.args(["--peer", peer]);
        }
        command.args(&self.args);
        if let Some(log) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open {}", log.display()))?;
            command.stderr(file);
        }
        self.child = Some(command.spawn().context("start a safekeeper")?);
        let began = Instant::now();
        while std::net::TcpStream::connect(&self.address).is_err() {
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "safekeeper {} does not listen",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// What it wrote to its log file so far (empty without one).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it was started and has not exited (a crash shows here).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_address() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Runs `task` on a single executor (the safekeeper client is async).
pub fn on_executor<T, F, Fut>(task: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    quire_io::run_local(&quire_io::LocalConfig::default(), task).expect("task")
}

/// `(term, flush, commit)` of the test timeline on the safekeeper at `address`.
pub fn status(address: &str, key: TimelineKey) -> Result<(u64, Lsn, Lsn)> {
    status_as(address, key, None)
}

/// `status`, authenticating with `token`.
pub fn status_as(address: &str, key: TimelineKey, token: Option<&str>) -> Result<(u64, Lsn, Lsn)> {
    let address = address.to_owned();
    let token = token.map(str::to_owned);
    on_executor(move || async move {
        let mut conn =
            quire_safekeeper::server::conn::FramedConn::connect_as(&address, token.as_deref())
                .await?;
        match conn.call(&Message::GetStatus { key }).await? {
            Message::Status {
                term,
                flush,
                commit,
                ..
            } => Ok((term, flush, commit)),
            other => bail!("status: {other:?}"),
        }
    })
}

/// Timeline `key`'s storage health on the safekeeper at `address`.
pub fn health(address: &str, key: TimelineKey) -> Result<StorageHealth> {
    let address = address.to_owned();
    on_executor(move || async move {
        let mut conn = quire_safekeeper::server::conn::FramedConn::connect(&address).await?;
        match conn.call(&Message::GetStatus { key }).await? {
            Message::Status { health, .. } => Ok(health),
            other => bail!("status: {other:?}"),
        }
    })
}

/// Bytes `[from, to)` of the WAL segment files in `dir`.
pub fn wal_bytes(dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<u8>> {
    let segment = SEGMENT;
    let mut out = Vec::new();
    let mut at = from.0;
    while at < to.0 {
        let number = at / segment;
        let name = format!("{:08X}{:08X}{:08X}", 1, number / 256, number % 256);
        let bytes = std::fs::read(dir.join(&name)).with_context(|| format!("read {name}"))?;
        let start = usize::try_from(at % segment)?;
        let end = usize::try_from((to.0.min((number + 1) * segment)) - number * segment)?;
        out.extend_from_slice(&bytes[start..end]);
        at = (number + 1) * segment;
    }
    Ok(out)
}

/// Three safekeepers (the `quire` binary at `binary`) on free loopback
/// ports, each naming the others.
pub fn start_safekeepers(binary: &Path, root: &Path) -> Result<(Vec<Safekeeper>, Vec<String>)> {
    start_safekeepers_with(binary, root, &|_| Vec::new())
}

/// [`start_safekeepers`] with more arguments for safekeeper `id` (1 to 3):
/// `args(id)`.
pub fn start_safekeepers_with(
    binary: &Path,
    root: &Path,
    args: &dyn Fn(u32) -> Vec<String>,
) -> Result<(Vec<Safekeeper>, Vec<String>)> {
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect::<Result<_>>()?;
    let mut safekeepers: Vec<Safekeeper> = (0..3)
        .map(|i| Safekeeper {
            binary: binary.to_owned(),
            id: i + 1,
            address: addresses[i as usize].clone(),
            data: root.join(format!("sk{}", i + 1)),
            peers: (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("{}={}", j + 1, addresses[j as usize]))
                .collect(),
            args: args(i + 1),
            log: None,
            child: None,
        })
        .collect();
    for sk in &mut safekeepers {
        sk.start()?;
    }
    Ok((safekeepers, addresses))
}

/// Waits for each safekeeper to flush and commit `flushed`, then compares
/// its WAL with the compute's `pg_wal`.
pub fn check_identical_wal(
    safekeepers: &[Safekeeper],
    key: TimelineKey,
    pg_wal: &Path,
    wal_start: Lsn,
    flushed: Lsn,
) -> Result<()> {
    let reference = wal_bytes(pg_wal, wal_start, flushed)?;
    for sk in safekeepers {
        let began = Instant::now();
        loop {
            let (term, flush, commit) = status(&sk.address, key)?;
            if flush >= flushed && commit >= flushed {
                println!("sk{}: term {term}, flush {flush}, commit {commit}", sk.id);
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "sk{} stays at flush {flush} commit {commit}, the compute flushed {flushed}",
                sk.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = sk
            .data
            .join("11111111111111111111111111111111")
            .join("22222222222222222222222222222222");
        let theirs = wal_bytes(&dir, wal_start, flushed)?;
        ensure!(
            theirs == reference,
            "sk{}'s WAL differs from the compute's in {wal_start}..{flushed}",
            sk.id
        );
    }
    println!(
        "all 3 safekeepers hold the compute's WAL {wal_start}..{flushed} byte for byte ({} bytes)",
        reference.len()
    );
    Ok(())
}

/// Options of a compute whose commits wait for two of the safekeepers
/// `sk1`..`sk3` (Postgres' own quorum commit, `ANY 2`).
pub fn compute_options() -> PgClusterOptions {
    PgClusterOptions::default()
        .setting("synchronous_standby_names", "'ANY 2 (sk1, sk2, sk3)'")
        .setting("max_wal_senders", "10")
        .setting("max_replication_slots", "10")
}

/// Creates the test timeline on the safekeepers at the start of the
/// segment holding Postgres' insert position and elects `pg` (which must
/// list `sk1`..`sk3` in `synchronous_standby_names`); returns the outcome.
pub fn bootstrap(pg: &PgCluster, addresses: &[String]) -> Result<Won> {
    bootstrap_as(pg, addresses, None)
}

/// `bootstrap`, authenticating with `token` (scope `compute_control`).
pub fn bootstrap_as(pg: &PgCluster, addresses: &[String], token: Option<&str>) -> Result<Won> {
    let system_id: u64 = pg
        .psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )?
        .trim()
        .parse()?;
    let insert_lsn: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .parse()?;
    let wal_start = Lsn(insert_lsn.0 / SEGMENT * SEGMENT);
    let compute = format!("127.0.0.1:{}", pg.port());
    let addresses = addresses.to_vec();
    let token = token.map(str::to_owned);
    let won = on_executor(move || async move {
        let token = token.as_deref();
        compute_control::create_timeline(&addresses, token, KEY, wal_start, 16 << 20, system_id)
            .await?;
        anyhow::Ok(compute_control::elect(&addresses, token, KEY, &compute, 16 << 20).await?)
    })?;
    ensure!(
        won.start == wal_start,
        "the first election starts at the timeline's start"
    );
    Ok(won)
}

/// Waits until every safekeeper has flushed and committed `lsn`, then
/// checks they hold the same WAL bytes from `from` to `lsn`.
pub fn check_safekeepers_agree(safekeepers: &[Safekeeper], from: Lsn, lsn: Lsn) -> Result<()> {
    let mut reference: Option<Vec<u8>> = None;
    for sk in safekeepers {
        let began = Instant::now();
        loop {
            let (_, flush, commit) = status(&sk.address, KEY)?;
            if flush >= lsn && commit >= lsn {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(60),
                "sk{} stays at flush {flush} commit {commit}, short of {lsn}",
                sk.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let bytes = wal_bytes(&sk.data.join(KEY_TEXT), from, lsn)?;
        match &reference {
            None => reference = Some(bytes),
            Some(first) => ensure!(
                *first == bytes,
                "sk{}'s WAL differs from sk{}'s in {from}..{lsn}",
                sk.id,
                safekeepers[0].id
            ),
        }
    }
    Ok(())
}

/// A byte inside a record (not page-header or alignment padding, which no
/// checksum covers) near `near`, found by decoding the WAL from `start`.
pub fn byte_inside_a_record(dir: &Path, start: Lsn, end: Lsn, near: Lsn) -> Result<Lsn> {
    let bytes = wal_bytes(dir, start, end)?;
    let mut decoder = WalStreamDecoder::new(start, u32::try_from(SEGMENT)?);
    decoder.feed(&bytes);
    while let Some(record) = decoder.next_record().map_err(|e| anyhow::anyhow!("{e}"))? {
        // A byte of the record's header, in a record whose header lies in
        // its first page.
        let at = Lsn(record.start.0 + 12);
        if at >= near && record.end < end && record.start.0 % 8192 + 24 <= 8192 {
            return Ok(at);
        }
    }
    anyhow::bail!("no whole record after {near} below {end}")
}

/// Flips a bit of the byte at `at` in the WAL segment files in `dir`.
pub fn flip_wal_byte(dir: &Path, at: Lsn) -> Result<()> {
    let number = at.0 / SEGMENT;
    let file = dir.join(format!("{:08X}{:08X}{:08X}", 1, number >> 8, number & 0xFF));
    let mut bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
    let offset = usize::try_from(at.0 % SEGMENT)?;
    bytes[offset] ^= 0x04;
    std::fs::write(&file, &bytes)?;
    println!(
        "flipped a bit of byte {offset:#x} of {} ({at})",
        file.display()
    );
    Ok(())
}

/// `quire elect` (the binary at `binary`) for a compute at `127.0.0.1:9`
/// (nothing listens there): what it printed and the start LSN.
pub fn elect_elsewhere(binary: &Path, addresses: &[String]) -> Result<(String, Lsn)> {
    let elect = Command::new(binary)
        .arg("elect")
        .arg("--safekeepers")
        .arg(addresses.join(","))
        .args(["--timeline", KEY_TEXT])
        .args(["--compute", "127.0.0.1:9"])
        .output()?;
    let said = String::from_utf8_lossy(&elect.stdout).trim().to_owned();
    ensure!(
        elect.status.success(),
        "quire elect ({:?}): {said}{}",
        elect.status,
        String::from_utf8_lossy(&elect.stderr)
    );
    let start: Lsn = said
        .rsplit(' ')
        .next()
        .context("the start LSN")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((said, start))
}
