//! `quire verify --pageserver ADDR --tenant T --timeline TL --pgdata DIR`:
//! every page of DIR (a cleanly stopped cluster) compared with the page the
//! running pageserver at ADDR serves for that timeline
//! (`pageserver::verify::verify_remote` says what is compared and how).
//! One executor with one local redo process, for Postgres' masking. Exit
//! status 1 when any page differs.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use quire_cluster::{PgInstall, RunAs};
use quire_net::id::ShardIdentity;
use quire_net::page_client::{PageClient, Target};
use quire_postgres::Lsn;
use quire_redo::RedoConfig;

use crate::verify::VerifyArgs;

pub fn run(args: &VerifyArgs) -> Result<ExitCode> {
    let address = args
        .pageserver
        .as_deref()
        .context("--pageserver is needed")?
        .to_socket_addrs()
        .context("--pageserver")?
        .next()
        .context("--pageserver resolves to no address")?;
    let target = Target {
        tenant: args
            .tenant
            .as_deref()
            .context("--pageserver needs --tenant")?
            .parse()
            .map_err(|e| anyhow!("--tenant: {e}"))?,
        timeline: args
            .timeline
            .as_deref()
            .context("--pageserver needs --timeline")?
            .parse()
            .map_err(|e| anyhow!("--timeline: {e}"))?,
        shard: ShardIdentity::unsharded(),
        token: crate::auth_files::read_token(args.pageserver_token_file.as_deref())?
            .unwrap_or_default(),
    };
    let install = PgInstall::locate()?;
    let run_as = RunAs::detect()?;
    let temp = crate::verify::tempfile_dir()?;
    let work = args.work.clone().unwrap_or_else(|| temp.clone());
    let config = RedoConfig {
        postgres: install.bin("postgres"),
        run_as: run_as.ids(),
        scratch_root: work.join("redo"),
        timeout: Duration::from_secs(60),
    };
    let pgdata = args.pgdata.clone();
    let wait = Duration::from_secs(args.wait_secs);
    let at: Option<Lsn> = args
        .at_lsn
        .as_deref()
        .map(|text| {
            text.parse()
                .map_err(|_| anyhow!("--at-lsn {text:?} is not an LSN (X/Y in hex)"))
        })
        .transpose()?;
    crate::verify::on_verify_executor(config, &temp, move |pool| {
        let target = target.clone();
        let pgdata = pgdata.clone();
        async move {
            let mut client = PageClient::connect(address, &target, Duration::from_secs(30))
                .await
                .with_context(|| format!("connect to the pageserver at {address}"))?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let report = quire_pageserver::verify::verify_remote(
                &pgdata,
                &mut client,
                pool,
                (wait, at),
                &mut out,
            )
            .await?;
            out.flush().context("write to standard output")?;
            Ok(report.different)
        }
    })
}
