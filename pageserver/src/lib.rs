//! The pageserver: WAL into timelines, and proof that the pages it rebuilds
//! are the pages Postgres wrote.
//!
//! - [`datadir`]: the relation, relmapper and SLRU files of a Postgres data
//!   directory.
//! - [`import`]: bootstrap a timeline from a cleanly stopped cluster (its
//!   files become images at its checkpoint LSN).
//! - [`ingest`]: WAL records become keys and values (pages, sizes, SLRU
//!   bits, relmapper and two-phase files, checkpoints).
//! - [`verify`]: `quire verify`, every page rebuilt and compared with
//!   Postgres' files after Postgres' own masking.
//!
//! It becomes the `quire-pageserver` binary (executors per core, page
//! service, WAL receiver, admin API) with the issues that add those.
#![forbid(unsafe_code)]

pub mod datadir;
pub mod import;
pub mod ingest;
pub mod verify;
pub mod wal_receiver;
