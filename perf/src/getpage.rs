//! `quire bench getpage`: GetPage load against a running pageserver over
//! the real page protocol, with its physical peers measured in the same
//! run.
//!
//! N connections, each keeping `depth` `GetPage`s in flight, on one client
//! executor; blocks drawn uniformly, sequentially or Zipfian over one
//! relation fork (by default the timeline's largest, found through the
//! admin API); at the latest LSN or a fixed historical one; for a duration
//! or a request count. Latency is per request, from its send to its answer
//! (hdrhistogram, microsecond resolution). Then the peers, on the same
//! client executor: a loopback TCP round trip with GetPage's message sizes
//! (52 bytes out, 8,216 back) against a trivial echo thread, and an
//! `O_DIRECT` 8 KiB random read of a file on the filesystem under test.
//! The report names the machine (cores, kernel, filesystem) and ends with
//! one line a script reads:
//! `getpage: p50_us=… p99_us=… p999_us=… rps=… rtt_p50_us=… odirect_p50_us=…`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use quire_io::net::TcpStream;
use quire_io::{BlockFile, BlockFileWriter};
use quire_net::page_client::{ClientError, PageClient, Target};
use quire_net::page_protocol::{ReadLsn, Request, RequestLsn};
use quire_postgres::Lsn;
use quire_postgres::types::{BlockNo, RelTag};

/// How blocks are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// Uniformly at random.
    Uniform,
    /// 0, 1, 2, ... wrapping around (per connection, from its own start).
    Sequential,
    /// Zipfian with this exponent (hot blocks first).
    Zipf(f64),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct GetPageBench {
    /// The page service.
    pub address: SocketAddr,
    /// Tenant, timeline, shard and token.
    pub target: Target,
    /// The relation fork read and its size in blocks.
    pub rel: RelTag,
    /// Blocks of it.
    pub blocks: u32,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Block choice.
    pub pattern: Pattern,
    /// `None`: latest; else this LSN.
    pub lsn: Option<Lsn>,
    /// How long to run (after warm-up), unless `requests` ends it first.
    pub duration: Duration,
    /// Requests to run, if bounded by count.
    pub requests: Option<u64>,
    /// Read every block once before measuring (a warm server cache).
    pub warm_up: bool,
    /// Where the `O_DIRECT` peer's file goes (the filesystem under test).
    pub odirect_dir: PathBuf,
    /// Samples of each peer.
    pub peer_samples: u32,
    /// Run the `O_DIRECT` peer on an executor of its own on this CPU (the
    /// server's: a read's completion interrupt may go to one CPU, and a
    /// reader elsewhere pays a cross-CPU wake-up), spinning as `busy_poll`;
    /// `None`: on the client's executor.
    pub odirect_cpu: Option<usize>,
    /// Also time the round trip against an echo on a `quire_io` executor on
    /// this CPU, spinning this long before parking.
    pub runtime_echo: Option<(Option<usize>, Option<Duration>)>,
    /// How long the client's reads try the socket before waiting (as the
    /// executor's spin); the round-trip peers' client does the same.
    pub busy_poll: Option<Duration>,
}

/// What a run measured (microseconds).
#[derive(Clone, Debug)]
pub struct GetPageReport {
    /// GetPage latency.
    pub getpage: Histogram<u64>,
    /// Requests answered with a page.
    pub ok: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Seconds measured.
    pub seconds: f64,
    /// The loopback round trip.
    pub rtt: Histogram<u64>,
    /// The `O_DIRECT` read.
    pub odirect: Histogram<u64>,
    /// The round trip against an echo on the runtime (when asked for).
    pub rtt_runtime: Option<Histogram<u64>>,
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A small fast generator (splitmix64); the bench needs spread, not
/// security.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        u32::try_from((u128::from(self.next()) * u128::from(n)) >> 64).unwrap_or(0)
    }

    /// Uniform in [0, 1): the top 53 bits as a fraction.
    fn unit(&mut self) -> f64 {
        f64::from_bits(0x3FF0_0000_0000_0000 | (self.next() >> 12)) - 1.0
    }
}

/// Draws blocks by the pattern.
struct Blocks {
    pattern: Pattern,
    count: u32,
    next: u32,
    rng: Rng,
    /// The Zipfian CDF, block by rank.
    cdf: Rc<Vec<f64>>,
}

impl Blocks {
    fn draw(&mut self) -> u32 {
        match self.pattern {
            Pattern::Uniform => self.rng.below(self.count),
            Pattern::Sequential => {
                let block = self.next;
                self.next = (self.next + 1) % self.count;
                block
            }
            Pattern::Zipf(_) => {
                let u = self.rng.unit();
                let rank = self.cdf.partition_point(|&c| c < u);
                u32::try_from(rank).unwrap_or(0).min(self.count - 1)
            }
        }
    }
}

fn zipf_cdf(blocks: u32, exponent: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(blocks as usize);
    let mut sum = 0.0;
    for rank in 1..=blocks {
        sum += 1.0 / f64::from(rank).powf(exponent);
        cdf.push(sum);
    }
    for value in &mut cdf {
        *value /= sum;
    }
    cdf
}

impl GetPageBench {
    fn request(&self, block: u32) -> Result<Request> {
        let lsn = match self.lsn {
            None => ReadLsn::latest(Lsn(0)),
            Some(at) => ReadLsn::new(RequestLsn::At(at), at),
        }
        .map_err(|e| anyhow::anyhow!("read LSN: {e}"))?;
        Ok(Request::GetPage {
            lsn,
            rel: self.rel,
            block: BlockNo(block),
        })
    }

    /// Runs the load and the peers on the current executor.
    pub async fn run(&self) -> Result<GetPageReport> {
        if self.blocks == 0 {
            bail!("the relation has no blocks");
        }
        if self.warm_up {
            self.warm().await?;
        }
        let cdf = Rc::new(match self.pattern {
            Pattern::Zipf(exponent) => zipf_cdf(self.blocks, exponent),
            _ => Vec::new(),
        });
        let deadline = Instant::now() + self.duration;
        let per_connection = self
            .requests
            .map(|n| n.div_ceil(self.connections.max(1) as u64));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for n in 0..self.connections.max(1) {
            let this = self.clone();
            let blocks = Blocks {
                pattern: self.pattern,
                count: self.blocks,
                next: u32::try_from(n)
                    .unwrap_or(0)
                    .wrapping_mul(self.blocks / 8 + 1)
                    % self.blocks,
                rng: Rng(0x5EED ^ (n as u64) << 32),
                cdf: Rc::clone(&cdf),
            };
            tasks.push(quire_io::spawn_local(async move {
                this.connection(blocks, deadline, per_connection).await
            }));
        }
        let mut report = GetPageReport {
            getpage: histogram()?,
            ok: 0,
            errors: 0,
            first_error: None,
            seconds: 0.0,
            rtt: histogram()?,
            odirect: histogram()?,
            rtt_runtime: None,
        };
        for task in tasks {
            let (histogram, ok, errors, first_error) = task.await?;
            report.getpage.add(&histogram).context("merge histograms")?;
            report.ok += ok;
            report.errors += errors;
            report.first_error = report.first_error.or(first_error);
        }
        report.seconds = started.elapsed().as_secs_f64();
        report.rtt = loopback_rtt(self.peer_samples, self.busy_poll).await?;
        report.odirect = match self.odirect_cpu {
            None => odirect_reads(&self.odirect_dir, self.peer_samples).await?,
            Some(cpu) => {
                odirect_reads_on(&self.odirect_dir, self.peer_samples, cpu, self.busy_poll).await?
            }
        };
        if let Some((cpu, spin)) = self.runtime_echo {
            report.rtt_runtime =
                Some(loopback_rtt_runtime(self.peer_samples, cpu, spin, self.busy_poll).await?);
        }
        Ok(report)
    }

    /// Reads every block once, 32 at a time.
    async fn warm(&self) -> Result<()> {
        let mut client =
            PageClient::connect(self.address, &self.target, Duration::from_secs(10)).await?;
        let lsn = self.request(0)?;
        let Request::GetPage { lsn, .. } = lsn else {
            bail!("not a GetPage");
        };
        let mut block = 0;
        while block < self.blocks {
            let count = (self.blocks - block).min(32);
            client
                .call(Request::GetPages {
                    lsn,
                    rel: self.rel,
                    first_block: BlockNo(block),
                    count,
                })
                .await?;
            block += count;
        }
        Ok(())
    }

    async fn connection(
        &self,
        mut blocks: Blocks,
        deadline: Instant,
        limit: Option<u64>,
    ) -> Result<(Histogram<u64>, u64, u64, Option<String>)> {
        let mut client =
            PageClient::connect(self.address, &self.target, Duration::from_secs(10)).await?;
        // As its round-trip peers and the server do, so that QD1 compares
        // like with like (a read parked on the ring waits for a wake-up the
        // spinning peer never pays: 36-44 us against 19-22 us).
        client.set_busy_poll(self.busy_poll);
        let mut latency = histogram()?;
        let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
        let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(self.depth);
        let mut sent = 0u64;
        let more = |sent: u64| limit.is_none_or(|l| sent < l) && Instant::now() < deadline;
        loop {
            while sent_at.len() < self.depth.max(1) && more(sent) {
                client.send(self.request(blocks.draw())?)?;
                sent_at.push_back(Instant::now());
                sent += 1;
            }
            let Some(at) = sent_at.pop_front() else {
                break;
            };
            match client.recv().await {
                Ok(_) => ok += 1,
                Err(ClientError::Refused(error)) => {
                    errors += 1;
                    first_error
                        .get_or_insert_with(|| format!("{}: {}", error.error, error.message));
                }
                Err(error) => return Err(error.into()),
            }
            latency.record(micros(at.elapsed())).context("record")?;
            if self.connections > 1 && (ok + errors) % self.depth.max(1) as u64 == 0 {
                // Answers already read and a socket always readable never
                // make this task wait: without a turn per pipeline's worth,
                // one connection would starve the executor's others.
                quire_io::yield_now().await;
            }
        }
        Ok((latency, ok, errors, first_error))
    }
}

/// GetPage's request and answer sizes: the frames of version 1.
const REQUEST_BYTES: usize = 52;
const REPLY_BYTES: usize = 8216;

/// The loopback round trip: a thread echoing a GetPage-sized answer to
/// every GetPage-sized request, timed at one request in flight.
async fn loopback_rtt(samples: u32, busy_poll: Option<Duration>) -> Result<Histogram<u64>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the echo peer")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut request = [0u8; REQUEST_BYTES];
        let reply = vec![0u8; REPLY_BYTES];
        while stream.read_exact(&mut request).is_ok() {
            stream.write_all(&reply)?;
        }
        Ok(())
    });
    let rtt = time_round_trips(address, samples, busy_poll).await?;
    let _ = server.join();
    Ok(rtt)
}

/// The same round trip against an echo served by a `quire_io` executor on
/// `server_cpu` (spinning as configured): the runtime's own floor, what
/// the pageserver's sockets cost before it does any work.
pub async fn loopback_rtt_runtime(
    samples: u32,
    server_cpu: Option<usize>,
    spin_before_park: Option<Duration>,
    busy_poll: Option<Duration>,
) -> Result<Histogram<u64>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the echo peer")?;
    let address = listener.local_addr()?;
    drop(listener);
    let (ready, is_ready) = std::sync::mpsc::channel();
    let config = quire_io::LocalConfig {
        cpu: server_cpu,
        name: "quire-bench-echo".into(),
        spin_before_park,
        ..quire_io::LocalConfig::default()
    };
    let server = quire_io::spawn_executor(&config, move || async move {
        let listener = match quire_io::net::TcpListener::bind(address) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = ready.send(Err(error.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        stream.set_busy_poll(spin_before_park);
        let mut request = [0u8; REQUEST_BYTES];
        let reply = vec![0u8; REPLY_BYTES];
        while stream.read_exact(&mut request).await.is_ok() {
            if stream.write_all(&reply).await.is_err() {
                break;
            }
        }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    is_ready
        .recv()
        .context("the echo executor")?
        .map_err(|e| anyhow::anyhow!("echo peer: {e}"))?;
    let rtt = time_round_trips(address, samples, busy_poll).await?;
    let _ = server.join();
    Ok(rtt)
}

async fn time_round_trips(
    address: SocketAddr,
    samples: u32,
    busy_poll: Option<Duration>,
) -> Result<Histogram<u64>> {
    let mut stream = TcpStream::connect_timeout(address, Duration::from_secs(5)).await?;
    stream.set_nodelay(true)?;
    stream.set_busy_poll(busy_poll);
    let request = [1u8; REQUEST_BYTES];
    let mut reply = vec![0u8; REPLY_BYTES];
    let mut rtt = histogram()?;
    for i in 0..samples + samples / 10 {
        let start = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut reply).await?;
        if i >= samples / 10 {
            rtt.record(micros(start.elapsed())).context("record")?;
        }
    }
    Ok(rtt)
}

/// Blocks in the `O_DIRECT` peer's file (64 MiB).
const ODIRECT_BLOCKS: u32 = 8192;

/// `O_DIRECT` 8 KiB reads at random blocks of a fresh file in `dir`.
async fn odirect_reads(dir: &Path, samples: u32) -> Result<Histogram<u64>> {
    let path = dir.join(format!("quire-bench-odirect-{}", std::process::id()));
    let writer = BlockFileWriter::create(&path).await?;
    let chunk = vec![0x5Au8; 8192 * 128];
    let mut block = 0;
    while block < ODIRECT_BLOCKS {
        writer.write_blocks(block, &chunk).await?;
        block += 128;
    }
    let path = writer.finish().await?;
    let file = BlockFile::open(&path, u64::MAX).await?;
    let mut rng = Rng(0x0D1_EC7);
    let mut reads = histogram()?;
    for _ in 0..samples {
        let block = rng.below(ODIRECT_BLOCKS);
        let start = Instant::now();
        let read = file.read_blocks(block, 1).await?;
        reads.record(micros(start.elapsed())).context("record")?;
        if read.len() != 8192 {
            bail!("short O_DIRECT read");
        }
    }
    file.close().await?;
    quire_io::remove_file(&path).await?;
    Ok(reads)
}

/// [`odirect_reads`] on an executor of its own pinned to `cpu`; this one
/// waits for it without blocking its thread.
async fn odirect_reads_on(
    dir: &Path,
    samples: u32,
    cpu: usize,
    spin_before_park: Option<Duration>,
) -> Result<Histogram<u64>> {
    let (done, result) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    let config = quire_io::LocalConfig {
        cpu: Some(cpu),
        name: "quire-bench-odirect".into(),
        spin_before_park,
        ..quire_io::LocalConfig::default()
    };
    let reader = quire_io::spawn_executor(&config, move || async move {
        let _ = done.send(
            odirect_reads(&dir, samples)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    })
    .map_err(|e| anyhow::anyhow!("the O_DIRECT peer on CPU {cpu}: {e}"))?;
    let reads = loop {
        match result.try_recv() {
            Ok(reads) => break reads,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                quire_io::sleep(Duration::from_millis(5)).await;
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                bail!("the O_DIRECT peer on CPU {cpu} stopped without an answer")
            }
        }
    };
    let _ = reader.join();
    reads.map_err(|e| anyhow::anyhow!("O_DIRECT peer on CPU {cpu}: {e}"))
}

/// The machine: cores, kernel, and the filesystem holding `dir`.
pub fn machine(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, point, fstype, ..] = fields.as_slice() else {
            continue;
        };
        if dir.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), format!("{fstype} ({device} on {point})")));
        }
    }
    let filesystem = best.map_or_else(|| "unknown".into(), |(_, f)| f);
    format!(
        "machine: {cores} cores, kernel {kernel}, filesystem {filesystem} for {}",
        dir.display()
    )
}

/// The report's lines, the last one the script-readable summary.
pub fn render(bench: &GetPageBench, report: &GetPageReport) -> Vec<String> {
    let h = &report.getpage;
    #[allow(clippy::cast_precision_loss)]
    let rps = report.ok as f64 / report.seconds.max(1e-9);
    let rtt = report.rtt.value_at_quantile(0.5);
    let odirect = report.odirect.value_at_quantile(0.5);
    #[allow(clippy::cast_precision_loss)]
    let ratio = |a: u64, b: u64| a as f64 / (b.max(1)) as f64;
    let mut lines = vec![
        format!(
            "target: {} blocks of relation {}/{}/{} fork {}, {:?}, at {}, {} connections x depth {}",
            bench.blocks,
            bench.rel.spc_oid,
            bench.rel.db_oid,
            bench.rel.rel_number,
            bench.rel.fork.name(),
            bench.pattern,
            bench.lsn.map_or_else(|| "latest".into(), |l| l.to_string()),
            bench.connections,
            bench.depth
        ),
        format!(
            "getpage: {} pages, {} errors in {:.2} s: {rps:.0} requests/s; latency us p50 {} p99 {} p99.9 {} max {}",
            report.ok,
            report.errors,
            report.seconds,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ),
        format!(
            "peer: loopback TCP round trip, {REQUEST_BYTES} B out, {REPLY_BYTES} B back, one in flight: us p50 {rtt} p99 {} max {}",
            report.rtt.value_at_quantile(0.99),
            report.rtt.max()
        ),
        format!(
            "peer: O_DIRECT 8 KiB random read, one in flight, on {}: us p50 {odirect} p99 {} max {}",
            bench
                .odirect_cpu
                .map_or_else(|| "the client's CPU".into(), |cpu| format!("CPU {cpu}")),
            report.odirect.value_at_quantile(0.99),
            report.odirect.max()
        ),
        format!(
            "ratios: getpage p50 / round trip p50 = {:.2}; getpage p50 / (round trip + O_DIRECT read) p50 = {:.2}",
            ratio(h.value_at_quantile(0.5), rtt),
            ratio(h.value_at_quantile(0.5), rtt + odirect)
        ),
    ];
    if let Some(runtime) = &report.rtt_runtime {
        lines.push(format!(
            "peer: the same round trip against an echo on a quire_io executor (the runtime's floor): us p50 {} p99 {} max {}",
            runtime.value_at_quantile(0.5),
            runtime.value_at_quantile(0.99),
            runtime.max()
        ));
    }
    if let Some(error) = &report.first_error {
        lines.push(format!("first error: {error}"));
    }
    lines.push(format!(
        "getpage: p50_us={} p99_us={} p999_us={} rps={rps:.0} rtt_p50_us={rtt} odirect_p50_us={odirect}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ));
    lines
}
