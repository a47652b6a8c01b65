//! A timeline: puts into the in-memory layer, GetPage@LSN across in-memory
//! and on-disk layers and into the ancestor, freezing, flushing to L0 delta
//! layers, branching, and reloading after a restart.
//!
//! Lives on one core (`!Send`). Writes (`put`, `freeze`) are synchronous and
//! come from the shard's single ingest task; reads take snapshots (`Rc`s of
//! the frozen layers and the layer map) and hold no borrow across I/O, so a
//! flush can publish a new map while reads are in flight.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use quire_io::{BlockCache, BlockFileWriter};
use quire_layerfmt::format::Compression;
use quire_layerfmt::writer::LayerDescriptor;
use quire_layerfmt::{LayerError, LayerKind, LayerWriter, ValueKind};
use quire_postgres::{Key, Lsn};

use crate::in_memory_layer::{InMemoryLayer, PutError};
use crate::layer_file::{LayerFile, LayerKindName, LayerName};
use crate::layer_map::LayerMap;
use crate::metadata::{MetadataError, TimelineMetadata};
use crate::reconstruct::ReconstructInputs;
use crate::value::Value;

/// What one core's timelines share: the block cache and file identities.
#[derive(Debug)]
pub struct CoreContext {
    /// The core's block cache.
    pub cache: Rc<RefCell<BlockCache>>,
    next_file_id: Cell<u64>,
}

impl CoreContext {
    /// A context with a block cache of `cache_bytes`.
    pub fn new(cache_bytes: usize) -> Rc<CoreContext> {
        Rc::new(CoreContext {
            cache: Rc::new(RefCell::new(BlockCache::new(cache_bytes))),
            next_file_id: Cell::new(1),
        })
    }

    fn file_id(&self) -> u64 {
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
    /// Another flush is running.
    #[error("a flush is already running")]
    FlushBusy,
    /// A branch point the parent has not reached.
    #[error("cannot branch at {at}: the parent's last record is at {last}")]
    BranchPastEnd {
        /// The requested branch LSN.
        at: Lsn,
        /// The parent's last record LSN.
        last: Lsn,
    },
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
struct State {
    open: InMemoryLayer,
    /// Frozen layers, oldest first.
    frozen: Vec<Rc<InMemoryLayer>>,
    layers: Rc<LayerMap>,
    last_record_lsn: Lsn,
    disk_consistent_lsn: Lsn,
}

/// A timeline; see the module documentation.
#[derive(Debug)]
pub struct Timeline {
    dir: PathBuf,
    tenant_id: [u8; 16],
    id: [u8; 16],
    core: Rc<CoreContext>,
    state: RefCell<State>,
    flushing: Cell<bool>,
    /// The parent timeline and the LSN this one branched at: values at or
    /// below it are the parent's.
    ancestor: Option<(Rc<Timeline>, Lsn)>,
}

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
        std::fs::create_dir_all(dir).map_err(|source| quire_io::FileError {
            operation: "create directory",
            path: dir.display().to_string(),
            source,
        })?;
        let metadata = TimelineMetadata {
            disk_consistent_lsn: start,
            ancestor: None,
            layers: Vec::new(),
        };
        metadata.store(dir).await?;
        Ok(Timeline::from_parts(
            dir,
            tenant_id,
            timeline_id,
            core,
            start,
            Rc::new(LayerMap::default()),
            None,
        ))
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
        std::fs::create_dir_all(dir).map_err(|source| quire_io::FileError {
            operation: "create directory",
            path: dir.display().to_string(),
            source,
        })?;
        let start = Lsn(at.0 + 1);
        let metadata = TimelineMetadata {
            disk_consistent_lsn: start,
            ancestor: Some((parent.id, at)),
            layers: Vec::new(),
        };
        metadata.store(dir).await?;
        let tenant_id = parent.tenant_id;
        Ok(Timeline::from_parts(
            dir,
            tenant_id,
            timeline_id,
            core,
            start,
            Rc::new(LayerMap::default()),
            Some((parent, at)),
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
                glommio::io::remove(entry.path())
                    .await
                    .map_err(|e| quire_io::FileError {
                        operation: "remove stray file",
                        path: entry.path().display().to_string(),
                        source: e.into(),
                    })?;
            }
        }
        let mut map = LayerMap::default();
        for name in &metadata.layers {
            let layer = LayerFile::open(
                &dir.join(name.to_string()),
                *name,
                core.file_id(),
                core.cache.clone(),
            )
            .await?;
            map = map.with(Rc::new(layer));
        }
        Ok(Timeline::from_parts(
            dir,
            tenant_id,
            timeline_id,
            core,
            metadata.disk_consistent_lsn,
            Rc::new(map),
            ancestor,
        ))
    }

    fn from_parts(
        dir: &Path,
        tenant_id: [u8; 16],
        timeline_id: [u8; 16],
        core: Rc<CoreContext>,
        disk_consistent_lsn: Lsn,
        layers: Rc<LayerMap>,
        ancestor: Option<(Rc<Timeline>, Lsn)>,
    ) -> Timeline {
        Timeline {
            dir: dir.to_owned(),
            tenant_id,
            id: timeline_id,
            core,
            state: RefCell::new(State {
                open: InMemoryLayer::new(disk_consistent_lsn),
                frozen: Vec::new(),
                layers,
                last_record_lsn: disk_consistent_lsn,
                disk_consistent_lsn,
            }),
            flushing: Cell::new(false),
            ancestor,
        }
    }

    /// The timeline's id.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The parent and branch LSN, if this timeline is a branch.
    pub fn ancestor(&self) -> Option<&(Rc<Timeline>, Lsn)> {
        self.ancestor.as_ref()
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
    /// stored nothing still move the timeline forward).
    pub fn advance(&self, lsn: Lsn) {
        let mut state = self.state.borrow_mut();
        state.last_record_lsn = state.last_record_lsn.max(lsn);
    }

    /// Bytes in the open in-memory layer.
    pub fn open_layer_bytes(&self) -> usize {
        self.state.borrow().open.bytes()
    }

    /// The current layer map (a snapshot).
    pub fn layer_map(&self) -> Rc<LayerMap> {
        self.state.borrow().layers.clone()
    }

    /// Stores `value` for `key` at `lsn`.
    pub fn put(&self, key: Key, lsn: Lsn, value: Value) -> Result<(), TimelineError> {
        let mut state = self.state.borrow_mut();
        if lsn < state.disk_consistent_lsn {
            return Err(TimelineError::BelowDiskConsistent {
                lsn,
                disk_consistent: state.disk_consistent_lsn,
            });
        }
        state.open.put(key, lsn, value)?;
        state.last_record_lsn = state.last_record_lsn.max(lsn);
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
        let mut layer = std::mem::replace(&mut state.open, InMemoryLayer::new(end));
        layer.freeze(end);
        state.frozen.push(Rc::new(layer));
    }

    /// The reconstruction inputs of `key` at `lsn`: the newest base at or
    /// below it and the records above the base, oldest first.
    pub async fn get(&self, key: Key, lsn: Lsn) -> Result<ReconstructInputs, TimelineError> {
        let mut newest_first: Vec<(Lsn, Value)> = Vec::new();
        self.collect_below(key, Lsn(lsn.0.saturating_add(1)), &mut newest_first)
            .await?;
        Ok(finish(newest_first))
    }

    /// Appends `key`'s values below `below`, newest first, down to a base,
    /// continuing into the ancestor; returns whether a base was found.
    fn collect_below<'a>(
        &'a self,
        key: Key,
        mut below: Lsn,
        newest_first: &'a mut Vec<(Lsn, Value)>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, TimelineError>> + 'a>> {
        Box::pin(async move {
            let (frozen, layers) = {
                let state = self.state.borrow();
                if state.open.start() < below {
                    if state.open.collect(key, below, newest_first) {
                        return Ok(true);
                    }
                    below = state.open.start();
                }
                (state.frozen.clone(), state.layers.clone())
            };
            for layer in frozen.iter().rev() {
                if layer.start() < below {
                    if layer.collect(key, below, newest_first) {
                        return Ok(true);
                    }
                    below = layer.start();
                }
            }
            while let Some(layer) = layers.search(key, below) {
                if layer.collect(key, below, newest_first).await? {
                    return Ok(true);
                }
                below = layer.name().lsn_start;
            }
            match &self.ancestor {
                Some((parent, at)) => {
                    parent
                        .collect_below(key, below.min(Lsn(at.0 + 1)), newest_first)
                        .await
                }
                None => Ok(false),
            }
        })
    }

    /// Writes every frozen layer to an L0 delta layer, oldest first, each
    /// made durable and listed in the metadata before the next.
    pub async fn flush(&self) -> Result<usize, TimelineError> {
        if self.flushing.replace(true) {
            return Err(TimelineError::FlushBusy);
        }
        let result = self.flush_frozen().await;
        self.flushing.set(false);
        result
    }

    async fn flush_frozen(&self) -> Result<usize, TimelineError> {
        let mut flushed = 0;
        loop {
            let Some(layer) = self.state.borrow().frozen.first().cloned() else {
                return Ok(flushed);
            };
            let name = self.write_l0(&layer).await?;
            let file = LayerFile::open(
                &self.dir.join(name.to_string()),
                name,
                self.core.file_id(),
                self.core.cache.clone(),
            )
            .await?;
            let end = name.lsn_end;
            let map = Rc::new(self.layer_map().with(Rc::new(file)));
            let ancestor = self.ancestor.as_ref().map(|(parent, at)| (parent.id, *at));
            TimelineMetadata {
                disk_consistent_lsn: end,
                ancestor,
                layers: map.names(),
            }
            .store(&self.dir)
            .await?;
            let mut state = self.state.borrow_mut();
            state.layers = map;
            state.frozen.remove(0);
            state.disk_consistent_lsn = end;
            flushed += 1;
        }
    }

    async fn write_l0(&self, layer: &InMemoryLayer) -> Result<LayerName, TimelineError> {
        let end = layer.end().unwrap_or(Lsn(layer.start().0 + 1));
        let name = LayerName {
            kind: LayerKindName::Delta,
            key_start: Key::MIN,
            key_end: Key::MAX,
            lsn_start: layer.start(),
            lsn_end: end,
        };
        let mut writer = LayerWriter::new(LayerDescriptor {
            kind: LayerKind::Delta,
            tenant_id: self.tenant_id,
            timeline_id: self.id,
            key_range: (name.key_start, name.key_end),
            lsn_range: (name.lsn_start, name.lsn_end),
        });
        let file = BlockFileWriter::create(&self.dir.join(name.to_string())).await?;
        for (key, lsn, value) in layer.iter() {
            let (kind, will_init) = match value {
                Value::Image(_) => (ValueKind::PageImage, true),
                Value::Record { will_init, .. } => (ValueKind::WalRecord, *will_init),
            };
            writer.add(key, lsn, kind, will_init, Compression::None, value.bytes())?;
            let (first, blocks) = writer.take_blocks();
            file.write_blocks(first, &blocks).await?;
        }
        let finished = writer.finish()?;
        file.write_blocks(finished.first_block, &finished.tail)
            .await?;
        file.write_blocks(0, &finished.block0).await?;
        file.finish().await?;
        Ok(name)
    }
}

/// Newest-first values down to a base, as reconstruction inputs.
fn finish(mut newest_first: Vec<(Lsn, Value)>) -> ReconstructInputs {
    let image = match newest_first.last() {
        Some((lsn, Value::Image(bytes))) => {
            let image = Some((*lsn, bytes.clone()));
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
