//! The remote storage runtime's Prometheus series, registered in the
//! caller's registry (the pageserver's, served at `/metrics`). Recording is
//! an atomic add; the labelled series are resolved when an operation ends,
//! off the callers' cores.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every series of the remote storage runtime.
#[derive(Clone)]
pub struct RemoteMetrics {
    /// Operations finished, by operation and outcome (`ok`, `error`).
    pub operations: IntCounterVec,
    /// Attempts that failed and were tried again, by operation.
    pub retries: IntCounterVec,
    /// Objects written (files and byte strings).
    pub uploads: IntCounter,
    /// Bytes written to objects.
    pub upload_bytes: IntCounter,
    /// Objects read (to files or to memory).
    pub downloads: IntCounter,
    /// Bytes read from objects.
    pub download_bytes: IntCounter,
    /// Requests in the queue, not yet taken by the runtime.
    pub queue_depth: IntGauge,
    /// Operations running.
    pub in_flight: IntGauge,
    /// Submissions refused because the queue was full.
    pub queue_full: IntCounter,
}

impl RemoteMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<RemoteMetrics, prometheus::Error> {
        let metrics = RemoteMetrics {
            operations: IntCounterVec::new(
                Opts::new(
                    "quire_remote_operations_total",
                    "Remote storage operations finished, by operation and outcome.",
                ),
                &["op", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "quire_remote_retries_total",
                    "Remote storage attempts that failed and were tried again.",
                ),
                &["op"],
            )?,
            uploads: IntCounter::new("quire_remote_uploads_total", "Objects written.")?,
            upload_bytes: IntCounter::new(
                "quire_remote_upload_bytes_total",
                "Bytes written to objects.",
            )?,
            downloads: IntCounter::new("quire_remote_downloads_total", "Objects read.")?,
            download_bytes: IntCounter::new(
                "quire_remote_download_bytes_total",
                "Bytes read from objects.",
            )?,
            queue_depth: IntGauge::new(
                "quire_remote_queue_depth",
                "Remote storage requests waiting in the queue.",
            )?,
            in_flight: IntGauge::new(
                "quire_remote_in_flight",
                "Remote storage operations running.",
            )?,
            queue_full: IntCounter::new(
                "quire_remote_queue_full_total",
                "Submissions refused because the remote storage queue was full.",
            )?,
        };
        registry.register(Box::new(metrics.operations.clone()))?;
        registry.register(Box::new(metrics.retries.clone()))?;
        registry.register(Box::new(metrics.uploads.clone()))?;
        registry.register(Box::new(metrics.upload_bytes.clone()))?;
        registry.register(Box::new(metrics.downloads.clone()))?;
        registry.register(Box::new(metrics.download_bytes.clone()))?;
        registry.register(Box::new(metrics.queue_depth.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.queue_full.clone()))?;
        Ok(metrics)
    }

    /// The retries counted for `op` so far.
    pub fn retries_of(&self, op: &str) -> u64 {
        self.retries.with_label_values(&[op]).get()
    }
}
