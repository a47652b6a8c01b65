//! End-to-end performance runs.
//!
//! [`getpage`] is the GetPage load generator behind `quire bench getpage`:
//! connections × pipeline depth over the real page protocol, hdrhistogram
//! percentiles, and the physical peers (loopback round trip, `O_DIRECT`
//! read) measured in the same run. The pgbench drivers against a Quire
//! fleet beside vanilla Postgres will join it.
#![forbid(unsafe_code)]

pub mod getpage;
