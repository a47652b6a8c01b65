//! Safekeepers that check tokens (`quire safekeeper --auth-public-key`),
//! with a real Postgres 17 compute: keys and tokens made by `quire token`;
//! the election runs with a compute-control token and commits need two of
//! three as before, which needs the safekeepers' own peer tokens (their
//! commit LSNs come from each other's flush reports); a connection without
//! a token, with a token of another key, with an expired token or with the
//! wrong scope is refused; and `quire elect` without its token fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::PgCluster;
use quire_postgres::Lsn;
use quire_safekeeper::server::conn::{ConnError, FramedConn};
use quire_safekeeper::wire::Message;
use quire_tests::pg_install;
use quire_tests::safekeepers::{
    KEY, KEY_TEXT, bootstrap_as, compute_options, on_executor, start_safekeepers_with, status_as,
};

fn quire(args: &[&str]) -> Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(args)
        .output()
        .context("run quire")?;
    ensure!(
        output.status.success(),
        "quire {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Mints a token with the private key in `dir` into `dir/name.token`.
fn mint(dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    let key = dir.join("auth_private.pem");
    let key = key.to_str().context("path")?;
    let mut all = vec!["token", "mint", "--private-key", key];
    all.extend_from_slice(args);
    let token = quire(&all)?;
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, &token)?;
    Ok(path)
}

fn read(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// One request on a fresh connection that shows `token` (or none).
fn call(address: &str, token: Option<String>, request: Message) -> Result<Message> {
    let address = address.to_owned();
    on_executor(move || async move {
        let mut conn = match FramedConn::connect_as(&address, token.as_deref()).await {
            Ok(conn) => conn,
            Err(ConnError::Refused(why)) => return Ok(Message::Error { message: why }),
            Err(e) => return Err(e.into()),
        };
        Ok(conn.call(&request).await?)
    })
}

fn refused(answer: &Message, what: &str, expect: &str) -> Result<()> {
    match answer {
        Message::Error { message } if message.contains(expect) => {
            println!("{what}: refused ({message})");
            Ok(())
        }
        other => bail!("{what}: expected a refusal saying {expect:?}, got {other:?}"),
    }
}

/// Requests a token does not allow, at the safekeeper at `target`.
fn check_refusals(target: &str, dir: &Path, other_dir: &Path, start: Lsn) -> Result<()> {
    let status = Message::GetStatus { key: KEY };
    let pageserver_token = read(&dir.join("pageserver.token"))?;
    refused(
        &call(target, None, status.clone())?,
        "status without a token",
        "authentication required",
    )?;
    refused(
        &call(
            target,
            Some(read(&other_dir.join("forged.token"))?),
            status.clone(),
        )?,
        "status with an admin token of another key",
        "signature does not verify",
    )?;
    refused(
        &call(
            target,
            Some(read(&dir.join("expired.token"))?),
            status.clone(),
        )?,
        "status with an expired token",
        "expired",
    )?;
    refused(
        &call(
            target,
            Some(pageserver_token.clone()),
            Message::Vote { key: KEY, term: 99 },
        )?,
        "a vote with a pageserver token",
        "may not send",
    )?;
    refused(
        &call(
            target,
            Some(read(&dir.join("sk2.token"))?),
            Message::StreamWal {
                key: KEY,
                from: start,
            },
        )?,
        "WAL streaming with a peer token",
        "may not send",
    )?;
    Ok(())
}

#[test]
fn safekeepers_take_only_requests_their_tokens_allow() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let dir = keys.path();
    let dir_text = dir.to_str().context("path")?;
    quire(&["token", "keygen", "--dir", dir_text])?;
    for id in 1..=3 {
        mint(
            dir,
            &format!("sk{id}"),
            &["--scope", "safekeeper-peer", "--node", &id.to_string()],
        )?;
    }
    let control = mint(dir, "control", &["--scope", "compute-control"])?;
    let pageserver = mint(
        dir,
        "pageserver",
        &["--scope", "pageserver", "--ttl", "3600"],
    )?;
    mint(dir, "expired", &["--scope", "pageserver", "--ttl", "0"])?;
    let other_keys = tempfile::tempdir()?;
    quire(&[
        "token",
        "keygen",
        "--dir",
        other_keys.path().to_str().context("path")?,
    ])?;
    mint(other_keys.path(), "forged", &["--scope", "admin"])?;

    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, compute_options())?;
    pg.start()?;
    let root = tempfile::tempdir()?;
    let public_key = dir.join("auth_public.pem");
    let (_safekeepers, addresses) =
        start_safekeepers_with(Path::new(env!("CARGO_BIN_EXE_quire")), root.path(), &|id| {
            vec![
                "--auth-public-key".into(),
                public_key.display().to_string(),
                "--auth-token-file".into(),
                dir.join(format!("sk{id}.token")).display().to_string(),
            ]
        })?;

    // Without the compute control's token no election happens.
    let no_token = Command::new(env!("CARGO_BIN_EXE_quire"))
        .args(["elect", "--safekeepers", &addresses.join(",")])
        .args(["--timeline", KEY_TEXT, "--compute", "127.0.0.1:9"])
        .args(["--create-at", "0/1000000", "--system-id", "1"])
        .output()?;
    ensure!(
        !no_token.status.success(),
        "quire elect without a token succeeded"
    );
    let said = String::from_utf8_lossy(&no_token.stderr);
    ensure!(
        said.contains("authentication required"),
        "quire elect without a token failed otherwise: {said}"
    );
    println!("quire elect without a token: refused (authentication required)");

    let won = bootstrap_as(&pg, &addresses, Some(&read(&control)?))?;
    println!(
        "elected term {} at {} with a compute-control token",
        won.term, won.start
    );
    pg.psql("postgres", "CREATE TABLE ledger (id int PRIMARY KEY)")?;
    for id in 0..50 {
        pg.psql("postgres", &format!("INSERT INTO ledger VALUES ({id})"))?;
    }
    let flushed: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?;
    // Each safekeeper's commit LSN comes from its peers' flush reports,
    // which reach it only with their peer tokens.
    let pageserver_token = read(&pageserver)?;
    for address in &addresses {
        let began = Instant::now();
        loop {
            let (_, flush, commit) = status_as(address, KEY, Some(&pageserver_token))?;
            if flush >= flushed && commit >= flushed {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "{address} stays at flush {flush} commit {commit}, short of {flushed}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("50 commits with 2 of 3 required; every safekeeper's commit LSN reached {flushed}");

    let target = &addresses[0];
    check_refusals(target, dir, other_keys.path(), won.start)?;
    // The vote was refused: the term did not move.
    let (term, _, _) = status_as(target, KEY, Some(&pageserver_token))?;
    ensure!(term == won.term, "the term moved to {term}");
    pg.psql("postgres", "INSERT INTO ledger VALUES (1000)")?;
    pg.stop()
}
