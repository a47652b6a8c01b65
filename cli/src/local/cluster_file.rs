//! `DIR/cluster.json`: everything the commands of a local cluster need
//! after `quire start` made it (ports, ids, the Postgres prefix, the
//! branches), and the layout of DIR.
//!
//! The file is `{"format": 1, "crc32c": N, "cluster": {...}}`, where `N`
//! is the CRC-32C of the `cluster` object as `serde_json` writes it; it is
//! written to `cluster.json.tmp`, fsynced, renamed over the old one and the
//! directory fsynced, so a reader sees the old file or the new one whole,
//! and a damaged file is refused with what was wrong.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The format this code writes and reads.
const FORMAT: u64 = 1;
/// The file's largest size: anything bigger is not ours.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// One safekeeper.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SafekeeperEntry {
    /// Its id (standby name `sk<id>`).
    pub id: u32,
    /// Its `host:port`.
    pub listen: String,
}

/// The pageserver.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageserverEntry {
    /// The page service's `host:port`.
    pub listen: String,
    /// The admin API's `host:port`.
    pub http: String,
    /// Executors.
    pub cores: usize,
    /// Block cache per core, MiB.
    pub cache_mib: usize,
    /// Its object storage (`--remote`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

fn default_local_cache() -> String {
    crate::compute::LOCAL_CACHE_DEFAULT.to_owned()
}

/// A compute: the main one, or a branch's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComputeEntry {
    /// Its loopback port.
    pub port: u16,
    /// `shared_buffers`.
    pub shared_buffers: String,
    /// `quire.local_cache_size` (a file written before it existed: the
    /// default).
    #[serde(default = "default_local_cache")]
    pub local_cache_size: String,
    /// Whether it starts from a full basebackup (relation files local).
    pub full_basebackup: bool,
}

/// A branch: a timeline of the tenant and its compute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BranchEntry {
    /// Its name (letters, digits, `-`, `_`).
    pub name: String,
    /// Its timeline.
    pub timeline_id: String,
    /// Where it branched from the main timeline (`X/Y`).
    pub lsn: String,
    /// Its compute.
    pub compute: ComputeEntry,
}

/// A local cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalCluster {
    /// The Postgres install (with the extensions).
    pub pg_prefix: PathBuf,
    /// The tenant (32 hex digits).
    pub tenant_id: String,
    /// The main timeline (32 hex digits).
    pub timeline_id: String,
    /// Where the main timeline starts (its import LSN).
    pub timeline_start_lsn: String,
    /// The tenant's shards.
    pub shard_count: u32,
    /// The tenant's stripe, in pages.
    pub stripe_size: u32,
    /// The cluster's system identifier.
    pub system_id: u64,
    /// Its WAL segment size in bytes.
    pub segment_size: u32,
    /// The safekeepers, in member order.
    pub safekeepers: Vec<SafekeeperEntry>,
    /// The pageserver.
    pub pageserver: PageserverEntry,
    /// The main timeline's compute.
    pub compute: ComputeEntry,
    /// The branches.
    #[serde(default)]
    pub branches: Vec<BranchEntry>,
}

/// Where things are under a cluster's directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir` (an absolute path).
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    /// `cluster.json`.
    pub fn file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    /// Safekeeper `id`'s data directory.
    pub fn safekeeper_data(&self, id: u32) -> PathBuf {
        self.dir.join("safekeepers").join(format!("sk{id}"))
    }

    /// The pageserver's data directory.
    pub fn pageserver_data(&self) -> PathBuf {
        self.dir.join("pageserver")
    }

    /// The log of a process (`sk1`, `pageserver`, `compute`, ...).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The pid file of a process (`sk1`, `pageserver`).
    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(format!("{name}.pid"))
    }

    /// A compute's data directory: the main one (`None`) or a branch's.
    pub fn compute_data(&self, branch: Option<&str>) -> PathBuf {
        match branch {
            None => self.dir.join("compute"),
            Some(name) => self.dir.join("branches").join(name).join("compute"),
        }
    }

    /// A compute's log name: `compute` or `compute-<branch>`.
    pub fn compute_log(&self, branch: Option<&str>) -> PathBuf {
        match branch {
            None => self.log("compute"),
            Some(name) => self.log(&format!("compute-{name}")),
        }
    }

    /// Makes the directories processes write into.
    pub fn make_dirs(&self) -> Result<()> {
        for dir in [
            self.dir.join("logs"),
            self.dir.join("run"),
            self.dir.join("safekeepers"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(())
    }
}

impl LocalCluster {
    /// The safekeepers' addresses, in member order.
    pub fn safekeeper_addresses(&self) -> Vec<String> {
        self.safekeepers.iter().map(|s| s.listen.clone()).collect()
    }

    /// The branch called `name`.
    pub fn branch(&self, name: &str) -> Result<&BranchEntry> {
        self.branches
            .iter()
            .find(|b| b.name == name)
            .with_context(|| format!("the cluster has no branch {name:?}"))
    }

    /// Reads `layout`'s `cluster.json`, checking its format and checksum.
    pub fn read(layout: &Layout) -> Result<LocalCluster> {
        let path = layout.file();
        let size = fs::metadata(&path)
            .with_context(|| {
                format!(
                    "read {} (is {} a cluster `quire start` made?)",
                    path.display(),
                    layout.dir.display()
                )
            })?
            .len();
        if size > FILE_BYTES_MAX {
            bail!(
                "{}: {size} bytes, more than a cluster file holds",
                path.display()
            );
        }
        let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        decode(&bytes).with_context(|| format!("read {}", path.display()))
    }

    /// Writes it to `layout`'s `cluster.json`, atomically and durably.
    pub fn write(&self, layout: &Layout) -> Result<()> {
        let path = layout.file();
        let tmp = path.with_extension("json.tmp");
        let bytes = encode(self)?;
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("rename {}", tmp.display()))?;
        fs::File::open(&layout.dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("fsync {}", layout.dir.display()))
    }
}

fn encode(cluster: &LocalCluster) -> Result<Vec<u8>> {
    let body = serde_json::to_value(cluster)?;
    let crc = quire_checksum::crc32c(&serde_json::to_vec(&body)?);
    let mut bytes =
        serde_json::to_vec_pretty(&json!({"format": FORMAT, "crc32c": crc, "cluster": body}))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<LocalCluster> {
    let outer: Value = serde_json::from_slice(bytes).context("not JSON")?;
    let format = outer.get("format").and_then(Value::as_u64);
    if format != Some(FORMAT) {
        bail!("format {format:?}, expected {FORMAT}");
    }
    let crc = outer
        .get("crc32c")
        .and_then(Value::as_u64)
        .context("no crc32c")?;
    let body = outer.get("cluster").context("no cluster object")?;
    let computed = quire_checksum::crc32c(&serde_json::to_vec(body)?);
    if u64::from(computed) != crc {
        bail!("checksum mismatch: the file says {crc:#010x}, its contents {computed:#010x}");
    }
    serde_json::from_value(body.clone()).context("the cluster object")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> LocalCluster {
        LocalCluster {
            pg_prefix: "/opt/pg".into(),
            tenant_id: "11".repeat(16),
            timeline_id: "22".repeat(16),
            timeline_start_lsn: "0/14E8F10".to_owned(),
            shard_count: 1,
            stripe_size: 32768,
            system_id: 7_345_678_901_234_567_890,
            segment_size: 16 << 20,
            safekeepers: (1..=3)
                .map(|id| SafekeeperEntry {
                    id,
                    listen: format!("127.0.0.1:{}", 7000 + id),
                })
                .collect(),
            pageserver: PageserverEntry {
                listen: "127.0.0.1:6400".to_owned(),
                http: "127.0.0.1:9898".to_owned(),
                cores: 1,
                cache_mib: 128,
                remote: None,
            },
            compute: ComputeEntry {
                port: 55432,
                shared_buffers: "128MB".to_owned(),
                local_cache_size: "256MB".to_owned(),
                full_basebackup: false,
            },
            branches: vec![BranchEntry {
                name: "past".to_owned(),
                timeline_id: "33".repeat(16),
                lsn: "0/1600000".to_owned(),
                compute: ComputeEntry {
                    port: 55433,
                    shared_buffers: "128MB".to_owned(),
                    local_cache_size: "256MB".to_owned(),
                    full_basebackup: true,
                },
            }],
        }
    }

    #[test]
    fn a_written_cluster_reads_back_and_a_damaged_one_is_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let layout = Layout::new(dir.path().to_owned());
        cluster().write(&layout)?;
        assert_eq!(LocalCluster::read(&layout)?, cluster());

        let text = fs::read_to_string(layout.file())?;
        // One changed digit of a port: the checksum no longer matches.
        let damaged = text.replacen("55432", "55431", 1);
        assert_ne!(damaged, text);
        fs::write(layout.file(), damaged)?;
        let error = format!("{:#}", LocalCluster::read(&layout).err().context("read")?);
        assert!(error.contains("checksum mismatch"), "{error}");

        for bad in ["", "{}", "[1]", "{\"format\": 2}", "not json"] {
            fs::write(layout.file(), bad)?;
            assert!(LocalCluster::read(&layout).is_err(), "{bad:?}");
        }
        Ok(())
    }
}
