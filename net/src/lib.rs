//! The page protocol between computes and the pageserver, and the identities
//! and tokens a connection carries.
//!
//! Today it owns the page protocol's pure codec ([`page_protocol`], specified
//! in `docs/protocol/page-service.md`), the tenant, timeline and shard
//! identities a connection names ([`id`]), and the signed access tokens
//! ([`token`]) that the safekeepers check and the page service takes at its
//! handshake; the page service's connection side ([`page_service`]: the
//! handshake, the pipelined, batched request loop over a session the
//! pageserver implements) and a client ([`page_client`]).
#![forbid(unsafe_code)]

pub mod id;
pub mod page_client;
pub mod page_protocol;
pub mod page_service;
pub mod token;
