//! Tasks and time on the current core's executor: [`spawn_local`] (a
//! [`Task`] awaited to join it, or detached), [`yield_now`], [`sleep`], and
//! [`timeout`] / [`timeout_at`] around any future.
//!
//! Everything here must run inside an executor started by
//! [`executors`](crate::executors) (it panics otherwise, as the runtime
//! does); tasks never leave the core that spawned them, so their futures
//! need not be `Send`.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{Either, select};

/// A task running on this core's executor. Awaiting it joins it (its
/// output); dropping it cancels it at its next suspension point, so a task
/// meant to outlive its handle is [`detach`](Task::detach)ed.
#[must_use = "a dropped Task is cancelled: await it or detach it"]
pub struct Task<T>(glommio::Task<T>);

impl<T> Task<T> {
    /// Lets the task run to its end on its own; its output is dropped.
    pub fn detach(self) {
        drop(self.0.detach());
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> std::fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Task")
    }
}

/// Spawns `future` on this core's executor. The runtime may poll it at
/// once, inside this call, before returning: code that spawns must not
/// hold a `RefCell` borrow the new task takes before its first suspension.
pub fn spawn_local<T, F>(future: F) -> Task<T>
where
    T: 'static,
    F: Future<Output = T> + 'static,
{
    Task(glommio::spawn_local(future))
}

/// Lets every other task that is ready run once before this one goes on.
pub async fn yield_now() {
    glommio::executor().yield_now().await;
}

/// Waits `duration` without blocking the core.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// A future that did not finish in time (see [`timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

impl From<Elapsed> for std::io::Error {
    fn from(elapsed: Elapsed) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, elapsed)
    }
}

/// Runs `future` for at most `duration`: its output, or [`Elapsed`] (the
/// future is then dropped, wherever it was suspended).
///
/// A socket read under a deadline is better served by the stream's own
/// read timeout ([`TcpStream::read_with_deadline`](crate::net::TcpStream::read_with_deadline)):
/// dropping a read here loses no bytes, but the stream's timeout, if set,
/// keeps running for the next read.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let timer = pin!(glommio::timer::sleep(duration));
    match select(pin!(future), timer).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(((), _)) => Err(Elapsed(duration)),
    }
}

/// [`timeout`] with a deadline instead of a duration; a deadline already
/// past still polls `future` once (it may be ready).
pub async fn timeout_at<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    let duration = deadline.saturating_duration_since(Instant::now());
    timeout(duration, future).await
}
