//! Tenant shards, each owned by exactly one core.
//!
//! This crate owns a shard's timelines ([`timeline::Timeline`]): the
//! in-memory layer ([`in_memory_layer`]), freezing it and flushing it to L0
//! delta layers, the layer map ([`layer_map`]), GetPage@LSN reconstruction
//! across in-memory and on-disk layers ([`reconstruct`]), and the timeline
//! metadata replaced atomically on every flush ([`metadata`]); layer files
//! are read through the core's block cache ([`open_layer`]) and may live
//! only in object storage until a read needs them ([`layer_file`],
//! [`residence`]); L0 → L1
//! compaction ([`compact`]), image creation ([`image`]), GC ([`gc`]),
//! branching, the relation lookups over the key space ([`keyspace`]), the
//! commit-time index from a timestamp to an LSN ([`commit_time`]), and
//! waiting for ingest to reach an LSN ([`lsn_wait`]).
//! Its state is `!Send` and lives on its core; it takes no lock and makes
//! no cross-core hop on the GetPage path.
#![forbid(unsafe_code)]

pub mod commit_time;
pub mod compact;
mod flush;
pub mod gc;
pub mod image;
pub mod in_memory_layer;
pub mod keyspace;
pub mod layer_builder;
pub mod layer_file;
pub mod layer_map;
pub mod layer_name;
pub mod lsn_wait;
pub mod metadata;
pub mod open_layer;
pub mod reconstruct;
pub mod residence;
pub mod timeline;
pub mod value;

pub use commit_time::CommitPoint;
pub use gc::{GcPolicy, GcReport};
pub use image::{ImagePolicy, ImageReport};
pub use reconstruct::{ReconstructInputs, Redo, RedoError, materialize};
pub use timeline::{CoreContext, Timeline, TimelineError};
pub use value::Value;
