//! `quire token`: keys and signed access tokens for the servers'
//! authentication (`quire_net::token`).
//!
//! `quire token keygen --dir DIR` writes a new Ed25519 key pair,
//! `DIR/auth_private.pem` (mode 0600: whoever holds it can mint tokens) and
//! `DIR/auth_public.pem` (what servers are given). `quire token mint
//! --private-key FILE --scope SCOPE [--node ID] [--tenant HEX] [--ttl
//! SECONDS]` prints a token. Both key files are the PEM forms openssl
//! reads and writes, so either tool can make them.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use quire_net::token::{Claims, Scope, TokenSigner};

/// Options of `quire token`.
#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Write a new key pair: `auth_private.pem` (0600) and `auth_public.pem`.
    Keygen {
        /// Directory to write them to (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a token signed with a private key.
    Mint {
        /// The private key (PEM, PKCS#8).
        #[arg(long)]
        private_key: PathBuf,
        /// What the bearer may do.
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// The safekeeper it speaks for (with --scope safekeeper-peer).
        #[arg(long)]
        node: Option<u32>,
        /// The tenant it is limited to (32 hex digits).
        #[arg(long)]
        tenant: Option<String>,
        /// Seconds until it expires (default: never).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ScopeArg {
    SafekeeperPeer,
    ComputeControl,
    Pageserver,
    Compute,
    Admin,
}

impl From<ScopeArg> for Scope {
    fn from(scope: ScopeArg) -> Scope {
        match scope {
            ScopeArg::SafekeeperPeer => Scope::SafekeeperPeer,
            ScopeArg::ComputeControl => Scope::ComputeControl,
            ScopeArg::Pageserver => Scope::Pageserver,
            ScopeArg::Compute => Scope::Compute,
            ScopeArg::Admin => Scope::Admin,
        }
    }
}

pub fn run(args: &TokenArgs) -> Result<()> {
    match &args.command {
        TokenCommand::Keygen { dir } => keygen(dir),
        TokenCommand::Mint {
            private_key,
            scope,
            node,
            tenant,
            ttl,
        } => {
            let pem = fs::read_to_string(private_key)
                .with_context(|| format!("read {}", private_key.display()))?;
            let signer = TokenSigner::from_pem(&pem)
                .with_context(|| format!("read {}", private_key.display()))?;
            if matches!(scope, ScopeArg::SafekeeperPeer) && node.is_none() {
                bail!("--scope safekeeper-peer needs --node");
            }
            if let Some(tenant) = tenant
                && (tenant.len() != 32 || !tenant.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                bail!("--tenant {tenant}: expected 32 hex digits");
            }
            let exp = match ttl {
                Some(ttl) => Some(unix_now()?.checked_add(*ttl).context("--ttl too large")?),
                None => None,
            };
            let claims = Claims {
                scope: (*scope).into(),
                tenant: tenant.clone(),
                node: *node,
                exp,
            };
            println!("{}", signer.mint(&claims));
            Ok(())
        }
    }
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs())
}

fn keygen(dir: &PathBuf) -> Result<()> {
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .context("read /dev/urandom")?;
    let signer = TokenSigner::from_seed(&seed);
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let private = dir.join("auth_private.pem");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("create {} (it must not exist yet)", private.display()))?;
    file.write_all(signer.private_pem().as_bytes())?;
    file.sync_all()?;
    let public = dir.join("auth_public.pem");
    fs::write(&public, signer.public_pem()?)
        .with_context(|| format!("write {}", public.display()))?;
    println!("{}\n{}", private.display(), public.display());
    Ok(())
}
