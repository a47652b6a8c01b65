//! One core's part of the pageserver: the tenant shards it owns (their
//! timelines, the WAL receivers feeding them), its block cache and redo
//! pool, loaded from disk at start. Everything here is `!Send` and lives on
//! its executor; other threads reach it only through the admin queue and
//! the connection hand-off.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, Result, anyhow};
use quire_io::Task;
use quire_net::id::{ShardIdentity, TenantId, TimelineId};
use quire_net::page_service::ServiceLimits;
use quire_net::token::TokenVerifier;
use quire_redo::{RedoPool, TenantKey};
use quire_remote::RemoteStorage;
use quire_shard::{CoreContext, Timeline};

use super::metrics::{CoreMetrics, Metrics};
use super::remote_sync::{ShardRemote, UploadGauges};
use super::residence::load_timeline;
use super::settings::{self, ShardSettings, TimelineSettings};
use crate::import::stored_control;
use crate::shard_filter::ShardFilter;
use crate::wal_receiver::ReceiverGauges;

/// Where a tenant shard lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPlace {
    /// The shard.
    pub identity: ShardIdentity,
    /// The core owning it.
    pub core: usize,
}

/// What every core and the admin thread share: read-mostly settings, the
/// placement of shards on cores (read at a handshake, written when a
/// tenant is created or deleted; never on the GetPage path), the metrics.
pub struct Shared {
    /// The data directory.
    pub root: PathBuf,
    /// Executors running.
    pub cores: usize,
    /// The page connections' limits.
    pub limits: ServiceLimits,
    /// Page connections one core serves at once.
    pub max_connections_per_core: usize,
    /// Handshakes one core reads at once (connections not yet placed).
    pub max_handshakes_per_core: usize,
    /// How long a page connection's read tries the socket before it waits
    /// (the cores' spin before parking).
    pub busy_poll: Option<std::time::Duration>,
    /// Checks tokens, when the server takes only signed ones.
    pub verifier: Option<TokenVerifier>,
    /// Tenant shards and their cores.
    pub placement: RwLock<HashMap<TenantId, Vec<ShardPlace>>>,
    /// The metrics.
    pub metrics: Metrics,
    /// Object storage, when configured.
    pub remote: Option<RemoteStorage>,
    /// Who this pageserver is in the generations it claims.
    pub holder: String,
    /// Bytes of WAL a timeline's disk may hold past object storage before
    /// its ingest waits for uploads.
    pub upload_lag_max: u64,
    /// Bytes of layer files the local disk may hold, across the cores.
    pub disk_budget: Option<u64>,
    /// Bytes per second each core's scrub reads (0: no scrub).
    pub scrub_bytes_per_second: u64,
}

impl Shared {
    /// Where `tenant`'s shard `number` lives: `Err(false)` when the tenant
    /// is unknown, `Err(true)` when it is known but has no such shard.
    pub fn place_of(&self, tenant: TenantId, number: u32) -> Result<ShardPlace, bool> {
        let placement = self
            .placement
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let shards = placement.get(&tenant).ok_or(false)?;
        shards
            .iter()
            .find(|p| p.identity.number() == number)
            .copied()
            .ok_or(true)
    }

    /// Records (or replaces) `tenant`'s placement.
    pub fn place(&self, tenant: TenantId, shards: Vec<ShardPlace>) {
        let mut placement = self
            .placement
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        placement.insert(tenant, shards);
    }

    /// Forgets `tenant`.
    pub fn unplace(&self, tenant: TenantId) {
        let mut placement = self
            .placement
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        placement.remove(&tenant);
    }

    /// Every tenant and its shards.
    pub fn tenants(&self) -> Vec<(TenantId, Vec<ShardPlace>)> {
        let placement = self
            .placement
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = placement.iter().map(|(t, s)| (*t, s.clone())).collect();
        all.sort_by_key(|(t, _)| *t);
        all
    }
}

/// A timeline being served.
pub struct ServedTimeline {
    /// Its id.
    pub id: TimelineId,
    /// The storage.
    pub timeline: Rc<Timeline>,
    /// What is persisted about it.
    pub settings: TimelineSettings,
    /// Whether its cluster has data checksums (`pg_control`'s
    /// `data_checksum_version` is not 0): then every page served gets its
    /// checksum set for its block. Invariant: equal to the stored control
    /// file's flag, which only an import writes (ingest never does), so it
    /// is read once, when the timeline is created or loaded.
    pub data_checksums: bool,
    /// The WAL receiver's task, while one runs (dropping it stops it).
    pub receiver: RefCell<Option<Task<()>>>,
    /// Why the receiver stopped, if it did.
    pub receiver_error: RefCell<Option<String>>,
    /// What the receiver shows while it runs (bytes, the source's end).
    pub receiver_gauges: Rc<ReceiverGauges>,
    /// The background maintenance task (dropping it stops it).
    pub maintenance: RefCell<Option<Task<()>>>,
    /// The upload task, with object storage (dropping it stops it).
    pub uploads: RefCell<Option<Task<()>>>,
    /// What the upload task shows.
    pub upload_gauges: UploadGauges,
}

impl ServedTimeline {
    /// A timeline to serve, no task of it started yet.
    pub fn new(
        id: TimelineId,
        timeline: Timeline,
        settings: TimelineSettings,
        data_checksums: bool,
    ) -> ServedTimeline {
        ServedTimeline {
            id,
            timeline: Rc::new(timeline),
            settings,
            data_checksums,
            receiver: RefCell::new(None),
            receiver_error: RefCell::new(None),
            receiver_gauges: Rc::default(),
            maintenance: RefCell::new(None),
            uploads: RefCell::new(None),
            upload_gauges: UploadGauges::default(),
        }
    }
}

/// A tenant shard on this core.
pub struct TenantShard {
    /// The tenant.
    pub tenant: TenantId,
    /// Which shard.
    pub identity: ShardIdentity,
    /// Its directory.
    pub dir: PathBuf,
    /// Its timelines.
    pub timelines: RefCell<HashMap<TimelineId, Rc<ServedTimeline>>>,
    /// Its attachment to object storage, when the pageserver has one.
    pub remote: Option<Rc<ShardRemote>>,
}

impl TenantShard {
    /// The key its redo processes go by: one process per tenant shard.
    pub fn redo_key(&self) -> TenantKey {
        u128::from_be_bytes(self.tenant.0) ^ u128::from(self.identity.number())
    }

    /// The values it stores: its own relation blocks and every other key.
    pub fn filter(&self) -> ShardFilter {
        ShardFilter::new(self.identity)
    }

    /// A timeline of it.
    pub fn timeline(&self, id: TimelineId) -> Option<Rc<ServedTimeline>> {
        self.timelines.borrow().get(&id).cloned()
    }
}

/// One core's state.
pub struct Core {
    /// The executor's index.
    pub index: usize,
    /// The block cache and file ids its timelines share.
    pub context: Rc<CoreContext>,
    /// Its redo processes.
    pub redo: Rc<RedoPool>,
    /// What all cores share.
    pub shared: Arc<Shared>,
    /// Its metrics.
    pub metrics: CoreMetrics,
    /// Its tenant shards.
    pub shards: RefCell<HashMap<(TenantId, u32), Rc<TenantShard>>>,
    /// Page connections open.
    pub connections: Cell<usize>,
    /// Handshakes being read.
    pub handshakes: Cell<usize>,
    /// Tenant shards an attach is bringing here now.
    pub attaching: RefCell<std::collections::HashSet<(TenantId, u32)>>,
}

impl Core {
    /// A tenant shard of this core.
    pub fn shard(&self, tenant: TenantId, number: u32) -> Option<Rc<TenantShard>> {
        self.shards.borrow().get(&(tenant, number)).cloned()
    }

    /// Opens the shard in `dir` and every timeline in it (parents first).
    pub async fn load_shard(&self, dir: &Path, settings: &ShardSettings) -> Result<()> {
        self.load_shard_as(dir, settings, None).await
    }

    /// [`Core::load_shard`], with the generation an attach has just
    /// claimed for it (`None`: the shard claims one in the background).
    pub async fn load_shard_as(
        &self,
        dir: &Path,
        settings: &ShardSettings,
        claimed: Option<quire_remote::Generation>,
    ) -> Result<()> {
        let tenant = settings.tenant_id()?;
        let identity = settings.identity()?;
        let shard = Rc::new(TenantShard {
            tenant,
            identity,
            dir: dir.to_path_buf(),
            timelines: RefCell::new(HashMap::new()),
            remote: ShardRemote::start(
                self.shared.remote.as_ref(),
                &self.shared.holder,
                (dir, tenant, identity),
                claimed,
            ),
        });
        for timeline in settings::scan_timelines(dir)? {
            let id = timeline.timeline_id()?;
            let ancestor = match timeline.ancestor()? {
                None => None,
                Some((parent, _)) => Some(
                    shard
                        .timeline(parent)
                        .map(|p| Rc::clone(&p.timeline))
                        .ok_or_else(|| anyhow!("timeline {id}: ancestor {parent} not loaded"))?,
                ),
            };
            let generation =
                claimed.or(settings.generation.and_then(quire_remote::Generation::new));
            let loaded = load_timeline(
                &self.context,
                shard.remote.as_deref(),
                generation,
                (&settings::timeline_dir(dir, id), tenant, id),
                ancestor,
            )
            .await
            .with_context(|| format!("load timeline {id} of tenant {tenant}"))?;
            let control = stored_control(&loaded, loaded.last_record_lsn())
                .await
                .with_context(|| format!("timeline {id} of tenant {tenant}"))?;
            let served = Rc::new(ServedTimeline::new(
                id,
                loaded,
                timeline,
                control.data_checksum_version.get() != 0,
            ));
            eprintln!(
                "pageserver: core {}: loaded timeline {tenant}/{id} at {}",
                self.index,
                served.timeline.last_record_lsn()
            );
            shard.timelines.borrow_mut().insert(id, Rc::clone(&served));
            super::maintenance::start(self, &shard, &served);
            super::remote_sync::start_uploads(shard.remote.as_ref(), &served, self.index);
            super::receiver::start(self, &shard, &served, None)
                .await
                .with_context(|| format!("timeline {tenant}/{id}: start its WAL receiver"))?;
        }
        self.shards
            .borrow_mut()
            .insert((tenant, identity.number()), shard);
        Ok(())
    }
}
