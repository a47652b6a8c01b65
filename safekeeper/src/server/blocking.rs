//! Blocking file-system work off the executor thread: the control file's
//! and the compute file's replacement (write, fsync, rename, directory
//! fsync) run on one helper thread, and the executor task that asked
//! awaits the result without blocking its core.
//!
//! Jobs reach the thread through a bounded queue of [`SYNC_QUEUE_MAX`]
//! jobs (a full queue makes the sender wait, never grow it) and come back
//! through a oneshot per job. The caller still awaits its job before it
//! goes on, so ordering is the caller's: the timeline's mutex stays held
//! across the await, and the acceptor's persist-before-reply rule holds as
//! when the fsync ran inline. The thread is started on first use and
//! shared by every executor of the process; it is the only one (fsyncs of
//! one disk gain little from more).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use futures::channel::{mpsc, oneshot};
use futures::lock::Mutex;
use futures::{SinkExt, StreamExt};

/// Jobs waiting for the helper thread at most (beyond the one it runs).
pub const SYNC_QUEUE_MAX: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The helper thread could not take or finish a job.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BlockingError {
    /// It could not be started.
    #[error("the file-sync helper thread did not start: {0}")]
    NotStarted(String),
    /// It stopped, or the job panicked.
    #[error("the file-sync helper thread dropped the job")]
    Dropped,
}

struct Helper {
    // One sender behind an async mutex: the queue holds at most
    // SYNC_QUEUE_MAX jobs plus the one a sender may always add.
    jobs: Mutex<mpsc::Sender<Job>>,
}

static HELPER: OnceLock<Result<Helper, String>> = OnceLock::new();

fn start() -> Result<Helper, String> {
    let (sender, mut receiver) = mpsc::channel::<Job>(SYNC_QUEUE_MAX);
    std::thread::Builder::new()
        .name("quire-sk-sync".into())
        .spawn(move || {
            futures::executor::block_on(async move {
                while let Some(job) = receiver.next().await {
                    // A panicking job drops its oneshot (the caller sees
                    // `Dropped`); the thread goes on with the next one.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(Helper {
        jobs: Mutex::new(sender),
    })
}

/// Runs `job` on the helper thread and waits (asynchronously) for its
/// result.
pub async fn run<T, F>(job: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let helper = HELPER
        .get_or_init(start)
        .as_ref()
        .map_err(|e| BlockingError::NotStarted(e.clone()))?;
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(job());
    });
    helper
        .jobs
        .lock()
        .await
        .send(job)
        .await
        .map_err(|_| BlockingError::Dropped)?;
    result.await.map_err(|_| BlockingError::Dropped)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{BlockingError, run};

    #[test]
    fn jobs_run_off_the_executor_thread_and_the_executor_keeps_running() {
        let outcome = quire_io::run_local(&quire_io::LocalConfig::default(), || async {
            let executor_thread = std::thread::current().id();
            let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
            let counter = std::rc::Rc::clone(&ticks);
            let ticker = quire_io::spawn_local(async move {
                loop {
                    quire_io::sleep(Duration::from_millis(5)).await;
                    counter.set(counter.get() + 1);
                }
            });
            // A job that blocks its thread for 200 ms.
            let job_thread = run(|| {
                std::thread::sleep(Duration::from_millis(200));
                std::thread::current().id()
            })
            .await
            .expect("the job runs");
            drop(ticker);
            let panicked = run(|| -> u32 { panic!("a failing job") }).await;
            let after = run(|| 7u32).await;
            (
                job_thread != executor_thread,
                ticks.get(),
                matches!(panicked, Err(BlockingError::Dropped)),
                after.ok(),
            )
        })
        .expect("executor");
        assert!(outcome.0, "the job ran on the executor's thread");
        assert!(
            outcome.1 >= 10,
            "the executor ran only {} ticks of 5 ms while a job blocked for 200 ms",
            outcome.1
        );
        assert!(outcome.2, "a panicking job is an error");
        assert_eq!(outcome.3, Some(7), "the helper survives a panicking job");
    }
}
