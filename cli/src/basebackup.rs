//! `quire timeline basebackup`: fetch a timeline's basebackup at an LSN
//! from the admin API (`GET …/basebackup`, docs/admin-api.md) and unpack
//! it into a new data directory, or keep the tar.

use std::fs;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use crate::admin::{ApiArgs, api_error};
use crate::auth_files::read_token;

/// `quire timeline basebackup`.
#[derive(Args)]
pub struct BasebackupArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// The timeline.
    #[arg(long)]
    timeline: String,
    /// The LSN (`X/Y`; default: the last record the timeline ingested).
    #[arg(long)]
    lsn: Option<String>,
    /// Where the last record before `--lsn` begins (what `quire elect`
    /// prints as "previous record at"): the checkpoint record's back link.
    #[arg(long, requires = "lsn")]
    prev_lsn: Option<String>,
    /// Every relation block too: a data directory vanilla Postgres serves
    /// without Quire.
    #[arg(long)]
    full: bool,
    /// A new directory to unpack into (made with mode 0700), or a file
    /// ending in `.tar` to write the tar to.
    #[arg(long)]
    out: PathBuf,
}

/// The longest a basebackup may take to arrive whole.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

pub fn run(args: &BasebackupArgs) -> Result<()> {
    let token = read_token(args.api.auth_token_file.as_deref())?;
    let request = Request {
        http: &args.api.pageserver_http,
        token: token.as_deref(),
        tenant: &args.tenant,
        timeline: &args.timeline,
        lsn: args.lsn.as_deref(),
        prev: args.prev_lsn.as_deref(),
        full: args.full,
        timeout: FETCH_TIMEOUT,
    };
    let started = Instant::now();
    let is_tar_file = args.out.extension().is_some_and(|e| e == "tar");
    let fetched = if is_tar_file {
        let (lsn, mut counted, url) = open(&request)?;
        let mut file = fs::File::create(&args.out)
            .with_context(|| format!("create {}", args.out.display()))?;
        std::io::copy(&mut counted, &mut file).with_context(|| format!("GET {url}"))?;
        file.sync_all()?;
        Fetched {
            lsn,
            bytes: counted.bytes,
        }
    } else {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&args.out)
            .with_context(|| format!("create the new directory {}", args.out.display()))?;
        unpack_into(&request, &args.out)?
    };
    let answer = json!({
        "lsn": fetched.lsn,
        "out": args.out,
        "bytes": fetched.bytes,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// A basebackup to fetch.
pub(crate) struct Request<'a> {
    /// The admin API's `host:port`.
    pub http: &'a str,
    /// An `admin` token, when the pageserver checks tokens.
    pub token: Option<&'a str>,
    pub tenant: &'a str,
    pub timeline: &'a str,
    /// `X/Y`, or the last ingested record.
    pub lsn: Option<&'a str>,
    /// Where the record before `lsn` begins (the checkpoint record's
    /// `xl_prev`), when known.
    pub prev: Option<&'a str>,
    /// Every relation block too.
    pub full: bool,
    /// The bound on the whole transfer.
    pub timeout: Duration,
}

/// What arrived.
pub(crate) struct Fetched {
    /// The LSN the pageserver says it is at (`Quire-Lsn`).
    pub lsn: String,
    /// Bytes of tar.
    pub bytes: u64,
}

/// The body of an answer, counted.
type Body = Counted<Box<dyn Read + Send + Sync>>;

/// Sends the request: the answer's LSN, its body, and the URL.
fn open(request: &Request<'_>) -> Result<(String, Body, String)> {
    let lsn_query = request
        .lsn
        .map_or_else(String::new, |lsn| format!("&lsn={lsn}"));
    let prev_query = request
        .prev
        .map_or_else(String::new, |prev| format!("&prev={prev}"));
    let url = format!(
        "http://{}/v1/tenant/{}/timeline/{}/basebackup?full={}{lsn_query}{prev_query}",
        request.http, request.tenant, request.timeline, request.full
    );
    let mut call = ureq::get(&url).timeout(request.timeout);
    if let Some(token) = request.token {
        call = call.set("Authorization", &format!("Bearer {token}"));
    }
    let response = call.call().map_err(|error| api_error("GET", &url, error))?;
    let lsn = response.header("Quire-Lsn").unwrap_or_default().to_owned();
    let counted = Counted {
        inner: response.into_reader(),
        bytes: 0,
    };
    Ok((lsn, counted, url))
}

/// Fetches the basebackup and unpacks it into `dir`, which exists; fails
/// unless it arrived whole (`global/pg_control`, written last, is there).
pub(crate) fn unpack_into(request: &Request<'_>, dir: &Path) -> Result<Fetched> {
    let (lsn, mut counted, url) = open(request)?;
    let mut archive = tar::Archive::new(&mut counted);
    archive.set_preserve_permissions(true);
    archive
        .unpack(dir)
        .with_context(|| format!("unpack the basebackup from {url}"))?;
    if !dir.join("global/pg_control").is_file() {
        bail!("the basebackup from {url} ended without global/pg_control");
    }
    Ok(Fetched {
        lsn,
        bytes: counted.bytes,
    })
}

/// A reader counting what passes.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}
