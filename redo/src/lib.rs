//! WAL redo: turning a base page image plus WAL records into a page.
//!
//! This crate will own the per-core pool of Postgres `--wal-redo` processes
//! (one per tenant, pre-spawned, pipelined and batched, sandboxed, restarted
//! on error) and the Rust redo of the record kinds that need no Postgres:
//! full-page images, page-initialising records, visibility-map bit clears,
//! CLOG and multixact updates. A Rust path is enabled for a record kind only
//! once the oracle shows it byte-identical to Postgres' own redo.
#![forbid(unsafe_code)]
