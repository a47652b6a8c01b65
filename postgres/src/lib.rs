//! Postgres 17's formats, pure: bytes in, values out.
//!
//! This crate will own what Quire reads and writes in Postgres' own formats:
//! the WAL decoder and record decoding, the storage key space, page and
//! control-file layouts, and the generated checkpoint segment a compute
//! starts from. It does no I/O. The folder around it also holds the build of
//! Postgres itself (`build.sh`, `patches/`) and Quire's C extensions
//! (`extensions/`).
#![forbid(unsafe_code)]
