//! The service's metrics, in Prometheus' text format at `/metrics`: one
//! registry, every series labelled with the core that records it. Each
//! core holds its own handles ([`CoreMetrics`]): recording is a relaxed
//! atomic add on that core's series, never a lock, and the admin thread
//! reads them when scraped. What lives in a core's `RefCell`s (the block
//! cache's counters, layer counts) the core copies into gauges once a
//! second.

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_02, 0.000_035, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3,
    0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Buckets of reads that waited for a download: 1 ms to 60 s.
const DOWNLOAD_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every series of the service.
pub struct Metrics {
    registry: Registry,
    getpage_seconds: HistogramVec,
    getpage_download_seconds: HistogramVec,
    residence: IntGaugeVec,
    requests: IntCounterVec,
    errors: IntCounterVec,
    connections: IntGaugeVec,
    cache: IntGaugeVec,
    index_cache: IntGaugeVec,
    redo_pages: IntGaugeVec,
    timeline_lsn: IntGaugeVec,
    ingest: IntGaugeVec,
    layers: IntGaugeVec,
    basebackup_seconds: HistogramVec,
    basebackup_bytes: IntCounterVec,
}

/// One counter per request kind.
#[derive(Clone)]
pub struct RequestCounters {
    /// `GetPage`.
    pub get_page: IntCounter,
    /// `GetPages`.
    pub get_pages: IntCounter,
    /// `Nblocks`.
    pub nblocks: IntCounter,
    /// `Exists`.
    pub exists: IntCounter,
    /// `DbSize`.
    pub db_size: IntCounter,
    /// `SlruSegment`.
    pub slru_segment: IntCounter,
}

/// One core's handles.
#[derive(Clone)]
pub struct CoreMetrics {
    /// Seconds from a page read's arrival in a batch to its pages being
    /// ready, per read.
    pub getpage_seconds: Histogram,
    /// The same, for the reads that waited for a layer's download.
    pub getpage_download_seconds: Histogram,
    /// Layers on the local disk and only in object storage, downloads and
    /// evictions (copied once a second).
    pub residence: IntGaugeVec,
    /// Seconds to write a basebackup.
    pub basebackup_seconds: Histogram,
    /// Bytes of basebackups written.
    pub basebackup_bytes: IntCounter,
    /// Requests by kind, resolved once (a labelled lookup takes the vector's
    /// lock; the request path must not).
    pub requests: RequestCounters,
    /// Errors answered, by code name (rare: looked up when counted).
    pub errors: IntCounterVec,
    /// Page connections open on the core.
    pub connections: IntGauge,
    /// Block cache hits, misses, evictions and bytes (copied once a second).
    pub cache: IntGaugeVec,
    /// Index cache hits, misses and evictions (copied once a second).
    pub index_cache: IntGaugeVec,
    /// Redo counters (copied once a second).
    pub redo_pages: IntGaugeVec,
    /// Layers by kind (copied once a second).
    pub layers: IntGaugeVec,
    /// Each timeline's ingested and disk-consistent LSNs (copied once a
    /// second; their difference is what a crash would re-ingest).
    pub timeline_lsn: IntGaugeVec,
    /// Each timeline's receiver: WAL bytes received, the lag behind the
    /// source's end of WAL, whether the L0 debt holds it (copied once a
    /// second).
    pub ingest: IntGaugeVec,
    core: String,
}

impl CoreMetrics {
    /// The core's label value.
    pub fn core(&self) -> &str {
        &self.core
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let getpage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "quire_getpage_seconds",
                "Time to serve a page read (GetPage or GetPages), per request",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["core"],
        )?;
        let (getpage_download_seconds, residence) = residence_metrics()?;
        let (basebackup_seconds, basebackup_bytes) = basebackup_metrics()?;
        let requests = IntCounterVec::new(
            Opts::new(
                "quire_page_requests_total",
                "Page-protocol requests by kind",
            ),
            &["core", "kind"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "quire_page_errors_total",
                "Page-protocol error answers by code",
            ),
            &["core", "code"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new("quire_page_connections", "Open page-protocol connections"),
            &["core"],
        )?;
        let cache = IntGaugeVec::new(
            Opts::new(
                "quire_block_cache",
                "Block cache counters (hits, misses, evictions, bytes)",
            ),
            &["core", "what"],
        )?;
        let index_cache = index_cache_gauges()?;
        let redo_pages = IntGaugeVec::new(
            Opts::new(
                "quire_redo",
                "Redo counters (pages through the wal-redo processes, Rust records, processes started)",
            ),
            &["core", "what"],
        )?;
        let timeline_lsn = IntGaugeVec::new(
            Opts::new(
                "quire_timeline_lsn",
                "A timeline's LSNs as byte positions (what=ingested|disk_consistent|source_end|remote_consistent)",
            ),
            &["core", "timeline", "what"],
        )?;
        let ingest = IntGaugeVec::new(
            Opts::new(
                "quire_ingest",
                "A timeline's WAL receiver (what=wal_bytes_received|lag_bytes|held_by_l0_debt|held_by_uploads)",
            ),
            &["core", "timeline", "what"],
        )?;
        let layers = IntGaugeVec::new(
            Opts::new(
                "quire_layers",
                "Layer files by kind (l0 is the compaction debt)",
            ),
            &["core", "kind"],
        )?;
        for collector in [
            Box::new(getpage_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(errors.clone()),
            Box::new(connections.clone()),
            Box::new(cache.clone()),
            Box::new(index_cache.clone()),
            Box::new(redo_pages.clone()),
            Box::new(timeline_lsn.clone()),
            Box::new(ingest.clone()),
            Box::new(layers.clone()),
            Box::new(getpage_download_seconds.clone()),
            Box::new(residence.clone()),
            Box::new(basebackup_seconds.clone()),
            Box::new(basebackup_bytes.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            getpage_seconds,
            getpage_download_seconds,
            residence,
            requests,
            errors,
            connections,
            cache,
            index_cache,
            redo_pages,
            timeline_lsn,
            ingest,
            layers,
            basebackup_seconds,
            basebackup_bytes,
        })
    }

    /// The registry every series is in (object storage's too).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Core `index`'s handles.
    pub fn core(&self, index: usize) -> CoreMetrics {
        let core = index.to_string();
        CoreMetrics {
            getpage_seconds: self.getpage_seconds.with_label_values(&[core.as_str()]),
            getpage_download_seconds: self
                .getpage_download_seconds
                .with_label_values(&[core.as_str()]),
            residence: self.residence.clone(),
            basebackup_seconds: self.basebackup_seconds.with_label_values(&[core.as_str()]),
            basebackup_bytes: self.basebackup_bytes.with_label_values(&[core.as_str()]),
            requests: {
                let kind = |k: &str| self.requests.with_label_values(&[core.as_str(), k]);
                RequestCounters {
                    get_page: kind("get_page"),
                    get_pages: kind("get_pages"),
                    nblocks: kind("nblocks"),
                    exists: kind("exists"),
                    db_size: kind("db_size"),
                    slru_segment: kind("slru_segment"),
                }
            },
            errors: self.errors.clone(),
            connections: self.connections.with_label_values(&[core.as_str()]),
            cache: self.cache.clone(),
            index_cache: self.index_cache.clone(),
            redo_pages: self.redo_pages.clone(),
            layers: self.layers.clone(),
            timeline_lsn: self.timeline_lsn.clone(),
            ingest: self.ingest.clone(),
            core,
        }
    }

    /// Everything, in Prometheus' text format.
    pub fn render(&self) -> Result<String> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .context("encode metrics")?;
        String::from_utf8(out).context("metrics are not UTF-8")
    }
}

/// The index cache's counters.
fn index_cache_gauges() -> Result<IntGaugeVec> {
    Ok(IntGaugeVec::new(
        Opts::new(
            "quire_index_cache",
            "Layer index block cache counters (hits, misses, evictions)",
        ),
        &["core", "what"],
    )?)
}

/// The basebackups' time histogram and byte counter.
fn basebackup_metrics() -> Result<(HistogramVec, IntCounterVec)> {
    let basebackup_seconds = HistogramVec::new(
        HistogramOpts::new(
            "quire_basebackup_seconds",
            "Time to write a basebackup, from the request to its last byte",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
        ]),
        &["core"],
    )?;
    let basebackup_bytes = IntCounterVec::new(
        Opts::new(
            "quire_basebackup_bytes_total",
            "Bytes of basebackups written",
        ),
        &["core"],
    )?;
    Ok((basebackup_seconds, basebackup_bytes))
}

/// Reads that waited for a download, and the layers' residence.
fn residence_metrics() -> Result<(HistogramVec, IntGaugeVec)> {
    let getpage_download_seconds = HistogramVec::new(
        HistogramOpts::new(
            "quire_getpage_download_seconds",
            "Time to serve a page read that waited for a layer's download from object storage",
        )
        .buckets(DOWNLOAD_BUCKETS.to_vec()),
        &["core"],
    )?;
    let residence = IntGaugeVec::new(
        Opts::new(
            "quire_layer_residence",
            "Layer files on the local disk and in object storage only (what=resident_layers|resident_bytes|remote_only_layers|downloads|download_bytes|download_failures|evictions|evicted_bytes|scrubbed_blocks|corrupt_blocks|repairs)",
        ),
        &["core", "what"],
    )?;
    Ok((getpage_download_seconds, residence))
}
