//! The background scrub: each core reads every layer file it holds on the
//! local disk, block by block from the disk (past the block cache), at a
//! bounded rate (`--scrub-mib-per-s`, per core; 0 turns it off), checking
//! each block against the layer's checksum table. A block that fails is
//! repaired when object storage holds the layer: the file is replaced by
//! its remote copy (checked whole) and the scrub goes on; otherwise it is
//! logged and counted, and reads of that block fail with an error naming
//! the file and block. A pass over every layer is followed by a pause.
//!
//! Metrics (in `quire_layer_residence`): `scrubbed_blocks`,
//! `corrupt_blocks`, `repairs`.

use std::rc::{Rc, Weak};
use std::time::Duration;

use quire_layerfmt::BLOCK_SIZE;
use quire_shard::layer_file::LayerFile;

use super::core::Core;

/// Blocks one scrub step reads.
const STEP_BLOCKS: u32 = 16;
/// The pause between two passes.
const PASS_PAUSE: Duration = Duration::from_secs(60);
/// The pause when the core holds no layer.
const IDLE_PAUSE: Duration = Duration::from_secs(5);

/// Starts `core`'s scrub, unless its rate is 0.
pub fn start(core: &Rc<Core>) {
    let rate = core.shared.scrub_bytes_per_second;
    if rate == 0 {
        return;
    }
    quire_io::spawn_local(scrub_loop(Rc::clone(core), rate)).detach();
}

async fn scrub_loop(core: Rc<Core>, bytes_per_second: u64) {
    // Let the start's own reads go first.
    quire_io::sleep(IDLE_PAUSE).await;
    loop {
        let layers = resident_layers(&core);
        if layers.is_empty() {
            quire_io::sleep(IDLE_PAUSE).await;
            continue;
        }
        for layer in layers {
            scrub_layer(&core, &layer, bytes_per_second).await;
        }
        quire_io::sleep(PASS_PAUSE).await;
    }
}

/// The layers of every timeline on the core that are on the local disk.
fn resident_layers(core: &Core) -> Vec<Weak<LayerFile>> {
    let mut layers = Vec::new();
    for shard in core.shards.borrow().values() {
        for served in shard.timelines.borrow().values() {
            let map = served.timeline.layer_map();
            layers.extend(
                map.layers()
                    .iter()
                    .filter(|layer| layer.is_resident())
                    .map(Rc::downgrade),
            );
        }
    }
    layers
}

/// Scrubs `layer` step by step; a layer compaction or GC removes meanwhile
/// is let go (the scrub must not keep it, nor its file, alive).
async fn scrub_layer(core: &Core, layer: &Weak<LayerFile>, bytes_per_second: u64) {
    let mut first = 0u32;
    loop {
        let Some(layer) = layer.upgrade() else {
            return;
        };
        let step = layer.scrub(first, STEP_BLOCKS).await;
        drop(layer);
        match step {
            Ok(Some(checked)) if checked > 0 => {
                first = first.saturating_add(checked);
                let bytes = u64::from(checked) * BLOCK_SIZE as u64;
                let nanos = bytes.saturating_mul(1_000_000_000) / bytes_per_second.max(1);
                quire_io::sleep(Duration::from_nanos(nanos)).await;
            }
            // The end of the file, or the layer left the disk (evicted).
            Ok(_) => return,
            Err(error) => {
                eprintln!("pageserver: core {}: scrub: {error}", core.index);
                return;
            }
        }
    }
}
