//! The admin side of the pageserver tests: tenants and timelines made
//! through `quire tenant create` and `quire timeline create` (imports and
//! branches), `quire timeline show`, and `quire verify --pageserver` with
//! the counts of its summary.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::run_bounded;
use quire_net::id::{TenantId, TimelineId};
use quire_postgres::Lsn;
use serde_json::Value;

use super::{COMMAND_DEADLINE, Pageserver, field, quire_binary, quire_json};

/// A tenant and timeline made through `quire tenant create` and `quire
/// timeline create --import-pgdata`.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The tenant.
    pub tenant: TenantId,
    /// The timeline.
    pub timeline: TimelineId,
    /// The LSN the timeline starts at.
    pub lsn: Lsn,
    /// What `quire tenant create` printed.
    pub tenant_json: Value,
}

impl Imported {
    /// The tenant as text.
    pub fn tenant_text(&self) -> String {
        self.tenant.to_string()
    }

    /// The timeline as text.
    pub fn timeline_text(&self) -> String {
        self.timeline.to_string()
    }
}

/// Creates a tenant (`create_args` added to `quire tenant create`) and
/// imports `pgdata` as a timeline of it; `token` is an admin token file.
pub fn import(
    server: &Pageserver,
    pgdata: &Path,
    create_args: &[&str],
    token: Option<&Path>,
) -> Result<Imported> {
    import_with(server, pgdata, create_args, &[], token)
}

/// [`import`] with `timeline_args` added to `quire timeline create` (its
/// id, a WAL source).
pub fn import_with(
    server: &Pageserver,
    pgdata: &Path,
    create_args: &[&str],
    timeline_args: &[&str],
    token: Option<&Path>,
) -> Result<Imported> {
    let token_args: Vec<&str> = match token {
        Some(path) => vec!["--auth-token-file", path.to_str().context("path")?],
        None => Vec::new(),
    };
    let mut args = vec!["tenant", "create"];
    args.extend(server.api());
    args.extend(&token_args);
    args.extend(create_args);
    let tenant_json = quire_json(&args)?;
    let tenant = field(&tenant_json, "tenant_id")?.to_owned();
    let mut args = vec!["timeline", "create", "--tenant", &tenant];
    args.extend(server.api());
    args.extend(&token_args);
    let pgdata_text = pgdata.to_str().context("path")?;
    args.extend(["--import-pgdata", pgdata_text]);
    args.extend(timeline_args);
    let timeline_json = quire_json(&args)?;
    ensure!(
        field(&timeline_json, "tenant_id")? == tenant,
        "quire timeline create answered for another tenant: {timeline_json}"
    );
    let imported = Imported {
        tenant: tenant.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        timeline: field(&timeline_json, "timeline_id")?
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        lsn: field(&timeline_json, "lsn")?.parse()?,
        tenant_json,
    };
    println!(
        "imported {} as {}/{} at {}",
        pgdata.display(),
        imported.tenant,
        imported.timeline,
        imported.lsn
    );
    Ok(imported)
}

/// `quire timeline create --branch-of` `parent`'s timeline `--at` `at`: the
/// branch, in `parent`'s tenant.
pub fn branch(server: &Pageserver, parent: &Imported, at: Lsn) -> Result<Imported> {
    Ok(branch_at(server, parent, &at.to_string())?.0)
}

/// `quire timeline create --branch-of` `parent` `--at` `at` (an LSN or a
/// time); the branch and the command's JSON answer.
pub fn branch_at(server: &Pageserver, parent: &Imported, at: &str) -> Result<(Imported, Value)> {
    let (tenant, timeline) = (parent.tenant_text(), parent.timeline_text());
    let mut args = vec!["timeline", "create", "--tenant", &tenant];
    args.extend(server.api());
    args.extend(["--branch-of", &timeline, "--at", at]);
    let json = quire_json(&args)?;
    let branch = Imported {
        tenant: parent.tenant,
        timeline: field(&json, "timeline_id")?
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        lsn: field(&json, "lsn")?.parse()?,
        tenant_json: parent.tenant_json.clone(),
    };
    println!(
        "branched {}/{} at {at} as {} (its LSN {})",
        parent.tenant, parent.timeline, branch.timeline, branch.lsn
    );
    Ok((branch, json))
}

/// `quire timeline show` of `imported`.
pub fn timeline_show(server: &Pageserver, imported: &Imported) -> Result<Value> {
    let mut args = vec!["timeline", "show"];
    args.extend(server.api());
    let (tenant, timeline) = (imported.tenant_text(), imported.timeline_text());
    args.extend(["--tenant", &tenant, "--timeline", &timeline]);
    quire_json(&args)
}

/// An LSN field of a JSON object.
pub fn lsn_field(value: &Value, name: &str) -> Result<Lsn> {
    field(value, name)?
        .parse()
        .with_context(|| format!("{name:?} in {value}"))
}

/// What one `quire verify --pageserver` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Pages compared.
    pub compared: u64,
    /// Of them, identical.
    pub identical: u64,
    /// Of them, different.
    pub different: u64,
    /// Whether `quire verify` exited successfully.
    pub success: bool,
}

/// `quire verify --pageserver` of `imported` against `pgdata` (waiting at
/// most `wait_secs` for the server to ingest its final checkpoint): the
/// counts of its summary line, whatever they are.
pub fn verify_counts(
    server: &Pageserver,
    imported: &Imported,
    pgdata: &Path,
    token: Option<&Path>,
    wait_secs: u64,
) -> Result<Verified> {
    verify_counts_at(server, imported, pgdata, (token, wait_secs), None)
}

/// [`verify_counts`], reading every page at `at` when given (`--at-lsn`).
pub fn verify_counts_at(
    server: &Pageserver,
    imported: &Imported,
    pgdata: &Path,
    (token, wait_secs): (Option<&Path>, u64),
    at: Option<Lsn>,
) -> Result<Verified> {
    let page = server.page.to_string();
    let mut command = Command::new(quire_binary());
    command
        .args(["verify", "--pageserver", &page])
        .args(["--tenant", &imported.tenant_text()])
        .args(["--timeline", &imported.timeline_text()])
        .arg("--pgdata")
        .arg(pgdata)
        .args(["--wait-secs", &wait_secs.to_string()]);
    if let Some(token) = token {
        command.arg("--pageserver-token-file").arg(token);
    }
    if let Some(at) = at {
        command.args(["--at-lsn", &at.to_string()]);
    }
    let deadline = COMMAND_DEADLINE + Duration::from_secs(wait_secs);
    let output = run_bounded(&mut command, deadline)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("verify: "))
        .with_context(|| {
            format!(
                "quire verify printed no summary ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?
        .to_owned();
    println!("{} against {}: {line}", imported.timeline, pgdata.display());
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [compared, identical, different] = numbers[..] else {
        bail!("unexpected summary {line:?}");
    };
    if !output.status.success() {
        println!("{}", String::from_utf8_lossy(&output.stderr).trim_end());
    }
    if different > 0 {
        // The first differences, for the test's output.
        for diff in stdout
            .lines()
            .filter(|l| !l.starts_with("verify: "))
            .take(20)
        {
            println!("  {diff}");
        }
    }
    Ok(Verified {
        compared,
        identical,
        different,
        success: output.status.success(),
    })
}

/// [`verify_counts`], which must find every page identical: the number
/// compared (more than 0).
pub fn verify(
    server: &Pageserver,
    imported: &Imported,
    pgdata: &Path,
    token: Option<&Path>,
) -> Result<u64> {
    let found = verify_counts(server, imported, pgdata, token, 30)?;
    ensure!(
        found.success
            && found.compared > 0
            && found.identical == found.compared
            && found.different == 0,
        "verify of {} against {} found differences: {found:?}",
        imported.timeline,
        pgdata.display()
    );
    Ok(found.compared)
}

/// `cp -a from to` (a data directory, say, keeping its owner).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    quire_cluster::run_checked(
        Command::new("cp").arg("-a").arg(from).arg(to),
        Duration::from_secs(60),
    )
    .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Polls `quire timeline show` of `imported` until `done` holds (at most
/// `within`); the last status.
pub fn wait_status(
    server: &Pageserver,
    imported: &Imported,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> Result<bool>,
) -> Result<Value> {
    let began = Instant::now();
    loop {
        let shown = timeline_show(server, imported)?;
        if done(&shown)? {
            return Ok(shown);
        }
        ensure!(
            began.elapsed() < within,
            "{what}: not within {within:?}; quire timeline show: {shown}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The largest layer file in `dir`.
pub fn largest_layer(dir: &Path) -> Result<std::path::PathBuf> {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("image-") || name.starts_with("delta-")) || name.contains('.') {
            continue;
        }
        let size = entry.metadata()?.len();
        if best.as_ref().is_none_or(|(largest, _)| size > *largest) {
            best = Some((size, entry.path()));
        }
    }
    best.map(|(_, path)| path)
        .context("no layer file on the disk")
}

/// Flips one bit of the byte at `at` in `file`.
pub fn flip_byte(file: &Path, at: u64) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut byte = [0u8];
    handle.seek(SeekFrom::Start(at))?;
    handle.read_exact(&mut byte)?;
    byte[0] ^= 0x10;
    handle.seek(SeekFrom::Start(at))?;
    handle.write_all(&byte)?;
    handle.sync_all()?;
    Ok(())
}
