//! Flushing frozen in-memory layers to L0 delta layers.
//!
//! Oldest first, each frozen layer becomes one L0 delta layer covering the
//! whole key space over its LSN range. The layer file is made durable, then
//! the metadata listing it (with the new disk-consistent LSN) replaces the
//! old; only then does the in-memory copy go. A crash in between leaves an
//! unlisted file, deleted on load, and the WAL is ingested again.

use std::rc::Rc;

use quire_postgres::{Key, Lsn};

use crate::in_memory_layer::InMemoryLayer;
use crate::layer_builder::LayerBuilder;
use crate::layer_file::{LayerFile, LayerKindName, LayerName};
use crate::metadata::TimelineMetadata;
use crate::timeline::{Timeline, TimelineError};

impl Timeline {
    /// Writes every frozen layer to an L0 delta layer, oldest first, each
    /// made durable and listed in the metadata before the next.
    pub async fn flush(&self) -> Result<usize, TimelineError> {
        let _maintenance = self.maintenance.lock().await;
        self.flush_frozen().await
    }

    async fn flush_frozen(&self) -> Result<usize, TimelineError> {
        let mut flushed = 0;
        loop {
            let Some(layer) = self.state.borrow().frozen.first().cloned() else {
                return Ok(flushed);
            };
            let name = self.write_l0(&layer).await?;
            let file = LayerFile::open_in(&self.dir, name, &self.core).await?;
            self.publish(&[], vec![Rc::new(file)], name.lsn_end, None)
                .await?;
            self.state.borrow_mut().frozen.remove(0);
            if layer.has_file() {
                // Readers still holding the layer keep the open file.
                quire_io::remove_file(layer.file_path()).await?;
            }
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
        let mut builder = LayerBuilder::create(&self.dir, name, self.tenant_id, self.id).await?;
        for (key, lsn, at) in layer.entries() {
            let value = layer.value(at).await?;
            builder.add(key, lsn, &value).await?;
        }
        builder.finish().await
    }

    /// Publishes a layer map change: the metadata first (durably), then the
    /// in-memory map; a new GC cutoff goes with it when given. The caller
    /// holds `maintenance`.
    pub(crate) async fn publish(
        &self,
        remove: &[LayerName],
        add: Vec<Rc<LayerFile>>,
        disk_consistent_lsn: Lsn,
        gc_cutoff_lsn: Option<Lsn>,
    ) -> Result<(), TimelineError> {
        let map = Rc::new(self.layer_map().replace(remove, add));
        let ancestor = self.ancestor.as_ref().map(|(parent, at)| (parent.id, *at));
        let gc_cutoff_lsn = gc_cutoff_lsn.unwrap_or_else(|| self.gc_cutoff_lsn());
        TimelineMetadata {
            disk_consistent_lsn,
            ancestor,
            gc_cutoff_lsn,
            layers: map.names(),
        }
        .store(&self.dir)
        .await?;
        let mut state = self.state.borrow_mut();
        state.layers = map;
        state.disk_consistent_lsn = disk_consistent_lsn;
        state.gc_cutoff_lsn = gc_cutoff_lsn;
        Ok(())
    }
}
