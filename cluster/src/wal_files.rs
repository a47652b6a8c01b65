//! Finding a cluster's WAL segment files.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The WAL segment files in `dir` (names of 24 hexadecimal digits), in LSN
/// order. Other entries (`archive_status`, `.partial` files) are skipped.
pub fn wal_segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    segments.sort();
    Ok(segments)
}
