//! Reading the `quire_smgr_count` extension's counters.
//!
//! The extension (`postgres/extensions/quire_smgr_count`) is a storage
//! manager over md.c that counts every callback; it proves the core patch's
//! smgr hook. The demo prints its counters and the tests assert on them.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::pg_cluster::PgCluster;

/// The counters by name (`readv_blocks`, `writev_blocks`, `chosen_unlogged`, ...),
/// read from a running cluster that preloads the extension.
pub fn read_smgr_counts(cluster: &PgCluster) -> Result<BTreeMap<String, u64>> {
    cluster.psql(
        "postgres",
        "CREATE EXTENSION IF NOT EXISTS quire_smgr_count",
    )?;
    let rows = cluster.psql("postgres", "SELECT callback, calls FROM quire_smgr_count()")?;
    parse_counts(&rows)
}

/// Parses psql's unaligned `name|number` rows.
fn parse_counts(rows: &str) -> Result<BTreeMap<String, u64>> {
    rows.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, count) = line
                .split_once('|')
                .with_context(|| format!("no '|' in row {line:?}"))?;
            let count = count
                .trim()
                .parse()
                .with_context(|| format!("parse count in row {line:?}"))?;
            Ok((name.to_owned(), count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_rejects_malformed_rows() {
        let counts = parse_counts("readv|12\nwritev|0\n").unwrap();
        assert_eq!(counts.get("readv"), Some(&12));
        assert_eq!(counts.get("writev"), Some(&0));
        assert!(parse_counts("readv 12\n").is_err());
        assert!(parse_counts("readv|many\n").is_err());
    }
}
