//! WAL redo: turning a base page image plus WAL records into a page.
//!
//! - [`record`]: what ingest stores for redo (a Postgres WAL record, or one
//!   of the small changes applied in Rust).
//! - [`rust_redo`]: `pg_xact`, multixact and visibility-map changes applied
//!   in Rust, exactly as Postgres' code changes the page.
//! - [`protocol`]: the bytes exchanged with a `--wal-redo` process
//!   (docs/redo-protocol.md).
//! - [`process`]: one sandboxed Postgres `--wal-redo` process
//!   (`postgres/extensions/quire_walredo`), with deadlines.
//! - [`pool`]: the per-core pool (one process per tenant, spares started
//!   ahead, restarts, idle stops) and the redo of a key's chain, batched.
//!
//! Full-page images need no redo at all: ingest stores them as images.
#![forbid(unsafe_code)]

pub mod pool;
pub mod process;
pub mod protocol;
pub mod record;
pub mod rust_redo;

pub use pool::{RedoPool, RedoStats, TenantKey, TenantRedo};
pub use process::{RedoConfig, RedoProcess, RedoProcessError};
pub use record::RedoRecord;
