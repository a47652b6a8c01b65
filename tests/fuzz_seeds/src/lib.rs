//! The fuzz targets' seed files, `fuzz/seeds/<target>/<name>`: each crate's
//! `fuzz_seeds` test encodes real values with the crate's own writers and
//! hands the bytes to [`seed`], which checks that the committed file holds
//! them (a format change must refresh its seeds) or, with
//! `QUIRE_WRITE_FUZZ_SEEDS=1`, writes it. Test-only: it panics on failure.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Writes `fuzz/seeds/<target>/<name>`, or checks it holds `bytes`.
pub fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let path = dir.join(name);
    if std::env::var_os("QUIRE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(&path, bytes).expect("write seed");
    } else {
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (QUIRE_WRITE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} is stale: QUIRE_WRITE_FUZZ_SEEDS=1 rewrites it",
            path.display()
        );
    }
}
