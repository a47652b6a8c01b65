//! What the service persists about each tenant shard and timeline, and
//! where: `DIR/tenants/<tenant>-s<number>of<count>/shard.json` (the shard
//! identity and the core it lives on) and `timelines/<timeline>.json`
//! beside `timelines/<timeline>/` (the timeline's layers and metadata,
//! which the storage engine owns). Files go through [`super::files`]:
//! checksummed, replaced atomically.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use quire_net::id::{ShardIdentity, TenantId, TimelineId};
use quire_postgres::Lsn;
use serde::{Deserialize, Serialize};

/// A tenant shard's settings (`shard.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardSettings {
    /// The tenant, 32 hex digits.
    pub tenant: String,
    /// This shard's number.
    pub shard_number: u32,
    /// The tenant's shard count.
    pub shard_count: u32,
    /// The stripe in pages.
    pub stripe_blocks: u32,
    /// The core (executor index) that owns it.
    pub core: usize,
    /// The generation this pageserver last claimed for the shard in
    /// object storage (`docs/format/remote-storage.md`), once it has: at
    /// the next start it claims a new one only while this one is still the
    /// newest, so a pageserver another one superseded does not take the
    /// shard back by restarting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

impl ShardSettings {
    /// The tenant id.
    pub fn tenant_id(&self) -> Result<TenantId> {
        self.tenant
            .parse()
            .map_err(|e| anyhow::anyhow!("shard settings: {e}"))
    }

    /// The shard identity.
    pub fn identity(&self) -> Result<ShardIdentity> {
        ShardIdentity::new(self.shard_number, self.shard_count, self.stripe_blocks)
            .map_err(|e| anyhow::anyhow!("shard settings: {e}"))
    }
}

/// Where a timeline's WAL comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WalSourceSettings {
    /// The safekeepers (`host:port` each) holding the timeline's WAL under
    /// the same tenant and timeline ids.
    Safekeepers {
        /// Their addresses.
        safekeepers: Vec<String>,
        /// The token to show them (scope `pageserver`), when they check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A Postgres 17 primary, followed as a physical replication client.
    Primary {
        /// Its connection string.
        conninfo: String,
        /// The replication slot (created if missing).
        slot: String,
    },
}

/// The ancestor of a branch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AncestorSettings {
    /// The parent timeline, 32 hex digits.
    pub timeline: String,
    /// The branch point.
    pub lsn: String,
}

/// A timeline's settings (`timelines/<timeline>.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimelineSettings {
    /// The timeline, 32 hex digits.
    pub timeline: String,
    /// The parent and branch point of a branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ancestor: Option<AncestorSettings>,
    /// The cluster's system identifier (from `pg_control`).
    pub system_identifier: u64,
    /// The cluster's WAL segment size.
    pub segment_size: u32,
    /// Where its WAL comes from, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_source: Option<WalSourceSettings>,
    /// Where its own WAL begins, when known: an import's LSN, where the
    /// first record it ingests starts. A restarted receiver never asks its
    /// source for WAL below it (`wal_resume_lsn`). Absent in files written
    /// before it existed, and for branches and attached timelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_start: Option<String>,
}

impl TimelineSettings {
    /// The timeline id.
    pub fn timeline_id(&self) -> Result<TimelineId> {
        self.timeline
            .parse()
            .map_err(|e| anyhow::anyhow!("timeline settings: {e}"))
    }

    /// [`wal_start`](Self::wal_start), parsed.
    pub fn wal_start_lsn(&self) -> Result<Option<Lsn>> {
        self.wal_start
            .as_deref()
            .map(|lsn| {
                lsn.parse()
                    .map_err(|e| anyhow::anyhow!("timeline settings: WAL start {e:?}"))
            })
            .transpose()
    }

    /// The ancestor's id and branch point.
    pub fn ancestor(&self) -> Result<Option<(TimelineId, Lsn)>> {
        let Some(ancestor) = &self.ancestor else {
            return Ok(None);
        };
        let id = ancestor
            .timeline
            .parse()
            .map_err(|e| anyhow::anyhow!("timeline settings: ancestor {e}"))?;
        let lsn = ancestor
            .lsn
            .parse()
            .map_err(|e| anyhow::anyhow!("timeline settings: ancestor LSN {e:?}"))?;
        Ok(Some((id, lsn)))
    }
}

/// The directory of every tenant shard.
pub fn tenants_dir(root: &Path) -> PathBuf {
    root.join("tenants")
}

/// A tenant shard's directory.
pub fn shard_dir(root: &Path, tenant: TenantId, shard: ShardIdentity) -> PathBuf {
    tenants_dir(root).join(format!("{tenant}-s{}of{}", shard.number(), shard.count()))
}

/// A shard's settings file.
pub fn shard_file(shard_dir: &Path) -> PathBuf {
    shard_dir.join("shard.json")
}

/// A timeline's layer directory.
pub fn timeline_dir(shard_dir: &Path, timeline: TimelineId) -> PathBuf {
    shard_dir.join("timelines").join(timeline.to_string())
}

/// A timeline's settings file.
pub fn timeline_file(shard_dir: &Path, timeline: TimelineId) -> PathBuf {
    shard_dir.join("timelines").join(format!("{timeline}.json"))
}

/// Every shard found under `root`, with its directory.
pub fn scan_shards(root: &Path) -> Result<Vec<(PathBuf, ShardSettings)>> {
    let dir = tenants_dir(root);
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        let file = shard_file(&path);
        if !file.exists() {
            // A shard whose creation never finished.
            eprintln!(
                "pageserver: removing {} (no shard.json: its creation did not finish)",
                path.display()
            );
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
            continue;
        }
        let settings: ShardSettings = super::files::load(&file)?;
        found.push((path, settings));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Every timeline of a shard, parents before their branches. A layer
/// directory without settings (a creation that never finished) is removed.
pub fn scan_timelines(shard_dir: &Path) -> Result<Vec<TimelineSettings>> {
    let dir = shard_dir.join("timelines");
    let mut settings = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(settings),
        Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if let Some(stem) = name.strip_suffix(".json") {
            let loaded: TimelineSettings = super::files::load(&path)?;
            if loaded.timeline != stem {
                anyhow::bail!("{} names timeline {}", path.display(), loaded.timeline);
            }
            settings.push(loaded);
        } else if path.is_dir() {
            dirs.push((name, path));
        } else if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    for (name, path) in dirs {
        if !settings.iter().any(|s| s.timeline == name) {
            eprintln!(
                "pageserver: removing {} (no settings: its creation did not finish)",
                path.display()
            );
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    // Parents first: a timeline after every ancestor it names.
    let mut ordered: Vec<TimelineSettings> = Vec::with_capacity(settings.len());
    while !settings.is_empty() {
        let before = settings.len();
        let mut rest = Vec::new();
        for timeline in settings {
            let ready = match &timeline.ancestor {
                None => true,
                Some(a) => ordered.iter().any(|o| o.timeline == a.timeline),
            };
            if ready {
                ordered.push(timeline);
            } else {
                rest.push(timeline);
            }
        }
        if rest.len() == before {
            anyhow::bail!(
                "{}: timelines {:?} name ancestors that are not there",
                dir.display(),
                rest.iter().map(|t| &t.timeline).collect::<Vec<_>>()
            );
        }
        settings = rest;
    }
    Ok(ordered)
}
