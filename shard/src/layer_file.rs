//! A layer of a timeline's layer map, on the local disk or not: the entry
//! the map holds. Resident, it holds its open file ([`OpenLayer`]); absent
//! (attached without downloading, or evicted), it holds where its remote
//! copy is ([`LayerFetch`]) and the first read that needs it downloads it
//! and opens it, while every other read of it waits for that download.
//!
//! Readers hold the open file (an `Rc`) across their I/O, so evicting a
//! layer under a read costs that read nothing: the file stays open until
//! the read drops it, though its directory entry is gone. An evicted
//! layer's blocks are dropped from the core's caches; when it comes back
//! it keeps its file id (its bytes are the same: layers are immutable).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use futures::FutureExt as _;
use futures::future::Shared;
use quire_io::FileId;
use quire_layerfmt::format::LeafEntry;
use quire_layerfmt::{BLOCK_SIZE, LayerError};
use quire_postgres::{Key, Lsn};

pub use crate::layer_name::{LayerKindName, LayerName};
pub use crate::open_layer::{LayerCaches, OpenLayer};
use crate::residence::{LayerFetch, LocalFuture, ResidenceStats};
use crate::timeline::CoreContext;
use crate::value::Value;

/// How long a file fetched from its remote copy is not fetched again for
/// damage found in it (which may be the object's own).
const REFETCH_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// A download shared by the reads waiting for it.
type SharedFetch = Shared<LocalFuture<'static, Result<(), String>>>;

/// A layer in a layer map; see the module documentation.
pub struct LayerFile {
    name: LayerName,
    path: PathBuf,
    id: FileId,
    caches: LayerCaches,
    stats: Rc<ResidenceStats>,
    bytes: u64,
    /// The open file, while the layer is on the local disk.
    open: RefCell<Option<Rc<OpenLayer>>>,
    /// The one download of an absent layer, which every read waiting for
    /// it shares (it goes on when they are gone: the next read takes it up).
    fetch: RefCell<Option<SharedFetch>>,
    /// The one download replacing a damaged file, shared the same way.
    repair: RefCell<Option<SharedFetch>>,
    /// When the open file was fetched (whole, checked) from the remote
    /// copy: damage found in it soon after is likely the object's own, and
    /// it is fetched again at most once per [`REFETCH_AFTER`].
    fetched_at: Cell<Option<Instant>>,
    /// The remote copy, once known.
    remote: RefCell<Option<Rc<dyn LayerFetch>>>,
    last_read: Cell<Instant>,
}

impl fmt::Debug for LayerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_resident() {
            "resident"
        } else {
            "remote"
        };
        write!(f, "LayerFile({}, {place})", self.name)
    }
}

impl LayerFile {
    /// Opens layer `name` in timeline directory `dir` with a new file id of
    /// `core`, reading through its caches.
    pub async fn open_in(
        dir: &Path,
        name: LayerName,
        core: &CoreContext,
    ) -> Result<LayerFile, LayerError> {
        LayerFile::open_with(
            &dir.join(name.to_string()),
            name,
            core.file_id(),
            core.caches(),
            Rc::clone(&core.residence),
        )
        .await
    }

    /// Opens the layer at `path`, checking its summary and checksum table
    /// and that they match `name` (a layer of no core: its residence is
    /// counted on its own).
    pub async fn open(
        path: &Path,
        name: LayerName,
        id: FileId,
        caches: LayerCaches,
    ) -> Result<LayerFile, LayerError> {
        LayerFile::open_with(path, name, id, caches, Rc::default()).await
    }

    async fn open_with(
        path: &Path,
        name: LayerName,
        id: FileId,
        caches: LayerCaches,
        stats: Rc<ResidenceStats>,
    ) -> Result<LayerFile, LayerError> {
        let open = OpenLayer::open(path, name, id, caches.clone()).await?;
        let bytes = u64::from(open.block_count()) * BLOCK_SIZE as u64;
        ResidenceStats::add(&stats.resident_bytes, bytes);
        ResidenceStats::add(&stats.resident_layers, 1);
        Ok(LayerFile {
            name,
            path: path.to_owned(),
            id,
            caches,
            stats,
            bytes,
            open: RefCell::new(Some(Rc::new(open))),
            fetch: RefCell::new(None),
            repair: RefCell::new(None),
            fetched_at: Cell::new(None),
            remote: RefCell::new(None),
            last_read: Cell::new(Instant::now()),
        })
    }

    /// Layer `name` of timeline directory `dir`, not on the local disk: the
    /// first read that needs it fetches it from `remote`.
    pub fn remote_in(
        dir: &Path,
        name: LayerName,
        core: &CoreContext,
        remote: Rc<dyn LayerFetch>,
    ) -> LayerFile {
        let stats = Rc::clone(&core.residence);
        ResidenceStats::add(&stats.remote_only_layers, 1);
        LayerFile {
            name,
            path: dir.join(name.to_string()),
            id: core.file_id(),
            caches: core.caches(),
            stats,
            bytes: remote.size(),
            open: RefCell::new(None),
            fetch: RefCell::new(None),
            repair: RefCell::new(None),
            fetched_at: Cell::new(None),
            remote: RefCell::new(Some(remote)),
            last_read: Cell::new(Instant::now()),
        }
    }

    /// What the layer covers.
    pub fn name(&self) -> &LayerName {
        &self.name
    }

    /// Blocks in the file.
    pub fn block_count(&self) -> u32 {
        u32::try_from(self.bytes / BLOCK_SIZE as u64).unwrap_or(u32::MAX)
    }

    /// Bytes of the file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the file is on the local disk.
    pub fn is_resident(&self) -> bool {
        self.open.borrow().is_some()
    }

    /// Whether a remote copy is known (so the layer may be evicted).
    pub fn has_remote(&self) -> bool {
        self.remote.borrow().is_some()
    }

    /// Records the layer's remote copy (once it is uploaded).
    pub fn set_remote(&self, remote: Rc<dyn LayerFetch>) {
        *self.remote.borrow_mut() = Some(remote);
    }

    /// When a read last needed the layer (or it was made).
    pub fn last_read(&self) -> Instant {
        self.last_read.get()
    }

    /// Memory held for this layer (reader state when open), in bytes.
    pub fn memory_bytes(&self) -> usize {
        let open = self.open.borrow();
        open.as_ref().map_or(0, |open| open.memory_bytes()) + size_of::<Self>()
    }

    /// The open file: the layer's own when resident, otherwise downloaded
    /// first (counting the wait in `downloads`).
    pub async fn layer(&self, downloads: &Cell<u32>) -> Result<Rc<OpenLayer>, LayerError> {
        if let Some(open) = self.resident() {
            return Ok(open);
        }
        downloads.set(downloads.get().saturating_add(1));
        let fetch = self.shared_fetch(&self.fetch, self.path.clone())?;
        let fetched = fetch.clone().await;
        if let Some(open) = self.resident() {
            // Another read opened it first.
            return Ok(open);
        }
        let opened = match fetched {
            Ok(()) => OpenLayer::open(&self.path, self.name, self.id, self.caches.clone()).await,
            Err(what) => Err(LayerError::Read {
                file: self.path.display().to_string(),
                block: 0,
                what: format!("download: {what}"),
            }),
        };
        if let Some(open) = self.resident() {
            return Ok(open);
        }
        // This read ends the download: a failure lets the next read try
        // again; a success makes the layer resident.
        let ended = self
            .fetch
            .borrow()
            .as_ref()
            .is_some_and(|current| current.ptr_eq(&fetch));
        if ended {
            self.fetch.borrow_mut().take();
        }
        let opened = match opened {
            Ok(opened) => Rc::new(opened),
            Err(error) => {
                if ended {
                    ResidenceStats::add(&self.stats.download_failures, 1);
                }
                return Err(error);
            }
        };
        ResidenceStats::add(&self.stats.downloads, 1);
        ResidenceStats::add(&self.stats.download_bytes, self.bytes);
        self.note_resident(true);
        self.fetched_at.set(Some(Instant::now()));
        *self.open.borrow_mut() = Some(Rc::clone(&opened));
        Ok(opened)
    }

    fn resident(&self) -> Option<Rc<OpenLayer>> {
        self.open.borrow().clone()
    }

    /// The download in `slot`, started (to `target`) if none is under way.
    fn shared_fetch(
        &self,
        slot: &RefCell<Option<SharedFetch>>,
        target: PathBuf,
    ) -> Result<SharedFetch, LayerError> {
        if let Some(fetch) = slot.borrow().as_ref() {
            return Ok(fetch.clone());
        }
        let Some(remote) = self.remote.borrow().clone() else {
            return Err(LayerError::Read {
                file: self.path.display().to_string(),
                block: 0,
                what: "not on the local disk, and no remote copy is known".to_owned(),
            });
        };
        let download: LocalFuture<'static, Result<(), String>> =
            Box::pin(async move { remote.fetch(&target).await });
        let fetch = download.shared();
        *slot.borrow_mut() = Some(fetch.clone());
        Ok(fetch)
    }

    fn note_resident(&self, resident: bool) {
        let stats = &self.stats;
        if resident {
            ResidenceStats::sub(&stats.remote_only_layers, 1);
            ResidenceStats::add(&stats.resident_layers, 1);
            ResidenceStats::add(&stats.resident_bytes, self.bytes);
        } else {
            ResidenceStats::add(&stats.remote_only_layers, 1);
            ResidenceStats::sub(&stats.resident_layers, 1);
            ResidenceStats::sub(&stats.resident_bytes, self.bytes);
        }
    }

    /// Removes the file from the local disk when the layer has a remote
    /// copy and no download or repair of it is under way; whether it did.
    pub fn evict(&self) -> Result<bool, quire_io::FileError> {
        if !self.has_remote()
            || self.fetch.borrow().is_some()
            || self.repair.borrow().is_some()
            || self.open.borrow_mut().take().is_none()
        {
            return Ok(false);
        }
        self.note_resident(false);
        self.fetched_at.set(None);
        ResidenceStats::add(&self.stats.evictions, 1);
        ResidenceStats::add(&self.stats.evicted_bytes, self.bytes);
        self.caches.values.borrow_mut().forget_file(self.id);
        self.caches.index.borrow_mut().forget_file(self.id);
        // At once, with no await between the map's change and the unlink:
        // a download starting after this must not lose its file to it.
        remove_now(&self.path)?;
        Ok(true)
    }

    /// Levels of the layer's B-tree index, leaves included (`None` while
    /// the layer is not on the local disk).
    pub fn index_height(&self) -> Option<u32> {
        self.open.borrow().as_ref().map(|open| open.index_height())
    }

    /// Appends to `out`, newest first, the values of `key` below `below`
    /// down to the first base value; returns whether one was found.
    pub async fn collect(
        &self,
        key: Key,
        below: Lsn,
        out: &mut Vec<(Lsn, Value)>,
    ) -> Result<bool, LayerError> {
        self.collect_noting(key, below, out, &Cell::new(0)).await
    }

    /// [`LayerFile::collect`] for a page read: counts a wait for a download
    /// in `downloads`, and is what makes the layer recently read (what
    /// eviction goes by; maintenance reads do not count).
    pub async fn collect_noting(
        &self,
        key: Key,
        below: Lsn,
        out: &mut Vec<(Lsn, Value)>,
        downloads: &Cell<u32>,
    ) -> Result<bool, LayerError> {
        self.last_read.set(Instant::now());
        let mark = out.len();
        let open = self.layer(downloads).await?;
        let first = open.collect(key, below, out).await;
        match first {
            Err(error) if self.repairable(&error) => {
                out.truncate(mark);
                self.repair(open, &error).await?;
                let again = self.layer(downloads).await?.collect(key, below, out).await;
                self.repaired(again)
            }
            other => other,
        }
    }

    /// Every index entry, in (key, LSN) order.
    pub async fn entries(&self) -> Result<Vec<LeafEntry>, LayerError> {
        let open = self.layer(&Cell::new(0)).await?;
        let first = open.entries().await;
        match first {
            Err(error) if self.repairable(&error) => {
                self.repair(open, &error).await?;
                let again = self.layer(&Cell::new(0)).await?.entries().await;
                self.repaired(again)
            }
            other => other,
        }
    }

    /// Adds to `out` the keys in `range` with an entry at or below `lsn`
    /// that `keep` accepts, reading the index leaf by leaf.
    pub async fn keys_at(
        &self,
        lsn: Lsn,
        range: &std::ops::Range<Key>,
        keep: &dyn Fn(&Key) -> bool,
        out: &mut std::collections::BTreeSet<Key>,
    ) -> Result<(), LayerError> {
        let open = self.layer(&Cell::new(0)).await?;
        // Keys added before a damaged block are right: the retry adds the
        // same ones again.
        let first = open.keys_at(lsn, range, keep, out).await;
        match first {
            Err(error) if self.repairable(&error) => {
                self.repair(open, &error).await?;
                let open = self.layer(&Cell::new(0)).await?;
                let again = open.keys_at(lsn, range, keep, out).await;
                self.repaired(again)
            }
            other => other,
        }
    }

    /// The value an index entry points at.
    pub async fn read_entry(&self, entry: &LeafEntry) -> Result<Value, LayerError> {
        let open = self.layer(&Cell::new(0)).await?;
        let first = open.read_entry(entry).await;
        match first {
            Err(error) if self.repairable(&error) => {
                self.repair(open, &error).await?;
                let again = self.layer(&Cell::new(0)).await?.read_entry(entry).await;
                self.repaired(again)
            }
            other => other,
        }
    }

    /// Scrubs blocks `first..first + count` of the local file from the disk
    /// (a resident layer only: `Ok(None)` otherwise), repairing a damaged
    /// one from the remote copy when there is one; how many it checked.
    pub async fn scrub(&self, first: u32, count: u32) -> Result<Option<u32>, LayerError> {
        let Some(open) = self.resident() else {
            return Ok(None);
        };
        let scrubbed = open.scrub(first, count).await;
        let checked = match scrubbed {
            Err(error) if self.repairable(&error) => {
                self.repair(open, &error).await?;
                let again = self.layer(&Cell::new(0)).await?.scrub(first, count).await;
                self.repaired(again)?
            }
            Err(error) => {
                if error.is_damage() {
                    ResidenceStats::add(&self.stats.corrupt_blocks, 1);
                }
                return Err(error);
            }
            Ok(checked) => checked,
        };
        ResidenceStats::add(&self.stats.scrubbed_blocks, u64::from(checked));
        Ok(Some(checked))
    }

    /// Checks every block of the file (a damaged one is repaired from the
    /// remote copy when there is one).
    pub async fn verify(&self) -> Result<u32, LayerError> {
        let open = self.layer(&Cell::new(0)).await?;
        let first = open.verify().await;
        match first {
            Err(error) if self.repairable(&error) => {
                self.repair(open, &error).await?;
                let again = self.layer(&Cell::new(0)).await?.verify().await;
                self.repaired(again)
            }
            other => other,
        }
    }

    /// Whether `error` is damage another copy of the file would not have
    /// (a block failing its checksum), there is a remote copy, and the
    /// file was not fetched from it lately.
    fn repairable(&self, error: &LayerError) -> bool {
        error.is_damage()
            && self.has_remote()
            && self
                .fetched_at
                .get()
                .is_none_or(|at| at.elapsed() >= REFETCH_AFTER)
    }

    /// Replaces the local file, `failed` (a block of it failed its check),
    /// by the remote copy: downloaded beside it (checked whole against the
    /// size and CRC-32C its index lists), renamed over it, opened. The
    /// damaged file stays until the copy is there, so a failed download
    /// loses nothing; reads still holding it keep reading it, and a read
    /// that finds the same damage meanwhile waits for the same download.
    async fn repair(&self, failed: Rc<OpenLayer>, error: &LayerError) -> Result<(), LayerError> {
        let is_current = |open: &Option<Rc<OpenLayer>>| {
            open.as_ref().is_some_and(|open| Rc::ptr_eq(open, &failed))
        };
        if !is_current(&self.open.borrow()) {
            // Repaired (or evicted) since this read began.
            return Ok(());
        }
        let started = self.repair.borrow().is_none();
        if started {
            ResidenceStats::add(&self.stats.corrupt_blocks, 1);
            eprintln!("{error}: replacing the file by its copy in object storage");
        }
        let side = side_path(&self.path, "repair");
        let fetch = self.shared_fetch(&self.repair, side.clone())?;
        let fetched = fetch.clone().await;
        if !is_current(&self.open.borrow()) {
            return Ok(());
        }
        let ended = self
            .repair
            .borrow()
            .as_ref()
            .is_some_and(|current| current.ptr_eq(&fetch));
        if ended {
            self.repair.borrow_mut().take();
        }
        let file = self.path.display().to_string();
        let read_error = |what: String| LayerError::Read {
            file: file.clone(),
            block: 0,
            what,
        };
        fetched.map_err(|what| read_error(format!("repair download: {what}")))?;
        std::fs::rename(&side, &self.path)
            .map_err(|e| read_error(format!("rename the repaired copy into place: {e}")))?;

        let opened = OpenLayer::open(&self.path, self.name, self.id, self.caches.clone()).await?;
        if is_current(&self.open.borrow()) {
            *self.open.borrow_mut() = Some(Rc::new(opened));
            self.fetched_at.set(Some(Instant::now()));
        }
        Ok(())
    }

    /// Counts a repair that worked; a copy as damaged stays an error.
    fn repaired<T>(&self, again: Result<T, LayerError>) -> Result<T, LayerError> {
        if again.is_ok() {
            ResidenceStats::add(&self.stats.repairs, 1);
            eprintln!(
                "layer {}: repaired from object storage",
                self.path.display()
            );
        }
        again
    }

    /// Closes the file (when resident and no read holds it) and drops its
    /// blocks from the cache.
    pub async fn close(self) {
        let open = self.open.borrow_mut().take();
        if open.is_some() {
            // Drop then counts the layer out of the remote-only ones.
            self.note_resident(false);
        }
        if let Some(open) = open.and_then(|open| Rc::try_unwrap(open).ok()) {
            open.close().await;
        } else {
            self.caches.values.borrow_mut().forget_file(self.id);
            self.caches.index.borrow_mut().forget_file(self.id);
        }
    }
}

impl Drop for LayerFile {
    fn drop(&mut self) {
        if self.open.borrow().is_some() {
            ResidenceStats::sub(&self.stats.resident_layers, 1);
            ResidenceStats::sub(&self.stats.resident_bytes, self.bytes);
        } else {
            ResidenceStats::sub(&self.stats.remote_only_layers, 1);
        }
    }
}

/// `path` with `.<what>` added to its file name.
fn side_path(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".");
    name.push(what);
    path.with_file_name(name)
}

/// Removes a layer's file at once (a short metadata call on the core,
/// with no await for another task to run in); one already gone is not an
/// error.
fn remove_now(path: &Path) -> Result<(), quire_io::FileError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(quire_io::FileError {
            operation: "remove",
            path: path.display().to_string(),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Removes a layer's file; one already gone (evicted) is not an error.
pub(crate) async fn remove_if_present(path: &Path) -> Result<(), quire_io::FileError> {
    match quire_io::remove_file(path).await {
        Err(error) if error.source.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if !path.exists() => Ok(()),
        other => other,
    }
}
