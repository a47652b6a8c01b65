//! `quire timeline basebackup`: fetch a timeline's basebackup at an LSN
//! from the admin API (`GET …/basebackup`, docs/admin-api.md) and unpack
//! it into a new data directory, or keep the tar.

use std::fs;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Instant;

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

pub fn run(args: &BasebackupArgs) -> Result<()> {
    let lsn_query = args
        .lsn
        .as_ref()
        .map_or_else(String::new, |lsn| format!("&lsn={lsn}"));
    let prev_query = args
        .prev_lsn
        .as_ref()
        .map_or_else(String::new, |prev| format!("&prev={prev}"));
    let path = format!(
        "/v1/tenant/{}/timeline/{}/basebackup?full={}{lsn_query}{prev_query}",
        args.tenant, args.timeline, args.full
    );
    let url = format!("http://{}{path}", args.api.pageserver_http);
    let mut request = ureq::get(&url);
    if let Some(token) = read_token(args.api.auth_token_file.as_deref())? {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let started = Instant::now();
    let response = request
        .call()
        .map_err(|error| api_error("GET", &url, error))?;
    let lsn = response.header("Quire-Lsn").unwrap_or_default().to_owned();
    let mut counted = Counted {
        inner: response.into_reader(),
        bytes: 0,
    };
    let is_tar_file = args.out.extension().is_some_and(|e| e == "tar");
    if is_tar_file {
        let mut file = fs::File::create(&args.out)
            .with_context(|| format!("create {}", args.out.display()))?;
        std::io::copy(&mut counted, &mut file).with_context(|| format!("GET {url}"))?;
        file.sync_all()?;
    } else {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&args.out)
            .with_context(|| format!("create the new directory {}", args.out.display()))?;
        let mut archive = tar::Archive::new(&mut counted);
        archive.set_preserve_permissions(true);
        archive
            .unpack(&args.out)
            .with_context(|| format!("unpack the basebackup from {url}"))?;
        if !args.out.join("global/pg_control").is_file() {
            bail!("the basebackup from {url} ended without global/pg_control");
        }
    }
    let answer = json!({
        "lsn": lsn,
        "out": args.out,
        "bytes": counted.bytes,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
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
