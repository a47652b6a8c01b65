//! `quire tenant ...` and `quire timeline ...`: the pageserver's admin API
//! (docs/admin-api.md) from the command line. Each command takes
//! `--pageserver-http ADDR`, prints the API's JSON answer (the ids it
//! created among it) and fails with the API's error message.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::auth_files::read_token;

/// Where the API is and how to authenticate.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// The admin API's `host:port`.
    #[arg(long, default_value = "127.0.0.1:9898")]
    pub(crate) pageserver_http: String,
    /// A token of scope `admin`, when the pageserver checks tokens.
    #[arg(long)]
    pub(crate) auth_token_file: Option<PathBuf>,
}

/// `quire tenant`.
#[derive(Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (its shards spread over the pageserver's cores).
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Its id (32 hex digits; default: a random one).
        #[arg(long)]
        tenant: Option<String>,
        /// Shards.
        #[arg(long, default_value_t = 1)]
        shard_count: u32,
        /// Stripe in pages.
        #[arg(long)]
        stripe_size: Option<u32>,
    },
    /// Attach a tenant from the pageserver's object storage (`--remote`):
    /// claims a new generation (the pageserver that held it stops writing),
    /// downloads each timeline's layers from its newest index and follows
    /// its WAL from there.
    Attach {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Its shards (as it was created with).
        #[arg(long, default_value_t = 1)]
        shard_count: u32,
        /// Its stripe in pages (as it was created with).
        #[arg(long)]
        stripe_size: Option<u32>,
        /// Where its timelines' WAL comes from (a primary feeds only the
        /// timelines without an ancestor).
        #[command(flatten)]
        wal: WalSourceArgs,
    },
    /// List the tenants.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete a tenant and everything it stores, in object storage too
    /// (unless another pageserver's newer generation holds it there).
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Detach a tenant: remove it from this pageserver, keeping what
    /// object storage holds of it for an attach (here or elsewhere).
    Detach {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Where a timeline's WAL comes from, if anywhere.
#[derive(Args)]
struct WalSourceArgs {
    /// Follow the WAL on these safekeepers (`host:port,...`).
    #[arg(long, value_delimiter = ',', conflicts_with = "primary")]
    safekeepers: Vec<String>,
    /// Follow a Postgres 17 primary directly (a connection string).
    #[arg(long)]
    primary: Option<String>,
    /// The replication slot on the primary.
    #[arg(long, default_value = "quire")]
    slot: String,
}

impl WalSourceArgs {
    /// The admin API's `wal_source`, when one is given.
    fn body(&self) -> Option<Value> {
        if self.safekeepers.is_empty() {
            self.primary
                .as_ref()
                .map(|conninfo| json!({"primary": {"conninfo": conninfo, "slot": self.slot}}))
        } else {
            Some(json!({"safekeepers": {"safekeepers": self.safekeepers}}))
        }
    }
}

/// `quire timeline`.
#[derive(Args)]
pub struct TimelineArgs {
    #[command(subcommand)]
    command: TimelineCommand,
}

#[derive(Subcommand)]
enum TimelineCommand {
    /// Create a timeline: imported from a stopped cluster, or a branch.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Its id (32 hex digits; default: a random one).
        #[arg(long)]
        timeline: Option<String>,
        /// Import this cleanly stopped cluster's data directory.
        #[arg(long, conflicts_with = "branch_of")]
        import_pgdata: Option<PathBuf>,
        /// Branch from this timeline of the tenant.
        #[arg(long, requires = "at")]
        branch_of: Option<String>,
        /// The branch point: an LSN (`X/Y`), or a time (RFC 3339 or
        /// Postgres' output, with an offset) meaning the last commit at or
        /// before it.
        #[arg(long)]
        at: Option<String>,
        /// Where its WAL comes from.
        #[command(flatten)]
        wal: WalSourceArgs,
    },
    /// A timeline's status as JSON.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The timeline.
        #[arg(long)]
        timeline: String,
    },
    /// Fetch a basebackup at an LSN (the files a compute starts from) and
    /// unpack it into a new directory, or write the tar.
    Basebackup(crate::basebackup::BasebackupArgs),
    /// Every timeline of a tenant.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// The longest one admin command may take (an import of a large cluster).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

fn call(api: &ApiArgs, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let token = read_token(api.auth_token_file.as_deref())?;
    call_api(
        &api.pageserver_http,
        token.as_deref(),
        method,
        path,
        body,
        COMMAND_TIMEOUT,
    )
}

/// One admin API call to `http` (`host:port`), the whole of it within
/// `timeout`; its JSON answer, or the API's error message.
pub(crate) fn call_api(
    http: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value> {
    let url = format!("http://{http}{path}");
    let mut request = ureq::request(method, &url).timeout(timeout);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let answer = match body {
        Some(body) => request.send_json(body.clone()),
        None => request.call(),
    };
    match answer {
        Ok(response) => response
            .into_json()
            .with_context(|| format!("{method} {url}: the answer is not JSON")),
        Err(error) => Err(api_error(method, &url, error)),
    }
}

/// A failed call's error: the API's own message for an HTTP error status,
/// else the transport's.
pub(crate) fn api_error(method: &str, url: &str, error: ureq::Error) -> anyhow::Error {
    match error {
        ureq::Error::Status(status, response) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            anyhow::anyhow!("{method} {url}: {status}: {message}")
        }
        error @ ureq::Error::Transport(_) => anyhow::anyhow!("{method} {url}: {error}"),
    }
}

fn print(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn run_tenant(args: &TenantArgs) -> Result<()> {
    match &args.command {
        TenantCommand::Create {
            api,
            tenant,
            shard_count,
            stripe_size,
        } => {
            let mut body = json!({"shard_count": shard_count});
            if let Some(tenant) = tenant {
                body["tenant_id"] = json!(tenant);
            }
            if let Some(stripe) = stripe_size {
                body["stripe_size"] = json!(stripe);
            }
            print(&call(api, "POST", "/v1/tenant", Some(&body))?)
        }
        TenantCommand::Attach {
            api,
            tenant,
            shard_count,
            stripe_size,
            wal,
        } => {
            let mut body = json!({"shard_count": shard_count});
            if let Some(stripe) = stripe_size {
                body["stripe_size"] = json!(stripe);
            }
            if let Some(source) = wal.body() {
                body["wal_source"] = source;
            }
            print(&call(
                api,
                "POST",
                &format!("/v1/tenant/{tenant}/attach"),
                Some(&body),
            )?)
        }
        TenantCommand::List { api } => print(&call(api, "GET", "/v1/tenant", None)?),
        TenantCommand::Delete { api, tenant } => {
            print(&call(api, "DELETE", &format!("/v1/tenant/{tenant}"), None)?)
        }
        TenantCommand::Detach { api, tenant } => print(&call(
            api,
            "POST",
            &format!("/v1/tenant/{tenant}/detach"),
            Some(&json!({})),
        )?),
    }
}

pub fn run_timeline(args: &TimelineArgs) -> Result<()> {
    match &args.command {
        TimelineCommand::Create {
            api,
            tenant,
            timeline,
            import_pgdata,
            branch_of,
            at,
            wal,
        } => {
            let mut body = json!({});
            if let Some(timeline) = timeline {
                body["timeline_id"] = json!(timeline);
            }
            match (import_pgdata, branch_of) {
                (Some(pgdata), None) => {
                    let pgdata = std::fs::canonicalize(pgdata)
                        .with_context(|| format!("--import-pgdata {}", pgdata.display()))?;
                    body["import_pgdata"] = json!(pgdata);
                }
                (None, Some(parent)) => {
                    body["ancestor_timeline_id"] = json!(parent);
                    match at {
                        Some(lsn) if lsn.contains('/') => body["ancestor_lsn"] = json!(lsn),
                        time => body["ancestor_timestamp"] = json!(time),
                    }
                }
                _ => bail!("give --import-pgdata DIR or --branch-of TIMELINE --at LSN|TIMESTAMP"),
            }
            if let Some(source) = wal.body() {
                body["wal_source"] = source;
            }
            print(&call(
                api,
                "POST",
                &format!("/v1/tenant/{tenant}/timeline"),
                Some(&body),
            )?)
        }
        TimelineCommand::Show {
            api,
            tenant,
            timeline,
        } => print(&call(
            api,
            "GET",
            &format!("/v1/tenant/{tenant}/timeline/{timeline}"),
            None,
        )?),
        TimelineCommand::Basebackup(args) => crate::basebackup::run(args),
        TimelineCommand::List { api, tenant } => print(&call(
            api,
            "GET",
            &format!("/v1/tenant/{tenant}/timeline"),
            None,
        )?),
    }
}
