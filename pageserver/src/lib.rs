//! The pageserver: WAL into timelines, and proof that the pages it rebuilds
//! are the pages Postgres wrote.
//!
//! - [`datadir`]: the relation, relmapper and SLRU files of a Postgres data
//!   directory.
//! - [`import`]: bootstrap a timeline from a cleanly stopped cluster (its
//!   files become images at its checkpoint LSN).
//! - [`ingest`]: WAL records become keys and values (pages, sizes, SLRU
//!   bits, relmapper and two-phase files, checkpoints).
//! - [`remote`]: a timeline's layers and index uploaded to object storage
//!   in the order its spec sets (not yet used by the service).
//! - [`shard_filter`]: which values a shard of a sharded tenant stores
//!   (its own relation blocks, every other key) as it imports and ingests.
//! - [`verify`]: `quire verify`, every page rebuilt and compared with
//!   Postgres' files after Postgres' own masking.
//!
//! - [`service`]: `quire pageserver`, the thread-per-core server: tenant
//!   shards on cores, the page service, the admin API and metrics.
#![forbid(unsafe_code)]

pub mod basebackup;
pub mod datadir;
pub mod import;
pub mod ingest;
pub mod remote;
pub mod service;
pub mod shard_filter;
pub mod verify;
pub mod wal_receiver;
