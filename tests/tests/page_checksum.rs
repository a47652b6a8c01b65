//! `quire_postgres::checksum` computes the checksums a real cluster
//! initialized with `--data-checksums` stores: every initialized page of
//! every relation file after a workload and a clean stop.

use std::fs;

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_postgres::checksum::{CHECKSUM_OFFSET, page_checksum, page_is_new};
use quire_postgres::types::{BLCKSZ, RELSEG_SIZE};
use quire_tests::pg_install;

#[test]
fn checksums_match_a_checksummed_clusters_pages() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default().initdb_arg("--data-checksums");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;
    pg.psql_script(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g;
         DELETE FROM t WHERE id % 4 = 0;
         VACUUM t;
         CHECKPOINT;",
    )?;
    pg.stop()?;
    let mut checked = 0u64;
    let mut wrong = Vec::new();
    let base = pg.datadir().join("base/5");
    for entry in fs::read_dir(&base)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        // `<rel>[_fork][.segment]`: block numbers count from the fork's start.
        let segment: u32 = name
            .split_once('.')
            .map_or(Ok(0), |(_, s)| s.parse())
            .with_context(|| format!("file name {name}"))?;
        let bytes = fs::read(&path)?;
        for (i, page) in bytes.chunks_exact(BLCKSZ).enumerate() {
            let page: &[u8; BLCKSZ] = page.try_into()?;
            if page_is_new(page) {
                continue;
            }
            let block = segment * RELSEG_SIZE + u32::try_from(i)?;
            let stored = u16::from_le_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]]);
            if page_checksum(page, block) != stored {
                wrong.push(format!("{name} block {block}"));
            }
            checked += 1;
        }
    }
    ensure!(checked > 1000, "only {checked} pages checked");
    ensure!(
        wrong.is_empty(),
        "{} of {checked} pages differ: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    println!("{checked} pages: every checksum equals the one Postgres stored");
    Ok(())
}
