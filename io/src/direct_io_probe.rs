//! Makes glommio's per-device poll-ring probe see real data.
//!
//! The first direct-I/O file an executor opens on a device decides, for
//! that executor thread, whether reads on the device go to the kernel's
//! polled ring: glommio reads a few bytes at offset 0 and takes success as
//! "polling works". On an empty new file that read succeeds without any
//! I/O, so polling is wrongly enabled and every later read on the device
//! fails with `EOPNOTSUPP` (measured here on a virtio disk). Before a file
//! is created empty, [`prime_device_of`] opens a small file with real data
//! on the same device once per thread, so the probe answers truthfully.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use glommio::io::DmaFile;

use crate::block_file::FileError;

thread_local! {
    static PRIMED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Numbers the probe files of this process: executors on several threads
/// may prime one directory at once, and each needs a file of its own.
static PROBES: AtomicU64 = AtomicU64::new(0);

fn error(operation: &'static str, path: &Path, source: impl Into<std::io::Error>) -> FileError {
    FileError {
        operation,
        path: path.display().to_string(),
        source: source.into(),
    }
}

/// Lets the executor's probe of `dir`'s device read real data (once per
/// thread and device).
pub async fn prime_device_of(dir: &Path) -> Result<(), FileError> {
    let device = std::fs::metadata(dir)
        .map_err(|e| error("stat", dir, e))?
        .dev();
    if PRIMED.with(|primed| primed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(format!(
        ".quire-direct-io-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut file = std::fs::File::create(&probe).map_err(|e| error("create", &probe, e))?;
        file.write_all(&[0x5A; 4096])
            .and_then(|()| file.sync_all())
            .map_err(|e| error("write", &probe, e))?;
    }
    let opened = DmaFile::open(&probe).await;
    let closed = match opened {
        Ok(file) => file.close().await.map_err(|e| error("close", &probe, e)),
        Err(e) => Err(error("open", &probe, e)),
    };
    let _ = std::fs::remove_file(&probe);
    closed?;
    PRIMED.with(|primed| primed.borrow_mut().insert(device));
    Ok(())
}
