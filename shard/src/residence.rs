//! Layers that need not be on the local disk: where a layer missing from
//! it is fetched from ([`LayerFetch`], object storage in the pageserver),
//! and what one core's layers hold on disk and have fetched and evicted
//! ([`ResidenceStats`]).
//!
//! A layer with a remote copy may be absent locally (a tenant attached
//! without downloading, or a layer evicted for the disk budget): the first
//! read that needs it downloads it, and every read of it waits for that one
//! download. Only a layer whose remote copy is known can be evicted, so a
//! layer not yet uploaded always stays. A local file whose block fails its
//! check is replaced by its remote copy and the read retried once.

use std::cell::Cell;
use std::fmt;
use std::path::Path;
use std::pin::Pin;

/// A boxed local future (futures stay on their core).
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A remote copy of one layer.
pub trait LayerFetch: fmt::Debug {
    /// The layer's size in bytes.
    fn size(&self) -> u64;

    /// Writes the layer to `path` durably, checked against its size and
    /// checksum (retrying as the store's client does); the error says why
    /// it could not.
    fn fetch<'a>(&'a self, path: &'a Path) -> LocalFuture<'a, Result<(), String>>;
}

/// One core's layer residence: gauges and counters (cells: the core's own
/// state, copied into metrics by its tasks).
#[derive(Debug, Default)]
pub struct ResidenceStats {
    /// Bytes of layer files on the local disk.
    pub resident_bytes: Cell<u64>,
    /// Layer files on the local disk.
    pub resident_layers: Cell<u64>,
    /// Layers in the maps but only in object storage.
    pub remote_only_layers: Cell<u64>,
    /// Layers downloaded because a read needed them.
    pub downloads: Cell<u64>,
    /// Their bytes.
    pub download_bytes: Cell<u64>,
    /// Downloads that failed (the reads waiting for them failed too).
    pub download_failures: Cell<u64>,
    /// Layers evicted from the local disk.
    pub evictions: Cell<u64>,
    /// Their bytes.
    pub evicted_bytes: Cell<u64>,
    /// Blocks the scrub read from the disk and checked.
    pub scrubbed_blocks: Cell<u64>,
    /// Reads that found a block failing its check in a local layer file.
    pub corrupt_blocks: Cell<u64>,
    /// Of those, files replaced by their remote copy and read again.
    pub repairs: Cell<u64>,
}

impl ResidenceStats {
    pub(crate) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_add(n));
    }

    pub(crate) fn sub(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_sub(n));
    }
}
