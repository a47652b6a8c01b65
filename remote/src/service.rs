//! The remote storage runtime: a thread of its own running a tokio runtime,
//! fed through one bounded queue, and the handle callers submit operations
//! with.
//!
//! Callers never block. [`RemoteStorage::try_submit`] either queues the
//! operation or gives it back at once ([`Refused`]: the queue is full, which
//! is back-pressure, or the runtime has shut down);
//! [`RemoteStorage::submit`] awaits room in the queue. Either way the
//! answer is a [`Pending`], a future completed by a oneshot channel, which
//! any executor can await (a core's executor, a tokio runtime, a plain
//! `block_on`): nothing here asks the caller's runtime for anything.
//!
//! The runtime takes a request off the queue only when fewer than
//! `concurrency_max` operations are running, so requests beyond that wait
//! in the bounded queue, not in memory of their own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use prometheus::Registry;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::RemoteConfig;
use crate::error::RemoteError;
use crate::metrics::RemoteMetrics;

/// What every operation runs with.
pub struct Context {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) config: RemoteConfig,
    pub(crate) metrics: RemoteMetrics,
}

impl Context {
    /// Runs `attempt` under the retry policy (see [`crate::retry`]).
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        attempt: F,
    ) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RemoteError>>,
    {
        crate::retry::with_retries(&self.config.retry, &self.metrics, op, key, attempt).await
    }
}

/// Something the runtime can run: the crate's operations (`ops`,
/// `generation`).
pub trait Operation: Send + 'static {
    /// What it answers.
    type Output: Send + 'static;
    /// Its name in metrics and logs.
    const NAME: &'static str;
    /// Runs it on the runtime.
    fn run(
        self,
        ctx: Arc<Context>,
    ) -> impl Future<Output = Result<Self::Output, RemoteError>> + Send;
}

/// A queued operation with its answer's channel, types erased.
type Job = Box<dyn FnOnce(Arc<Context>) -> BoxFuture<'static, ()> + Send>;

/// The answer to a submitted operation, when it comes.
#[must_use = "an operation's outcome is only known by awaiting its Pending"]
pub struct Pending<T> {
    receiver: oneshot::Receiver<Result<T, RemoteError>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, RemoteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(RemoteError::ShutDown)))
    }
}

/// Why an operation was not queued; it is given back.
pub struct Refused<O> {
    /// The operation, not run.
    pub operation: O,
    /// Whether the runtime has shut down (else the queue was full).
    pub shut_down: bool,
}

impl<O> std::fmt::Debug for Refused<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refused")
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

/// What the handles share.
struct Shared {
    metrics: RemoteMetrics,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A handle on the remote storage runtime; clones share it.
#[derive(Clone)]
pub struct RemoteStorage {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

impl RemoteStorage {
    /// Builds the client for `config`'s location, registers the metrics in
    /// `registry` and starts the runtime's thread.
    pub fn start(config: RemoteConfig, registry: &Registry) -> Result<RemoteStorage, RemoteError> {
        config.check()?;
        let store = crate::store::build(&config)?;
        let metrics = RemoteMetrics::register(registry)
            .map_err(|e| RemoteError::Config(format!("register metrics: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.limits.threads)
            .thread_name("quire-remote-worker")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Config(format!("start the tokio runtime: {e}")))?;
        let (queue, requests) = mpsc::channel(config.limits.queue_max);
        let (stop, stopped) = watch::channel(false);
        let ctx = Arc::new(Context {
            store,
            config,
            metrics: metrics.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("quire-remote".to_owned())
            .spawn(move || runtime.block_on(dispatch(requests, ctx, stopped)))
            .map_err(|e| RemoteError::Config(format!("start the remote storage thread: {e}")))?;
        Ok(RemoteStorage {
            queue,
            shared: Arc::new(Shared {
                metrics,
                stop,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The runtime's metrics.
    pub fn metrics(&self) -> &RemoteMetrics {
        &self.shared.metrics
    }

    /// Queues `operation` if the queue has room; never waits.
    pub fn try_submit<O: Operation>(&self, operation: O) -> Result<Pending<O::Output>, Refused<O>> {
        match self.queue.try_reserve() {
            Ok(permit) => {
                let (job, pending) = job(operation);
                self.shared.metrics.queue_depth.inc();
                permit.send(job);
                Ok(pending)
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.shared.metrics.queue_full.inc();
                Err(Refused {
                    operation,
                    shut_down: false,
                })
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(Refused {
                operation,
                shut_down: true,
            }),
        }
    }

    /// Queues `operation`, awaiting room in the queue.
    pub async fn submit<O: Operation>(
        &self,
        operation: O,
    ) -> Result<Pending<O::Output>, RemoteError> {
        let permit = self
            .queue
            .reserve()
            .await
            .map_err(|_| RemoteError::ShutDown)?;
        let (job, pending) = job(operation);
        self.shared.metrics.queue_depth.inc();
        permit.send(job);
        Ok(pending)
    }

    /// Queues `operation` and awaits its answer.
    pub async fn call<O: Operation>(&self, operation: O) -> Result<O::Output, RemoteError> {
        self.submit(operation).await?.await
    }

    /// Stops the runtime: queued operations are dropped and running ones
    /// cancelled (their [`Pending`]s answer [`RemoteError::ShutDown`]), and
    /// the thread is joined. Blocks: call it from a plain thread, never from
    /// a core's executor. Later submissions are refused.
    pub fn shutdown(&self) {
        let _ = self.shared.stop.send(true);
        let thread = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            eprintln!("remote: the remote storage thread panicked");
        }
    }
}

/// Counts an operation in flight while it lives (a cancelled one too).
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(metrics: &RemoteMetrics) -> InFlight {
        metrics.in_flight.inc();
        InFlight(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `operation` as a job, and the future of its answer.
fn job<O: Operation>(operation: O) -> (Job, Pending<O::Output>) {
    let (sender, receiver) = oneshot::channel();
    let job: Job = Box::new(move |ctx: Arc<Context>| {
        Box::pin(async move {
            let metrics = ctx.metrics.clone();
            let running = InFlight::new(&metrics);
            let result = operation.run(ctx).await;
            drop(running);
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics
                .operations
                .with_label_values(&[O::NAME, outcome])
                .inc();
            // A caller that stopped waiting dropped its Pending; the outcome
            // is counted all the same.
            let _ = sender.send(result);
        })
    });
    (job, Pending { receiver })
}

/// The runtime's loop: takes a request when an operation slot is free and
/// runs it as a task. Ends when every handle is gone and the queue is empty
/// (running operations finish first), or at [`RemoteStorage::shutdown`]
/// (queued ones are dropped, running ones cancelled).
async fn dispatch(
    mut requests: mpsc::Receiver<Job>,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(ctx.config.limits.concurrency_max));
    let mut tasks = JoinSet::new();
    let stop_requested = async move {
        // The sender's end goes with the last handle: that is no request to
        // stop, so the loop then only ends with the queue.
        while stop.changed().await.is_ok() {
            if *stop.borrow() {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::pin!(stop_requested);
    let stopped = loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            () = &mut stop_requested => break true,
        };
        let Ok(permit) = permit else {
            break false;
        };
        let job = tokio::select! {
            job = requests.recv() => job,
            () = &mut stop_requested => break true,
        };
        let Some(job) = job else {
            break false;
        };
        ctx.metrics.queue_depth.dec();
        let ctx = ctx.clone();
        tasks.spawn(async move {
            job(ctx).await;
            drop(permit);
        });
    };
    if stopped {
        requests.close();
        while requests.try_recv().is_ok() {
            ctx.metrics.queue_depth.dec();
        }
        tasks.shutdown().await;
    } else {
        while tasks.join_next().await.is_some() {}
    }
}
