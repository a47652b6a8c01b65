//! The compute start sequence (`quire compute start`, and the compute of
//! `quire start` and `quire branch create`): the election on the
//! safekeepers, a bounded wait until the pageserver has ingested up to the
//! election's start LSN, the basebackup at that LSN unpacked into an empty
//! data directory, the settings appended, and Postgres started as the
//! unprivileged user until it answers a query. Each step's time is
//! printed and returned.
//!
//! It must not touch a data directory that holds anything: a compute's
//! files come from the basebackup alone.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use quire_cluster::{PgInstall, RunAs, run_checked};
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::election::Won;
use quire_safekeeper::wire::TimelineKey;
use serde_json::Value;

use super::config::{ComputeSettings, pg_hba_conf, postgresql_conf};
use super::postgres;
use crate::admin::call_api;
use crate::basebackup::{Request, unpack_into};

/// Where a compute's pieces are: the safekeepers and the pageserver
/// holding its timeline.
#[derive(Clone, Debug)]
pub struct Target {
    /// The safekeepers, `host:port`, in member order.
    pub safekeepers: Vec<String>,
    /// A `compute_control` token, when the safekeepers check tokens.
    pub safekeeper_token: Option<String>,
    /// The page service, `host:port`.
    pub pageserver: String,
    /// The admin API, `host:port`.
    pub pageserver_http: String,
    /// An `admin` token, when the pageserver checks tokens.
    pub admin_token: Option<String>,
    /// The token the compute shows the page service, when it checks.
    pub page_token: Option<String>,
    /// The tenant (32 hex digits).
    pub tenant: String,
    /// The timeline (32 hex digits).
    pub timeline: String,
    /// The tenant's shards.
    pub shard_count: u32,
    /// The tenant's stripe, in pages.
    pub stripe_blocks: u32,
    /// The timeline's WAL segment size.
    pub segment_size: u32,
    /// Where the timeline begins on the pageserver (its import or branch
    /// LSN), when the safekeepers' timeline begins below it: a compute
    /// never starts below it, since the pageserver holds nothing there.
    pub start_floor: Option<Lsn>,
}

/// The compute to start.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The Postgres install (with `quire_smgr`).
    pub install: PgInstall,
    /// Its data directory: absent or empty; an absolute path.
    pub data: PathBuf,
    /// Its server log.
    pub log: PathBuf,
    /// Its loopback port.
    pub port: u16,
    /// `shared_buffers`.
    pub shared_buffers: String,
    /// `quire.local_cache_size`.
    pub local_cache_size: String,
    /// Every relation block in the basebackup, `quire_smgr` not loaded:
    /// the local-data mode, for debugging (WAL still goes to the
    /// safekeepers).
    pub full_basebackup: bool,
    /// The bound on each step.
    pub deadlines: Deadlines,
}

/// The bound on each step.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// The election.
    pub election: Duration,
    /// The pageserver's ingest up to the start LSN.
    pub ingest: Duration,
    /// The basebackup's transfer.
    pub basebackup: Duration,
    /// Postgres' start up to its first answer.
    pub postgres: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            election: Duration::from_secs(60),
            ingest: Duration::from_secs(60),
            basebackup: Duration::from_secs(600),
            postgres: Duration::from_secs(60),
        }
    }
}

/// The time of each step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimes {
    pub election: Duration,
    pub ingest: Duration,
    pub basebackup: Duration,
    pub postgres: Duration,
    pub total: Duration,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Starts the compute `launch` on `target`'s timeline; how long each
/// step took.
pub fn start(target: &Target, launch: &Launch) -> Result<StepTimes> {
    let began = Instant::now();
    let key: TimelineKey = format!("{}/{}", target.tenant, target.timeline)
        .parse()
        .map_err(|e: String| anyhow!("the timeline {e}"))?;
    let run_as = RunAs::detect()?;
    prepare_data_dir(&run_as, &launch.data)?;
    // Named by its canonical path from here on, as `quire compute stop`
    // names it when it looks for the postmaster.
    let data = fs::canonicalize(&launch.data)
        .with_context(|| format!("resolve {}", launch.data.display()))?;
    if !launch.full_basebackup {
        check_has_quire_smgr(&launch.install)?;
    }
    if std::net::TcpListener::bind(("127.0.0.1", launch.port)).is_err() {
        bail!(
            "port {} on 127.0.0.1 is taken: choose another with --port",
            launch.port
        );
    }
    let mut times = StepTimes::default();

    let step = Instant::now();
    let (won, prev) = elect(target, key, launch)?;
    times.election = step.elapsed();
    println!(
        "compute start: election {:.1} ms: term {}, donor sk{}, WAL from {}",
        ms(times.election),
        won.term,
        won.donor.0,
        won.start
    );

    // The safekeepers' first election on a timeline answers where their
    // WAL begins, which may be the start of the segment holding the
    // timeline's own start (see `local::start::safekeeper_wal_start`).
    let lsn = target
        .start_floor
        .map_or(won.start, |floor| won.start.max(floor));
    let step = Instant::now();
    let status = wait_ingested(target, lsn, launch.deadlines.ingest)?;
    times.ingest = step.elapsed();
    println!(
        "compute start: pageserver ingested {lsn} in {:.1} ms (its last record {})",
        ms(times.ingest),
        status
            .get("last_record_lsn")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );

    let step = Instant::now();
    // A record before `lsn` exists only when the election started there.
    let prev = prev.filter(|_| lsn == won.start);
    let bytes = basebackup(target, launch, &data, lsn, prev)?;
    run_as.give_tree(&data)?;
    times.basebackup = step.elapsed();
    println!(
        "compute start: basebackup{} at {lsn}: {bytes} bytes in {:.1} ms",
        if launch.full_basebackup {
            " (full)"
        } else {
            ""
        },
        ms(times.basebackup)
    );

    let step = Instant::now();
    let pid = postgres::start(
        &launch.install,
        &run_as,
        &data,
        &launch.log,
        launch.port,
        launch.deadlines.postgres,
    )?;
    times.postgres = step.elapsed();
    times.total = began.elapsed();
    println!(
        "compute start: postgres started and answered a query in {:.1} ms (pid {pid}, log {})",
        ms(times.postgres),
        launch.log.display()
    );
    println!(
        "compute start: election_ms={:.1} ingest_wait_ms={:.1} basebackup_ms={:.1} postgres_ms={:.1} total_ms={:.1}",
        ms(times.election),
        ms(times.ingest),
        ms(times.basebackup),
        ms(times.postgres),
        ms(times.total)
    );
    Ok(times)
}

/// The basebackup at `lsn` unpacked into `data`, its checkpoint record
/// linked to `prev` (the timeline's last record), the settings appended;
/// its size in bytes.
fn basebackup(
    target: &Target,
    launch: &Launch,
    data: &Path,
    lsn: Lsn,
    prev: Option<Lsn>,
) -> Result<u64> {
    let lsn_text = lsn.to_string();
    let prev_text = prev.map(|prev| prev.to_string());
    let fetched = unpack_into(
        &Request {
            http: &target.pageserver_http,
            token: target.admin_token.as_deref(),
            tenant: &target.tenant,
            timeline: &target.timeline,
            lsn: Some(&lsn_text),
            prev: prev_text.as_deref(),
            full: launch.full_basebackup,
            timeout: launch.deadlines.basebackup,
        },
        data,
    )?;
    if fetched.lsn != lsn_text {
        bail!(
            "asked for a basebackup at {lsn_text}, the pageserver sent one at {:?}",
            fetched.lsn
        );
    }
    write_settings(target, launch, data)?;
    fs::set_permissions(data, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", data.display()))?;
    Ok(fetched.bytes)
}

/// Makes `data` an empty directory of mode 0700 the server user reaches;
/// refuses one that holds anything.
fn prepare_data_dir(run_as: &RunAs, data: &Path) -> Result<()> {
    if data.exists() {
        let mut entries = fs::read_dir(data).with_context(|| format!("list {}", data.display()))?;
        if entries.next().is_some() {
            bail!(
                "the compute's data directory {} is not empty: a compute starts from a basebackup alone",
                data.display()
            );
        }
    } else {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(data)
            .with_context(|| format!("create {}", data.display()))?;
    }
    run_as.give(data)?;
    match data.parent() {
        Some(parent) => run_as.check_reaches(parent),
        None => Ok(()),
    }
}

/// Fails unless the install has the `quire_smgr` library.
pub fn check_has_quire_smgr(install: &PgInstall) -> Result<()> {
    let output = run_checked(
        Command::new(install.bin("pg_config")).arg("--pkglibdir"),
        Duration::from_secs(10),
    )?;
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !dir.join("quire_smgr.so").is_file() {
        bail!(
            "{} has no quire_smgr.so: give the install postgres/extensions.sh --prefix prints (--pg-prefix or QUIRE_PG_PREFIX)",
            dir.display()
        );
    }
    Ok(())
}

/// Runs the election for `launch`'s address, within its deadline; the
/// outcome, and where the timeline's last whole record starts (`None` when
/// the safekeepers hold no record yet).
fn elect(target: &Target, key: TimelineKey, launch: &Launch) -> Result<(Won, Option<Lsn>)> {
    let safekeepers = target.safekeepers.clone();
    let token = target.safekeeper_token.clone();
    let compute = format!("127.0.0.1:{}", launch.port);
    let segment_size = target.segment_size;
    let within = launch.deadlines.election;
    let outcome = quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        quire_io::timeout(within, async {
            let won =
                compute_control::elect(&safekeepers, token.as_deref(), key, &compute, segment_size)
                    .await
                    .context("the election")?;
            // The election read the donor's last records: where the last
            // one begins is the basebackup checkpoint record's back link.
            let prev = (won.prev_record != Lsn::INVALID).then_some(won.prev_record);
            anyhow::Ok((won, prev))
        })
        .await
    })
    .map_err(|e| anyhow!("{e}"))?;
    match outcome {
        Ok(elected) => {
            elected.with_context(|| format!("on the safekeepers {}", target.safekeepers.join(",")))
        }
        Err(_) => bail!(
            "the election on the safekeepers {} did not finish within {} s",
            target.safekeepers.join(","),
            within.as_secs()
        ),
    }
}

/// The pause between two looks at the timeline's status.
const INGEST_POLL: Duration = Duration::from_millis(5);
/// The bound on one status call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The timeline's status on the pageserver.
pub fn timeline_status(target: &Target) -> Result<Value> {
    call_api(
        &target.pageserver_http,
        target.admin_token.as_deref(),
        "GET",
        &format!("/v1/tenant/{}/timeline/{}", target.tenant, target.timeline),
        None,
        STATUS_TIMEOUT,
    )
}

/// An LSN field of a status.
pub fn lsn_of(status: &Value, name: &str) -> Result<Lsn> {
    let text = status
        .get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("no {name} in the timeline status {status}"))?;
    text.parse()
        .with_context(|| format!("{name} {text:?} in the timeline status"))
}

/// Waits until the pageserver's timeline has stored every record below
/// `lsn` (its `ingested_lsn`), at most `within`, asking again after a
/// failed call (a pageserver that is still loading); the last status.
fn wait_ingested(target: &Target, lsn: Lsn, within: Duration) -> Result<Value> {
    let began = Instant::now();
    loop {
        let last = match timeline_status(target) {
            Ok(status) => {
                if lsn_of(&status, "ingested_lsn")? >= lsn {
                    return Ok(status);
                }
                format!(
                    "ingested {}, receiving {}, receiver error {}",
                    status["ingested_lsn"], status["receiving"], status["receiver_error"]
                )
            }
            Err(error) => format!("{error:#}"),
        };
        if began.elapsed() >= within {
            bail!(
                "the pageserver did not ingest up to {lsn} within {} s: {last}",
                within.as_secs()
            );
        }
        std::thread::sleep(INGEST_POLL);
    }
}

/// Appends the compute's settings to the unpacked `postgresql.conf` and
/// `pg_hba.conf`.
fn write_settings(target: &Target, launch: &Launch, data: &Path) -> Result<()> {
    let settings = ComputeSettings {
        port: launch.port,
        safekeepers: target.safekeepers.len(),
        shared_buffers: launch.shared_buffers.clone(),
        local_cache_size: launch.local_cache_size.clone(),
        pageserver: target.pageserver.clone(),
        tenant: target.tenant.clone(),
        timeline: target.timeline.clone(),
        shard_count: target.shard_count,
        stripe_blocks: target.stripe_blocks,
        page_token: target.page_token.clone(),
        preload_quire_smgr: !launch.full_basebackup,
    };
    append(&data.join("postgresql.conf"), &postgresql_conf(&settings)?)?;
    append(&data.join("pg_hba.conf"), pg_hba_conf())
}

fn append(path: &Path, text: &str) -> Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("append to {}", path.display()))
}
