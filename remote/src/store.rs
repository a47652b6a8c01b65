//! Turns a [`RemoteConfig`] into an `object_store` client: `AmazonS3` for a
//! bucket (path-style requests, so an S3-compatible server on a loopback
//! port works; plain HTTP allowed when the endpoint says `http://`), or
//! `LocalFileSystem` for a directory (with `fsync` of every object and its
//! directory). Either way the client sees names relative to the configured
//! prefix, so one code path serves both.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::config::{Location, RemoteConfig};
use crate::error::RemoteError;

/// The client for `config`'s location. Creates a directory that does not
/// exist yet.
pub fn build(config: &RemoteConfig) -> Result<Arc<dyn ObjectStore>, RemoteError> {
    match &config.location {
        Location::Directory(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| RemoteError::local("create the remote directory", dir, e))?;
            let store = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| RemoteError::Config(format!("{}: {e}", dir.display())))?
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
        Location::S3(s3) => {
            let retry = &config.retry;
            let client = ClientOptions::new()
                .with_timeout(retry.request_timeout)
                .with_connect_timeout(retry.request_timeout.min(std::time::Duration::from_secs(5)))
                .with_allow_http(
                    s3.endpoint
                        .as_ref()
                        .is_some_and(|e| e.starts_with("http://")),
                );
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_client_options(client)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: retry.backoff_initial,
                        max_backoff: retry.backoff_max,
                        base: 2.0,
                    },
                    max_retries: retry.request_retries,
                    retry_timeout: retry.attempt_timeout,
                });
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(token) = &s3.session_token {
                builder = builder.with_token(token);
            }
            let store = builder
                .build()
                .map_err(|e| RemoteError::Config(format!("s3://{}: {e}", s3.bucket)))?;
            if s3.prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(PrefixStore::new(store, s3.prefix.as_str())))
            }
        }
    }
}
