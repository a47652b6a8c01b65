//! Postgres 17's formats, pure: bytes in, values out.
//!
//! This crate owns what Quire reads and writes in Postgres' own formats: the
//! identifiers and constants ([`types`], [`lsn`]), the WAL decoder and record
//! decoding ([`wal`]), `pg_control` and checkpoints ([`control`]), commit timestamps
//! ([`timestamp`]), and the storage key space ([`key`]). It does no I/O,
//! takes no clock and never panics on input: bad bytes are typed errors. The
//! folder around it also holds the build of Postgres itself (`build.sh`,
//! `patches/`) and Quire's C extensions (`extensions/`).
#![forbid(unsafe_code)]

pub mod checksum;
pub mod control;
pub mod key;
pub mod lsn;
pub mod timestamp;
pub mod types;
pub mod wal;

pub use key::Key;
pub use lsn::Lsn;
