//! Object storage for the pageserver: an S3 bucket (or an S3-compatible
//! server) or a local directory, through the `object_store` crate, so one
//! code path serves both. Specified in `docs/format/remote-storage.md`.
//!
//! This crate is the only one with a tokio runtime. [`RemoteStorage`] runs
//! it on threads of its own and takes [`Operation`]s through one bounded
//! queue: the thread-per-core executors submit without blocking (a full
//! queue is back-pressure, answered at once) and await a [`Pending`] that
//! works on any executor. It must never name the cores' runtime, nor be
//! called on the GetPage path.
//!
//! - `config`: the `--remote` URL, the `AWS_*` environment, limits and
//!   retry policy; `store`: the `object_store` client they make.
//! - `service`: the runtime, its queue, [`Pending`] and [`Refused`].
//! - `ops` (put, get, list, delete) and `transfer` (files, streamed), each
//!   retried with backoff (`retry`) and counted (`metrics`).
//! - `names`, `index` and `generation`: object names, the index codec and
//!   the generation object (pure), and the generation claim and check;
//!   `index_ops` uploads and finds indexes.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod generation;
pub mod index;
pub mod index_ops;
pub mod metrics;
pub mod names;
pub mod ops;
mod retry;
pub mod service;
mod store;
pub mod transfer;

pub use config::{Limits, Location, RemoteConfig, RetryPolicy};
pub use error::RemoteError;
pub use generation::{CheckGeneration, ClaimGeneration, GenerationStatus};
pub use index::{IndexLayer, TimelineIndex};
pub use index_ops::{LatestIndex, UploadIndex};
pub use metrics::RemoteMetrics;
pub use names::{Generation, Id, LayerFileName, TenantShard};
pub use ops::{Delete, Get, List, ListFolders, Listed, PutBytes, WriteMode};
pub use service::{Operation, Pending, Refused, RemoteStorage};
pub use transfer::{Download, Transferred, UploadFile};
