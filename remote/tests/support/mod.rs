//! What the remote storage tests share: the two backends every test runs
//! against (a real S3 server, moto on a loopback port, and a local
//! directory), a fast retry policy, files of pseudo-random bytes, and a
//! plain executor to await on (the caller's side is not tokio: the
//! answers must work on any executor).
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use quire_cluster::S3Server;
use quire_remote::{RemoteConfig, RemoteStorage};

/// The bucket the tests use.
pub const BUCKET: &str = "quire-test";

/// Where a test's objects live.
pub enum Backend {
    /// moto, with objects under a prefix.
    S3(S3Server),
    /// A local directory.
    Dir(tempfile::TempDir),
}

impl Backend {
    /// A moto server.
    pub fn s3() -> Backend {
        Backend::S3(S3Server::start(BUCKET).expect("start moto"))
    }

    /// A fresh directory.
    pub fn dir() -> Backend {
        Backend::Dir(tempfile::tempdir().expect("temporary directory"))
    }

    /// Both, S3 first.
    pub fn both() -> Vec<Backend> {
        vec![Backend::s3(), Backend::dir()]
    }

    /// `s3` or `file`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::S3(_) => "s3",
            Backend::Dir(_) => "file",
        }
    }

    /// The URL and environment a pageserver would be given, with a retry
    /// policy fast enough for tests and 5 MiB parts.
    pub fn config(&self) -> RemoteConfig {
        let mut config = match self {
            Backend::S3(server) => {
                let env = server.env();
                RemoteConfig::from_url_with_env(&format!("s3://{BUCKET}/some/prefix"), |name| {
                    env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
                })
            }
            Backend::Dir(dir) => {
                RemoteConfig::from_url_with_env(&format!("file://{}", dir.path().display()), |_| {
                    None
                })
            }
        }
        .expect("test configuration");
        config.retry.attempts_max = 40;
        config.retry.backoff_initial = Duration::from_millis(50);
        config.retry.backoff_max = Duration::from_millis(500);
        config.retry.request_timeout = Duration::from_secs(5);
        config.retry.attempt_timeout = Duration::from_secs(60);
        config.retry.request_retries = 1;
        config.limits.part_size = 5 << 20;
        config
    }

    /// The server, if this is S3.
    pub fn server(&mut self) -> Option<&mut S3Server> {
        match self {
            Backend::S3(server) => Some(server),
            Backend::Dir(_) => None,
        }
    }
}

/// Starts the runtime for `config` with a registry of its own.
pub fn start(config: RemoteConfig) -> RemoteStorage {
    RemoteStorage::start(config, &prometheus::Registry::new()).expect("start remote storage")
}

/// Writes `len` pseudo-random bytes (a xorshift stream from `seed`) to
/// `path` and returns them.
pub fn write_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect();
    std::fs::write(path, &bytes).expect("write test file");
    bytes
}

/// Awaits `future` on a plain executor.
pub fn block_on<F: Future>(future: F) -> F::Output {
    futures::executor::block_on(future)
}
