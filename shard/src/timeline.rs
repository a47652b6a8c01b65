//! A timeline: puts into the in-memory layer, GetPage@LSN across in-memory
//! and on-disk layers and into the ancestor, freezing, flushing to L0 delta
//! layers, branching, and reloading after a restart.
//!
//! Lives on one core (`!Send`). Writes (`put`, `freeze`) are synchronous and
//! come from the shard's single ingest task; reads take snapshots (`Rc`s of
//! the frozen layers and the layer map) and hold no borrow across I/O, so a
//! flush can publish a new map while reads are in flight.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use quire_io::BlockCache;
use quire_layerfmt::LayerError;
use quire_postgres::{Key, Lsn};

use crate::in_memory_layer::{InMemoryLayer, PutError};
use crate::layer_file::{LayerCaches, LayerFile, LayerName};
use crate::layer_map::LayerMap;
use crate::lsn_wait::LsnWaiters;
use crate::metadata::{MetadataError, TimelineMetadata};
use crate::reconstruct::{ReconstructInputs, RedoError};
use crate::residence::{LayerFetch, ResidenceStats};
use crate::value::Value;

/// What one core's timelines share: the block caches and file identities.
#[derive(Debug)]
pub struct CoreContext {
    /// The core's block cache: values (and in-memory layer blocks).
    pub cache: Rc<RefCell<BlockCache>>,
    /// The core's cache of layer index blocks, apart from values so that a
    /// scan of values cannot evict the index and a cold page costs one read.
    pub index_cache: Rc<RefCell<BlockCache>>,
    /// What the core's layers hold on the local disk, and have downloaded
    /// and evicted.
    pub residence: Rc<ResidenceStats>,
    next_file_id: Cell<u64>,
}

/// The index cache a context gets by default: 64 MiB, the index of some
/// 10 GiB of image layers (an index leaf holds about 200 entries).
pub const INDEX_CACHE_BYTES_DEFAULT: usize = 64 << 20;

impl CoreContext {
    /// A context with a block cache of `cache_bytes` and the default index
    /// cache.
    pub fn new(cache_bytes: usize) -> Rc<CoreContext> {
        CoreContext::with_index_cache(cache_bytes, INDEX_CACHE_BYTES_DEFAULT)
    }

    /// A context with a block cache of `cache_bytes` and an index cache of
    /// `index_bytes`.
    pub fn with_index_cache(cache_bytes: usize, index_bytes: usize) -> Rc<CoreContext> {
        Rc::new(CoreContext {
            cache: Rc::new(RefCell::new(BlockCache::new(cache_bytes))),
            index_cache: Rc::new(RefCell::new(BlockCache::new(index_bytes))),
            residence: Rc::default(),
            next_file_id: Cell::new(1),
        })
    }

    /// Blocks read from disk into either cache since the context was made.
    pub fn cache_misses(&self) -> u64 {
        self.cache.borrow().stats().misses + self.index_cache.borrow().stats().misses
    }

    /// The two caches a layer of this core reads through.
    pub fn caches(&self) -> LayerCaches {
        LayerCaches {
            values: Rc::clone(&self.cache),
            index: Rc::clone(&self.index_cache),
        }
    }

    pub(crate) fn file_id(&self) -> u64 {
        let id = self.next_file_id.get();
        self.next_file_id.set(id + 1);
        id
    }
}

/// Why a timeline operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// A put out of order or into the past.
    #[error(transparent)]
    Put(#[from] PutError),
    /// A put below what is already on disk.
    #[error("value at {lsn} is below the disk-consistent LSN {disk_consistent}")]
    BelowDiskConsistent {
        /// The LSN given.
        lsn: Lsn,
        /// The timeline's disk-consistent LSN.
        disk_consistent: Lsn,
    },
    /// A layer could not be read or written.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Metadata could not be read or written.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] quire_io::FileError),
    /// A branch point the parent has not reached.
    #[error("cannot branch at {at}: the parent's last record is at {last}")]
    BranchPastEnd {
        /// The requested branch LSN.
        at: Lsn,
        /// The parent's last record LSN.
        last: Lsn,
    },
    /// A read or branch below the GC cutoff: what it needs may be gone.
    #[error("{lsn} is below the GC cutoff {cutoff}")]
    BelowGcCutoff {
        /// The LSN asked for.
        lsn: Lsn,
        /// The timeline's GC cutoff.
        cutoff: Lsn,
    },
    /// A relation size value in the wrong encoding.
    #[error(transparent)]
    BadSize(#[from] crate::keyspace::BadSizeValue),
    /// A commit-time value in the wrong encoding.
    #[error("the commit-time value read at {lsn} is corrupt: {what}")]
    BadCommitTime {
        /// The LSN read.
        lsn: Lsn,
        /// What is wrong.
        what: &'static str,
    },
    /// Redo failed while materialising a value.
    #[error(transparent)]
    Redo(#[from] RedoError),
    /// The ancestor given on load is not the one the metadata names.
    #[error("timeline metadata names ancestor {expected:?}, load was given {given:?}")]
    AncestorMismatch {
        /// The metadata's ancestor id.
        expected: Option<[u8; 16]>,
        /// The given ancestor's id.
        given: Option<[u8; 16]>,
    },
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) open: Rc<InMemoryLayer>,
    /// Frozen layers, oldest first.
    pub(crate) frozen: Vec<Rc<InMemoryLayer>>,
    pub(crate) layers: Rc<LayerMap>,
    pub(crate) last_record_lsn: Lsn,
    pub(crate) disk_consistent_lsn: Lsn,
    pub(crate) gc_cutoff_lsn: Lsn,
}

/// A timeline; see the module documentation.
#[derive(Debug)]
pub struct Timeline {
    pub(crate) dir: PathBuf,
    pub(crate) tenant_id: [u8; 16],
    pub(crate) id: [u8; 16],
    pub(crate) core: Rc<CoreContext>,
    pub(crate) state: RefCell<State>,
    /// Held by whatever changes the layer map and metadata (flush,
    /// compaction, GC, image creation), one at a time.
    pub(crate) maintenance: futures::lock::Mutex<()>,
    /// The parent timeline and the LSN this one branched at: values at or
    /// below it are the parent's.
    pub(crate) ancestor: Option<(Rc<Timeline>, Lsn)>,
    /// Keys whose reads applied many records: image creation covers them.
    pub(crate) expensive_keys: RefCell<BTreeSet<Key>>,
    /// Records applied by one read that make its key expensive.
    pub(crate) expensive_read_records: Cell<usize>,
    /// Futures of [`Timeline::wait_for_lsn`] not resolved yet.
    pub(crate) lsn_waiters: LsnWaiters,
    /// The LSN through which every record's values are stored: moved only
    /// by [`Timeline::advance`], after a whole record, while `put` moves
    /// the last record LSN as values arrive.
    pub(crate) published_lsn: Cell<Lsn>,
}

/// Remote copies of layers, by name.
pub type RemoteCopies = std::collections::HashMap<LayerName, Rc<dyn LayerFetch>>;

/// The default of [`Timeline::set_expensive_read_records`].
pub const DEFAULT_EXPENSIVE_READ_RECORDS: usize = 32;

/// Expensive keys remembered at most (a bound on memory; more are dropped
/// until the next image creation takes them).
const EXPENSIVE_KEYS_MAX: usize = 65_536;

impl Timeline {
    /// Creates an empty timeline in `dir` whose first value will be at or
    /// after `start`.
    pub async fn create(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        start: Lsn,
        core: Rc<CoreContext>,
    ) -> Result<Timeline, TimelineError> {
        Timeline::start_new(dir, tenant_id, timeline_id, core, start, None).await
    }

    /// Creates a child timeline in `dir` that shares `parent`'s history up
    /// to and including `at` (copy-on-write: no layer is copied) and takes
    /// its own values above it.
    pub async fn branch(
        dir: &Path,
        timeline_id: [u8; 16],
        parent: Rc<Timeline>,
        at: Lsn,
        core: Rc<CoreContext>,
    ) -> Result<Timeline, TimelineError> {
        let parent_last = parent.state.borrow().last_record_lsn;
        if at > parent_last {
            return Err(TimelineError::BranchPastEnd {
                at,
                last: parent_last,
            });
        }
        parent.check_readable(at)?;
        let tenant_id = parent.tenant_id;
        let start = Lsn(at.0 + 1);
        Timeline::start_new(dir, tenant_id, timeline_id, core, start, Some((parent, at))).await
    }

    /// A timeline with no layers yet whose first value will be at or after
    /// `start`: its directory and first metadata are made durable first.
    async fn start_new(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        core: Rc<CoreContext>,
        start: Lsn,
        ancestor: Option<(Rc<Timeline>, Lsn)>,
    ) -> Result<Timeline, TimelineError> {
        create_directory(dir)?;
        let metadata = TimelineMetadata {
            disk_consistent_lsn: start,
            ancestor: ancestor.as_ref().map(|(parent, at)| (parent.id, *at)),
            gc_cutoff_lsn: Lsn(0),
            layers: Vec::new(),
        };
        metadata.store(dir).await?;
        Ok(Timeline::from_parts(
            dir,
            tenant_id,
            timeline_id,
            core,
            (start, Lsn(0)),
            Rc::new(LayerMap::default()),
            ancestor,
        ))
    }

    /// Reopens the timeline in `dir` after a restart: loads its metadata,
    /// opens the layers it lists, and deletes any other file (a layer
    /// written but never listed, or left half-written by a crash).
    /// `ancestor` must be the (already loaded) parent the metadata names.
    pub async fn load(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        core: Rc<CoreContext>,
        ancestor: Option<Rc<Timeline>>,
    ) -> Result<Timeline, TimelineError> {
        let no_remote = RemoteCopies::new();
        Timeline::load_with_remote(dir, tenant_id, timeline_id, core, ancestor, &no_remote).await
    }

    /// [`Timeline::load`] where the layers may have remote copies: a listed
    /// layer missing from `dir` is registered as remote (fetched when a
    /// read first needs it), and a present one learns its remote copy.
    pub async fn load_with_remote(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        core: Rc<CoreContext>,
        ancestor: Option<Rc<Timeline>>,
        remote: &RemoteCopies,
    ) -> Result<Timeline, TimelineError> {
        let metadata = TimelineMetadata::load(dir).await?;
        let ancestor = match (metadata.ancestor, ancestor) {
            (None, None) => None,
            (Some((id, at)), Some(parent)) if parent.id == id => Some((parent, at)),
            (expected, given) => {
                return Err(TimelineError::AncestorMismatch {
                    expected: expected.map(|(id, _)| id),
                    given: given.map(|parent| parent.id),
                });
            }
        };
        let listed: std::collections::HashSet<String> =
            metadata.layers.iter().map(ToString::to_string).collect();
        let entries = std::fs::read_dir(dir).map_err(|source| quire_io::FileError {
            operation: "list",
            path: dir.display().to_string(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "metadata" && !listed.contains(&name) {
                quire_io::remove_file(&entry.path()).await?;
            }
        }
        let mut layers = Vec::with_capacity(metadata.layers.len());
        for name in &metadata.layers {
            let copy = remote.get(name);
            let layer = match copy {
                Some(copy) if !dir.join(name.to_string()).exists() => {
                    LayerFile::remote_in(dir, *name, &core, Rc::clone(copy))
                }
                _ => match (LayerFile::open_in(dir, *name, &core).await, copy) {
                    (Ok(layer), copy) => {
                        if let Some(copy) = copy {
                            layer.set_remote(Rc::clone(copy));
                        }
                        layer
                    }
                    // A damaged summary or checksum table: the remote copy
                    // replaces the file when a read needs it.
                    (Err(error @ LayerError::Corrupt { .. }), Some(copy)) => {
                        eprintln!("{error}: the file goes; its copy in object storage replaces it");
                        ResidenceStats::add(&core.residence.corrupt_blocks, 1);
                        crate::layer_file::remove_if_present(&dir.join(name.to_string())).await?;
                        LayerFile::remote_in(dir, *name, &core, Rc::clone(copy))
                    }
                    (Err(error), _) => return Err(error.into()),
                },
            };
            layers.push(Rc::new(layer));
        }
        let map = LayerMap::from_layers(layers);
        Ok(Timeline::from_parts(
            dir,
            tenant_id,
            timeline_id,
            core,
            (metadata.disk_consistent_lsn, metadata.gc_cutoff_lsn),
            Rc::new(map),
            ancestor,
        ))
    }

    fn from_parts(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        core: Rc<CoreContext>,
        (disk_consistent_lsn, gc_cutoff_lsn): (Lsn, Lsn),
        layers: Rc<LayerMap>,
        ancestor: Option<(Rc<Timeline>, Lsn)>,
    ) -> Timeline {
        let open = Rc::new(InMemoryLayer::new(
            disk_consistent_lsn,
            dir,
            core.file_id(),
            core.cache.clone(),
        ));
        Timeline {
            dir: dir.to_owned(),
            tenant_id,
            id: timeline_id,
            core,
            state: RefCell::new(State {
                open,
                frozen: Vec::new(),
                layers,
                last_record_lsn: disk_consistent_lsn,
                disk_consistent_lsn,
                gc_cutoff_lsn,
            }),
            maintenance: futures::lock::Mutex::new(()),
            ancestor,
            expensive_keys: RefCell::new(BTreeSet::new()),
            expensive_read_records: Cell::new(DEFAULT_EXPENSIVE_READ_RECORDS),
            lsn_waiters: LsnWaiters::default(),
            published_lsn: Cell::new(disk_consistent_lsn),
        }
    }

    /// The timeline's id.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The timeline's directory.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The parent and branch LSN, if this timeline is a branch.
    pub fn ancestor(&self) -> Option<&(Rc<Timeline>, Lsn)> {
        self.ancestor.as_ref()
    }

    /// The metadata as last stored, read between layer map changes (they
    /// store it and then change the map, both under the maintenance lock),
    /// so every layer it lists is durable: what object storage is brought
    /// up to. A listed file may still be removed by a later change.
    pub async fn durable_metadata(&self) -> TimelineMetadata {
        let _maintenance = self.maintenance.lock().await;
        let state = self.state.borrow();
        TimelineMetadata {
            disk_consistent_lsn: state.disk_consistent_lsn,
            ancestor: self.ancestor.as_ref().map(|(parent, at)| (parent.id, *at)),
            gc_cutoff_lsn: state.gc_cutoff_lsn,
            layers: state.layers.names(),
        }
    }

    /// Every value below this LSN is on disk; WAL must be re-ingested from it.
    pub fn disk_consistent_lsn(&self) -> Lsn {
        self.state.borrow().disk_consistent_lsn
    }

    /// The LSN ingest has reached (the last record stored, or announced by
    /// [`Timeline::advance`]).
    pub fn last_record_lsn(&self) -> Lsn {
        self.state.borrow().last_record_lsn
    }

    /// Records that ingest has processed WAL up to `lsn` (records that
    /// stored nothing still move the timeline forward), and wakes the
    /// [`Timeline::wait_for_lsn`] futures it satisfies.
    pub fn advance(&self, lsn: Lsn) {
        let last = {
            let mut state = self.state.borrow_mut();
            state.last_record_lsn = state.last_record_lsn.max(lsn);
            state.last_record_lsn
        };
        self.published_lsn.set(self.published_lsn.get().max(last));
        self.lsn_waiters.wake_reached(last);
    }

    /// The LSN through which ingest has stored whole records (what
    /// [`Timeline::advance`] last published): what a read of the latest
    /// data is served at, never inside a record half stored.
    pub fn ingested_lsn(&self) -> Lsn {
        self.published_lsn.get()
    }

    /// Reads below this LSN are refused (GC may have removed their layers).
    pub fn gc_cutoff_lsn(&self) -> Lsn {
        self.state.borrow().gc_cutoff_lsn
    }

    /// Sets how many records one read must apply for its key to count as
    /// expensive (image creation then covers it whatever the chain
    /// thresholds say).
    pub fn set_expensive_read_records(&self, records: usize) {
        self.expensive_read_records.set(records.max(1));
    }

    /// Whether a read at `lsn` is allowed: not below this timeline's GC
    /// cutoff, nor below an ancestor's where the read reaches into it (the
    /// branch point itself is always kept).
    pub fn check_readable(&self, lsn: Lsn) -> Result<(), TimelineError> {
        let cutoff = self.gc_cutoff_lsn();
        if lsn < cutoff {
            return Err(TimelineError::BelowGcCutoff { lsn, cutoff });
        }
        match &self.ancestor {
            Some((parent, at)) if lsn < *at => parent.check_readable(lsn),
            _ => Ok(()),
        }
    }

    /// Bytes in the open in-memory layer.
    pub fn open_layer_bytes(&self) -> usize {
        self.state.borrow().open.bytes()
    }

    /// Records the remote copies `copy_of` gives of the map's layers that
    /// have none yet (after an upload): they may then be evicted. Returns
    /// how many layers learnt one.
    pub fn set_remote_copies(
        &self,
        copy_of: &dyn Fn(&LayerName) -> Option<Rc<dyn LayerFetch>>,
    ) -> usize {
        let map = self.layer_map();
        let mut learnt = 0;
        for layer in map.layers() {
            if !layer.has_remote()
                && let Some(copy) = copy_of(layer.name())
            {
                layer.set_remote(copy);
                learnt += 1;
            }
        }
        learnt
    }

    /// The current layer map (a snapshot).
    pub fn layer_map(&self) -> Rc<LayerMap> {
        self.state.borrow().layers.clone()
    }

    /// Stores `value` for `key` at `lsn`. Values spill to the in-memory
    /// layer's ephemeral file in whole chunks; a put that fills one writes it.
    pub async fn put(&self, key: Key, lsn: Lsn, value: Value) -> Result<(), TimelineError> {
        let (layer, chunk) = {
            let mut state = self.state.borrow_mut();
            if lsn < state.disk_consistent_lsn {
                return Err(TimelineError::BelowDiskConsistent {
                    lsn,
                    disk_consistent: state.disk_consistent_lsn,
                });
            }
            let chunk = state.open.put(key, lsn, &value)?;
            state.last_record_lsn = state.last_record_lsn.max(lsn);
            (state.open.clone(), chunk)
        };
        if let Some(chunk) = chunk {
            layer.write_chunk(chunk).await?;
        }
        Ok(())
    }

    /// Freezes the open layer (if it holds anything) at the last LSN put;
    /// later puts must be above it.
    pub fn freeze(&self) {
        let mut state = self.state.borrow_mut();
        if state.open.is_empty() {
            return;
        }
        let end = Lsn(state.last_record_lsn.0 + 1);
        let next = Rc::new(InMemoryLayer::new(
            end,
            &self.dir,
            self.core.file_id(),
            self.core.cache.clone(),
        ));
        let layer = std::mem::replace(&mut state.open, next);
        layer.freeze(end);
        state.frozen.push(layer);
    }

    /// The reconstruction inputs of `key` at `lsn`: the newest base at or
    /// below it and the records above the base, oldest first.
    pub async fn get(&self, key: Key, lsn: Lsn) -> Result<ReconstructInputs, TimelineError> {
        self.get_noting(key, lsn, &Cell::new(0)).await
    }

    /// [`Timeline::get`], counting in `downloads` the layers it waited to
    /// download.
    pub async fn get_noting(
        &self,
        key: Key,
        lsn: Lsn,
        downloads: &Cell<u32>,
    ) -> Result<ReconstructInputs, TimelineError> {
        self.check_readable(lsn)?;
        let mut newest_first: Vec<(Lsn, Value)> = Vec::new();
        let below = Lsn(lsn.0.saturating_add(1));
        self.collect_below(key, below, &mut newest_first, downloads)
            .await?;
        let inputs = finish(key, newest_first);
        if inputs.records.len() >= self.expensive_read_records.get() {
            let mut expensive = self.expensive_keys.borrow_mut();
            if expensive.len() < EXPENSIVE_KEYS_MAX {
                expensive.insert(key);
            }
        }
        Ok(inputs)
    }

    /// [`Timeline::get`] without the GC cutoff check or the cost tracking,
    /// for maintenance reading at LSNs it knows are kept.
    pub(crate) async fn get_unchecked(
        &self,
        key: Key,
        lsn: Lsn,
    ) -> Result<ReconstructInputs, TimelineError> {
        let mut newest_first: Vec<(Lsn, Value)> = Vec::new();
        let below = Lsn(lsn.0.saturating_add(1));
        self.collect_below(key, below, &mut newest_first, &Cell::new(0))
            .await?;
        Ok(finish(key, newest_first))
    }

    /// Appends `key`'s values below `below`, newest first, down to a base,
    /// continuing into the ancestor; returns whether a base was found.
    fn collect_below<'a>(
        &'a self,
        key: Key,
        mut below: Lsn,
        newest_first: &'a mut Vec<(Lsn, Value)>,
        downloads: &'a Cell<u32>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, TimelineError>> + 'a>> {
        Box::pin(async move {
            let (open, frozen, layers) = {
                let state = self.state.borrow();
                (
                    state.open.clone(),
                    state.frozen.clone(),
                    state.layers.clone(),
                )
            };
            for layer in std::iter::once(&open).chain(frozen.iter().rev()) {
                if layer.start() < below {
                    if layer.collect(key, below, newest_first).await? {
                        return Ok(true);
                    }
                    below = layer.start();
                }
            }
            while let Some(layer) = layers.search(key, below) {
                if layer
                    .collect_noting(key, below, newest_first, downloads)
                    .await?
                {
                    return Ok(true);
                }
                below = layer.name().lsn_start;
            }
            match &self.ancestor {
                Some((parent, at)) => {
                    parent
                        .collect_below(key, below.min(Lsn(at.0 + 1)), newest_first, downloads)
                        .await
                }
                None => Ok(false),
            }
        })
    }
}

fn create_directory(dir: &Path) -> Result<(), TimelineError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        TimelineError::File(quire_io::FileError {
            operation: "create directory",
            path: dir.display().to_string(),
            source,
        })
    })
}

/// Newest-first values of `key` down to a base, as reconstruction inputs.
/// A relation block's cut marker (an empty image,
/// [`crate::keyspace::block_cut_value`]) is a base with no content: the
/// inputs then hold no image, as for a block that never had a value.
fn finish(key: Key, mut newest_first: Vec<(Lsn, Value)>) -> ReconstructInputs {
    let image = match newest_first.last() {
        Some((lsn, Value::Image(bytes))) => {
            let image = (!bytes.is_empty() || !key.is_rel_block()).then(|| (*lsn, bytes.clone()));
            newest_first.pop();
            image
        }
        _ => None,
    };
    newest_first.reverse();
    ReconstructInputs {
        image,
        records: newest_first,
    }
}
