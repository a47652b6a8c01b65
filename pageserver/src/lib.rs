//! The pageserver process.
//!
//! This crate will become the `quire-pageserver` binary: it starts one
//! executor per core, places tenant shards on them, and wires the page
//! service (`net`), storage (`shard`), redo (`redo`), the WAL receiver and the
//! HTTP admin API together. It gains its `main` with the first of those.
#![forbid(unsafe_code)]
