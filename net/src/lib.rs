//! The page protocol between computes and the pageserver.
//!
//! This crate will own the binary protocol specified in `docs/` (handshake
//! with tenant, timeline, shard and token; pipelined requests with ids;
//! vectored GetPage, Nblocks, Exists, DbSize, SLRU segment), as a pure codec,
//! and the page service that hands each connection to the core owning its
//! shard once, at handshake.
//!
//! Today it owns the signed access tokens ([`token`]) that the safekeepers
//! check and the page service will take at its handshake.
#![forbid(unsafe_code)]

pub mod token;
