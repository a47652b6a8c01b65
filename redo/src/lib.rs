//! WAL redo: turning a base page image plus WAL records into a page.
//!
//! - [`record`]: what ingest stores for redo (a Postgres WAL record, or one
//!   of the small changes applied in Rust).
//! - [`rust_redo`]: `pg_xact`, multixact and visibility-map changes applied
//!   in Rust, exactly as Postgres' code changes the page.
//! - [`protocol`]: the bytes exchanged with a `--wal-redo` process
//!   (docs/redo-protocol.md).
//! - [`process`]: one sandboxed Postgres `--wal-redo` process
//!   (`postgres/extensions/quire_walredo`): started off the core, spoken to
//!   with asynchronous pipe I/O and deadlines, stopped without blocking.
//! - [`pool`]: the per-core pool (one process per tenant, spares started
//!   ahead in the background, restarts, idle stops, reaping in tasks of
//!   their own).
//! - [`batch`]: each tenant's lane, where concurrent requests merge into
//!   one round trip (at most [`batch::BATCH_PAGES_MAX`] pages).
//! - [`chain`]: the redo of a key's chain (Postgres and Rust records).
//!
//! Full-page images need no redo at all: ingest stores them as images.
#![forbid(unsafe_code)]

pub mod batch;
pub mod chain;
pub mod pool;
pub mod process;
pub mod protocol;
pub mod record;
pub mod rust_redo;

pub use batch::{BATCH_PAGES_MAX, LANE_QUEUE_MAX, PageResult};
pub use chain::TenantRedo;
pub use pool::{RedoPool, RedoStats, TenantKey};
pub use process::{RedoConfig, RedoProcess, RedoProcessError};
pub use record::RedoRecord;
