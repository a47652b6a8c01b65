//! Tenant shards, each owned by exactly one core.
//!
//! This crate will own a shard's timelines: the in-memory layer, freezing and
//! flushing it to L0 delta layers, the layer map (key range × LSN range),
//! GetPage@LSN reconstruction across layers and ancestor timelines,
//! compaction, image generation, GC and branching, and the atomic timeline
//! metadata. Its state is `!Send` and lives on its core; it takes no lock and
//! makes no cross-core hop on the GetPage path.
#![forbid(unsafe_code)]
