//! End-to-end performance runs.
//!
//! This crate will hold the `GetPage` load generator (hdrhistogram percentiles
//! over the real page protocol) and the drivers that run pgbench against a
//! Quire fleet beside vanilla Postgres in the same run.
#![forbid(unsafe_code)]
