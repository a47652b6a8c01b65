//! Where the objects live and how hard to try: a `--remote` URL
//! (`s3://bucket/prefix` or `file:///dir`), the S3 endpoint, region and
//! credentials from the usual `AWS_*` environment variables, and the
//! limits (queue, concurrency, retries, part sizes), each with a default.
//!
//! Parsing is pure (the environment is passed in), so tests check it with
//! any environment; [`crate::store`] turns a config into a client.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::RemoteError;

/// Where the objects live.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// An S3 bucket (or an S3-compatible server), every name under
    /// `prefix`.
    S3(S3Location),
    /// A local directory (`object_store`'s local filesystem backend).
    Directory(PathBuf),
}

/// An S3 bucket and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// Names go under this prefix (no leading or trailing `/`; may be
    /// empty).
    pub prefix: String,
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`; AWS itself if unset.
    pub endpoint: Option<String>,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION`; `us-east-1` if unset.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Location {
    /// Everything but the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Location {
    /// As a `--remote` URL (with the S3 endpoint, never a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3(s3) => {
                write!(f, "s3://{}/{}", s3.bucket, s3.prefix)?;
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, " at {endpoint}")?;
                }
                Ok(())
            }
            Location::Directory(dir) => write!(f, "file://{}", dir.display()),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3(s3) => s3.fmt(f),
            Location::Directory(dir) => write!(f, "Directory({})", dir.display()),
        }
    }
}

/// How often and how long an operation is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one operation, the first included (at least 1).
    pub attempts_max: u32,
    /// The wait after the first failed attempt; doubled after each one.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// One attempt's time limit, the whole of a multipart upload included.
    pub attempt_timeout: Duration,
    /// One HTTP request's time limit (S3 only).
    pub request_timeout: Duration,
    /// Retries `object_store` itself makes of one HTTP request (S3 only;
    /// not counted in the metrics) before the attempt fails.
    pub request_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            request_retries: 3,
        }
    }
}

/// The bounds that keep memory and concurrency in check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting for the runtime; a full queue is back-pressure.
    pub queue_max: usize,
    /// Operations running at once.
    pub concurrency_max: usize,
    /// Worker threads of the runtime.
    pub threads: usize,
    /// A file up to this size is uploaded in one `PUT`; a larger one in
    /// parts of this size (S3 wants at least 5 MiB but for the last).
    pub part_size: usize,
    /// Parts of one multipart upload in flight at once. One upload holds at
    /// most `part_size * (parts_in_flight + 1)` bytes of its file.
    pub parts_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_max: 256,
            concurrency_max: 8,
            threads: 2,
            part_size: 8 << 20,
            parts_in_flight: 2,
        }
    }
}

/// The largest queue [`Limits::queue_max`] may name.
pub const QUEUE_MAX: usize = 1 << 16;
/// The most operations [`Limits::concurrency_max`] may run at once.
pub const CONCURRENCY_MAX: usize = 1024;
/// The smallest part S3 accepts (but for the last).
pub const PART_SIZE_MIN: usize = 5 << 20;
/// The largest part size accepted.
pub const PART_SIZE_MAX: usize = 256 << 20;

/// Everything the remote storage runtime is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Where the objects live.
    pub location: Location,
    /// Retries and time limits.
    pub retry: RetryPolicy,
    /// Queue, concurrency and memory bounds.
    pub limits: Limits,
}

impl RemoteConfig {
    /// Parses a `--remote` URL with the process' environment.
    pub fn from_url(url: &str) -> Result<RemoteConfig, RemoteError> {
        RemoteConfig::from_url_with_env(url, |name| std::env::var(name).ok())
    }

    /// Parses `s3://bucket[/prefix]` or `file:///absolute/dir`, reading
    /// S3's endpoint, region and credentials through `env`.
    pub fn from_url_with_env(
        url: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<RemoteConfig, RemoteError> {
        let bad = |what: &str| RemoteError::Config(format!("{url:?}: {what}"));
        let location = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if !valid_bucket(bucket) {
                return Err(bad("not a bucket name (3 to 63 of a-z, 0-9, '.', '-')"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix
                .split('/')
                .any(|part| part.is_empty() && !prefix.is_empty())
                || prefix.split('/').any(|part| part == "." || part == "..")
            {
                return Err(bad("the prefix has an empty, '.' or '..' part"));
            }
            let nonempty = |name: &str| env(name).filter(|value| !value.is_empty());
            let endpoint = nonempty("AWS_ENDPOINT_URL_S3").or_else(|| nonempty("AWS_ENDPOINT_URL"));
            if let Some(endpoint) = &endpoint
                && !endpoint.starts_with("http://")
                && !endpoint.starts_with("https://")
            {
                return Err(bad(&format!("endpoint {endpoint:?} is not an http(s) URL")));
            }
            Location::S3(S3Location {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                endpoint,
                region: nonempty("AWS_REGION")
                    .or_else(|| nonempty("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_owned()),
                access_key_id: nonempty("AWS_ACCESS_KEY_ID"),
                secret_access_key: nonempty("AWS_SECRET_ACCESS_KEY"),
                session_token: nonempty("AWS_SESSION_TOKEN"),
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file URL names an absolute directory: file:///dir"));
            }
            Location::Directory(PathBuf::from(path))
        } else {
            return Err(bad("expected s3://bucket/prefix or file:///dir"));
        };
        Ok(RemoteConfig {
            location,
            retry: RetryPolicy::default(),
            limits: Limits::default(),
        })
    }

    /// Checks the limits and the policy.
    pub fn check(&self) -> Result<(), RemoteError> {
        let limits = &self.limits;
        let bad = |what: &str| Err(RemoteError::Config(what.to_owned()));
        if !(1..=QUEUE_MAX).contains(&limits.queue_max) {
            return bad("queue_max must be 1 to 65536");
        }
        if !(1..=CONCURRENCY_MAX).contains(&limits.concurrency_max) {
            return bad("concurrency_max must be 1 to 1024");
        }
        if !(1..=64).contains(&limits.threads) {
            return bad("threads must be 1 to 64");
        }
        if !(PART_SIZE_MIN..=PART_SIZE_MAX).contains(&limits.part_size) {
            return bad("part_size must be 5 MiB to 256 MiB");
        }
        if !(1..=16).contains(&limits.parts_in_flight) {
            return bad("parts_in_flight must be 1 to 16");
        }
        if self.retry.attempts_max == 0 {
            return bad("attempts_max must be at least 1");
        }
        if self.retry.attempt_timeout.is_zero() || self.retry.request_timeout.is_zero() {
            return bad("time limits must be above zero");
        }
        Ok(())
    }
}

/// S3's bucket naming rules, as far as a URL can break them.
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn s3_urls_and_environment() {
        let config = RemoteConfig::from_url_with_env(
            "s3://my-bucket/some/prefix/",
            env(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "key"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ]),
        )
        .unwrap();
        let Location::S3(s3) = &config.location else {
            panic!("{config:?}");
        };
        assert_eq!(s3.bucket, "my-bucket");
        assert_eq!(s3.prefix, "some/prefix");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region, "eu-west-1");
        assert_eq!(s3.access_key_id.as_deref(), Some("key"));
        assert_eq!(s3.session_token, None);
        assert!(!format!("{config:?}").contains("secret"));
        config.check().unwrap();

        let plain = RemoteConfig::from_url_with_env(
            "s3://bkt",
            env(&[("AWS_REGION", "ap-south-1"), ("AWS_DEFAULT_REGION", "x")]),
        )
        .unwrap();
        let Location::S3(s3) = &plain.location else {
            panic!("{plain:?}");
        };
        assert_eq!((s3.prefix.as_str(), s3.region.as_str()), ("", "ap-south-1"));
        assert_eq!(s3.endpoint, None);
    }

    #[test]
    fn file_urls() {
        let config = RemoteConfig::from_url_with_env("file:///var/quire/remote", env(&[])).unwrap();
        assert_eq!(
            config.location,
            Location::Directory(PathBuf::from("/var/quire/remote"))
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in [
            "",
            "s3://",
            "s3://ab",
            "s3://Bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "file://relative/dir",
            "gs://bucket",
            "/plain/path",
        ] {
            assert!(
                matches!(
                    RemoteConfig::from_url_with_env(url, env(&[])),
                    Err(RemoteError::Config(_))
                ),
                "{url:?}"
            );
        }
        assert!(
            RemoteConfig::from_url_with_env("s3://bucket", env(&[("AWS_ENDPOINT_URL", "ftp://x")]))
                .is_err()
        );
    }

    #[test]
    fn limits_are_checked() {
        let good = RemoteConfig::from_url_with_env("file:///x", env(&[])).unwrap();
        good.check().unwrap();
        let mut bad = good.clone();
        bad.limits.queue_max = 0;
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.limits.part_size = 1 << 20;
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.retry.attempts_max = 0;
        assert!(bad.check().is_err());
    }
}
