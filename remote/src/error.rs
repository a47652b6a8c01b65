//! What can go wrong talking to object storage, and which failures are worth
//! another attempt ([`RemoteError::is_transient`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::index::IndexError;

/// Why a remote storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The configuration (a `--remote` URL, an environment variable, a
    /// limit) is not usable.
    #[error("remote storage configuration: {0}")]
    Config(String),
    /// A key that is not a valid object name.
    #[error("invalid object key {key:?}")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A create-if-absent put found the object already there.
    #[error("object {key} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The store failed the request (after `object_store`'s own retries).
    #[error("{op} {key}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
        /// Whether another attempt may succeed.
        transient: bool,
    },
    /// An attempt took longer than the policy allows.
    #[error("{op} {key}: no answer within {after:?}")]
    TimedOut {
        /// The operation.
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// The attempt's time limit.
        after: Duration,
    },
    /// A local file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Local {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An object's bytes are not what they must be.
    #[error("object {key}: {what}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// An index object that does not decode.
    #[error("object {key}: {source}")]
    Index {
        /// The key.
        key: String,
        /// The decoder's error.
        #[source]
        source: IndexError,
    },
    /// More than an operation's bound (bytes of a get, keys of a list or a
    /// deletion batch).
    #[error("{what}: {actual} is more than the most allowed, {max}")]
    TooLarge {
        /// What was counted.
        what: String,
        /// How many there were.
        actual: u64,
        /// The bound.
        max: u64,
    },
    /// A generation could not be claimed.
    #[error("claim a generation of {shard}: {what}")]
    Claim {
        /// The tenant shard's prefix.
        shard: String,
        /// Why not.
        what: String,
    },
    /// The runtime has shut down: the operation was not run, or did not
    /// finish.
    #[error("the remote storage runtime has shut down")]
    ShutDown,
}

impl RemoteError {
    /// Maps an `object_store` error of a read, list or delete: a missing
    /// object is [`RemoteError::NotFound`].
    pub(crate) fn store(op: &'static str, key: &str, source: object_store::Error) -> RemoteError {
        use object_store::Error as E;
        match source {
            E::NotFound { .. } => RemoteError::NotFound {
                key: key.to_owned(),
            },
            E::AlreadyExists { .. } | E::Precondition { .. } => RemoteError::AlreadyExists {
                key: key.to_owned(),
            },
            source => {
                let transient = matches!(source, E::Generic { .. } | E::JoinError { .. });
                RemoteError::Store {
                    op,
                    key: key.to_owned(),
                    source,
                    transient,
                }
            }
        }
    }

    /// Maps an `object_store` error of a write: a write cannot find its
    /// object missing, so "not found" means the bucket or directory is
    /// (being set up, or gone for a while): worth another attempt.
    pub(crate) fn store_write(
        op: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> RemoteError {
        match source {
            source @ object_store::Error::NotFound { .. } => RemoteError::Store {
                op,
                key: key.to_owned(),
                source,
                transient: true,
            },
            source => RemoteError::store(op, key, source),
        }
    }

    /// A local file error.
    pub(crate) fn local(
        what: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        RemoteError::Local {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether another attempt may succeed: the store's transport and
    /// server errors and time-outs are; a missing or existing object, a
    /// refused credential, a local file error, corruption and bounds are
    /// not.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Store { transient, .. } => *transient,
            RemoteError::TimedOut { .. } => true,
            RemoteError::Local { source, .. } => source.kind() == std::io::ErrorKind::Interrupted,
            _ => false,
        }
    }
}
