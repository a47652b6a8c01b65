//! Which layer holds a key's newest values below an LSN.
//!
//! Layers are rectangles of key range × LSN range. For one key, the layers
//! covering it do not overlap in LSN except where an image layer sits at
//! the last LSN of a delta layer below it; the search takes, among layers
//! covering the key that start below the bound, the one reaching highest
//! (its end clamped to the bound), preferring an image on a tie because it
//! already contains everything at or below its LSN. Layers are kept in
//! descending order of their LSN end, so the search stops at the first
//! layer that can no longer reach as high as the best found (a clamped
//! reach never exceeds the layer's end); a lookup visits the recent layers
//! and the ones covering its key, not the whole map. The map is immutable:
//! a change makes a new map, so readers keep a consistent snapshot (an
//! `Rc`) across their I/O while flushes and compactions publish new ones.

use std::rc::Rc;

use quire_postgres::{Key, Lsn};

use crate::layer_file::{LayerFile, LayerKindName, LayerName};

/// The layers of a timeline.
#[derive(Clone, Debug, Default)]
pub struct LayerMap {
    // Invariant: sorted by `lsn_end`, highest first.
    layers: Vec<Rc<LayerFile>>,
}

impl LayerMap {
    /// A map of `layers` (in any order), built in one sort.
    pub fn from_layers(mut layers: Vec<Rc<LayerFile>>) -> LayerMap {
        layers.sort_by_key(|layer| std::cmp::Reverse(layer.name().lsn_end));
        LayerMap { layers }
    }

    /// The layer to read next for `key` when everything at or above `below`
    /// has been read.
    pub fn search(&self, key: Key, below: Lsn) -> Option<&Rc<LayerFile>> {
        let mut best: Option<(&Rc<LayerFile>, Lsn, bool)> = None;
        for layer in &self.layers {
            let name = layer.name();
            if let Some((_, best_reach, _)) = best
                && name.lsn_end < best_reach
            {
                // Every layer from here on ends below the best reach.
                break;
            }
            if key < name.key_start || key >= name.key_end || name.lsn_start >= below {
                continue;
            }
            let reach = name.lsn_end.min(below);
            let image = name.kind == LayerKindName::Image;
            let better = match best {
                None => true,
                Some((_, best_reach, best_image)) => {
                    reach > best_reach || (reach == best_reach && image && !best_image)
                }
            };
            if better {
                best = Some((layer, reach, image));
            }
        }
        best.map(|(layer, _, _)| layer)
    }

    /// This map with `layer` added.
    #[must_use]
    pub fn with(&self, layer: Rc<LayerFile>) -> LayerMap {
        let mut layers = self.layers.clone();
        let at = layers.partition_point(|l| l.name().lsn_end >= layer.name().lsn_end);
        layers.insert(at, layer);
        LayerMap { layers }
    }

    /// This map without the layers named in `remove` and with `add`.
    #[must_use]
    pub fn replace(&self, remove: &[LayerName], add: Vec<Rc<LayerFile>>) -> LayerMap {
        let mut layers: Vec<Rc<LayerFile>> = self
            .layers
            .iter()
            .filter(|layer| !remove.contains(layer.name()))
            .cloned()
            .collect();
        layers.extend(add);
        LayerMap::from_layers(layers)
    }

    /// The layers' names.
    pub fn names(&self) -> Vec<LayerName> {
        self.layers.iter().map(|layer| *layer.name()).collect()
    }

    /// The layers.
    pub fn layers(&self) -> &[Rc<LayerFile>] {
        &self.layers
    }

    /// Layers in the map.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}
