//! The small operations: put bytes (plainly or create-if-absent), get an
//! object into memory (bounded), list a prefix, delete a batch. Each is
//! retried under the policy; files are in `transfer`.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::RemoteError;
use crate::service::{Context, Operation};

/// The most keys one [`Delete`] may name (S3's `DeleteObjects` limit).
pub const DELETE_BATCH_MAX: usize = 1000;
/// The most objects a [`List`] returns before it fails.
pub const LIST_MAX: usize = 1 << 20;

/// `key` as an object path, refusing what is not a canonical one (empty
/// parts, `.`, `..`, a leading or trailing `/`).
pub(crate) fn object_path(key: &str) -> Result<Path, RemoteError> {
    let path = Path::parse(key).map_err(|_| RemoteError::InvalidKey {
        key: key.to_owned(),
    })?;
    if path.as_ref() != key || key.is_empty() {
        return Err(RemoteError::InvalidKey {
            key: key.to_owned(),
        });
    }
    Ok(path)
}

/// Whether a put may replace an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or replace.
    Overwrite,
    /// Create only if absent; [`RemoteError::AlreadyExists`] otherwise.
    /// A retried attempt whose first try did create the object (its answer
    /// lost) also finds it existing: callers must treat that as a loss they
    /// can survive (a generation claim then takes the next number).
    CreateIfAbsent,
}

/// Writes `bytes` to `key`.
pub struct PutBytes {
    /// The object.
    pub key: String,
    /// Its content.
    pub bytes: Bytes,
    /// Whether it may replace one.
    pub mode: WriteMode,
}

impl Operation for PutBytes {
    type Output = ();
    const NAME: &'static str = "put";

    async fn run(self, ctx: Arc<Context>) -> Result<(), RemoteError> {
        let path = object_path(&self.key)?;
        let mode = match self.mode {
            WriteMode::Overwrite => PutMode::Overwrite,
            WriteMode::CreateIfAbsent => PutMode::Create,
        };
        ctx.retry(Self::NAME, &self.key, || async {
            let options = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            ctx.store
                .put_opts(&path, PutPayload::from_bytes(self.bytes.clone()), options)
                .await
                .map_err(|e| RemoteError::store_write(Self::NAME, &self.key, e))
        })
        .await?;
        ctx.metrics.uploads.inc();
        ctx.metrics.upload_bytes.inc_by(self.bytes.len() as u64);
        Ok(())
    }
}

/// Reads `key` into memory, refusing an object over `max_bytes`.
pub struct Get {
    /// The object.
    pub key: String,
    /// The most bytes accepted.
    pub max_bytes: u64,
}

impl Operation for Get {
    type Output = Bytes;
    const NAME: &'static str = "get";

    async fn run(self, ctx: Arc<Context>) -> Result<Bytes, RemoteError> {
        let path = object_path(&self.key)?;
        let bytes = ctx
            .retry(Self::NAME, &self.key, || async {
                let result = ctx
                    .store
                    .get(&path)
                    .await
                    .map_err(|e| RemoteError::store(Self::NAME, &self.key, e))?;
                if result.meta.size > self.max_bytes {
                    return Err(RemoteError::TooLarge {
                        what: format!("object {}", self.key),
                        actual: result.meta.size,
                        max: self.max_bytes,
                    });
                }
                let mut stream = result.into_stream();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| RemoteError::store(Self::NAME, &self.key, e))?;
                    // The stated size was checked; a store sending more is
                    // stopped at the bound all the same.
                    if (bytes.len() + chunk.len()) as u64 > self.max_bytes {
                        return Err(RemoteError::TooLarge {
                            what: format!("object {}", self.key),
                            actual: (bytes.len() + chunk.len()) as u64,
                            max: self.max_bytes,
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(Bytes::from(bytes))
            })
            .await?;
        ctx.metrics.downloads.inc();
        ctx.metrics.download_bytes.inc_by(bytes.len() as u64);
        Ok(bytes)
    }
}

/// One object a [`List`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key (relative to the configured prefix, as every key here).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Lists every object under a folder (`prefix` names whole parts: `a/b`
/// finds `a/b/c`, never `a/bc`), sorted by key.
pub struct List {
    /// The folder, with or without a trailing `/`.
    pub prefix: String,
}

impl Operation for List {
    type Output = Vec<Listed>;
    const NAME: &'static str = "list";

    async fn run(self, ctx: Arc<Context>) -> Result<Vec<Listed>, RemoteError> {
        list_objects(&ctx, self.prefix.trim_end_matches('/'), None).await
    }
}

/// Lists the folders directly under a folder (`a/b` finds `a/b/c` for an
/// object `a/b/c/d`), sorted, without listing the objects inside them.
pub struct ListFolders {
    /// The folder, with or without a trailing `/`.
    pub prefix: String,
}

impl Operation for ListFolders {
    type Output = Vec<String>;
    const NAME: &'static str = "list_folders";

    async fn run(self, ctx: Arc<Context>) -> Result<Vec<String>, RemoteError> {
        let folder = self.prefix.trim_end_matches('/');
        let path = object_path(folder)?;
        let mut folders = ctx
            .retry(Self::NAME, folder, || async {
                let listed = ctx
                    .store
                    .list_with_delimiter(Some(&path))
                    .await
                    .map_err(|e| RemoteError::store(Self::NAME, folder, e))?;
                if listed.common_prefixes.len() > LIST_MAX {
                    return Err(RemoteError::TooLarge {
                        what: format!("folders under {folder}"),
                        actual: listed.common_prefixes.len() as u64,
                        max: LIST_MAX as u64,
                    });
                }
                Ok(listed
                    .common_prefixes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<String>>())
            })
            .await?;
        folders.sort();
        Ok(folders)
    }
}

/// The objects under `folder`, sorted by key; with `after`, only those
/// whose keys sort after it (S3 starts the listing there: a folder's few
/// `index-` objects are found without listing the layers before them).
pub(crate) async fn list_objects(
    ctx: &Context,
    folder: &str,
    after: Option<&str>,
) -> Result<Vec<Listed>, RemoteError> {
    let path = object_path(folder)?;
    let offset = after.map(object_path).transpose()?;
    let mut listed = ctx
        .retry(List::NAME, folder, || async {
            let mut stream = match &offset {
                Some(offset) => ctx.store.list_with_offset(Some(&path), offset),
                None => ctx.store.list(Some(&path)),
            };
            let mut listed = Vec::new();
            while let Some(meta) = stream
                .try_next()
                .await
                .map_err(|e| RemoteError::store(List::NAME, folder, e))?
            {
                if listed.len() == LIST_MAX {
                    return Err(RemoteError::TooLarge {
                        what: format!("objects under {folder}"),
                        actual: LIST_MAX as u64 + 1,
                        max: LIST_MAX as u64,
                    });
                }
                listed.push(Listed {
                    key: meta.location.to_string(),
                    size: meta.size,
                });
            }
            Ok(listed)
        })
        .await?;
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(listed)
}

/// Deletes up to [`DELETE_BATCH_MAX`] objects; one already gone counts as
/// deleted.
pub struct Delete {
    /// The objects.
    pub keys: Vec<String>,
}

impl Operation for Delete {
    type Output = ();
    const NAME: &'static str = "delete";

    async fn run(self, ctx: Arc<Context>) -> Result<(), RemoteError> {
        if self.keys.len() > DELETE_BATCH_MAX {
            return Err(RemoteError::TooLarge {
                what: "keys of a deletion batch".to_owned(),
                actual: self.keys.len() as u64,
                max: DELETE_BATCH_MAX as u64,
            });
        }
        let paths: Vec<Path> = self
            .keys
            .iter()
            .map(|key| object_path(key))
            .collect::<Result<_, _>>()?;
        let first = self.keys.first().map_or("", String::as_str);
        ctx.retry(Self::NAME, first, || async {
            let input = futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed();
            let mut results = ctx.store.delete_stream(input);
            while let Some(result) = results.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(RemoteError::store(Self::NAME, first, e)),
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_keys_are_object_paths() {
        assert!(object_path("tenants/a/b").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/./b", "a/../b"] {
            assert!(object_path(bad).is_err(), "{bad:?}");
        }
    }
}
