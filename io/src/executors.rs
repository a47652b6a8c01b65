//! Executors: one pinned glommio executor per core, or a single one.
//!
//! [`run_per_core`] starts an executor on each requested CPU, runs the given
//! task on each, and waits for all of them. Before that, it checks that the
//! executors' I/O memory can be registered with io_uring (pinned by the
//! kernel): glommio falls back to unregistered buffers with no more than a
//! log line when the memlock limit is too low, and every direct read then
//! pays for pinning its pages. The check's result is returned and logged
//! loudly, so that a binary can refuse to run degraded.
//!
//! [`spawn_executor`] starts one executor on its own thread (pinned or not)
//! and returns a handle to join it; [`run_local`] does both. They are what
//! tests, benchmarks and one-shot commands run their async code on; they
//! skip the registration check (a server runs [`run_per_core`]).

use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::registration::{RegistrationStatus, probe_buffer_registration};

/// How to start the executors.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// CPUs to pin one executor each to.
    pub cpus: Vec<usize>,
    /// Registered I/O memory per executor, in bytes (glommio registers it
    /// with each of its three rings).
    pub io_memory_bytes: usize,
    /// Thread name prefix.
    pub name: String,
    /// Keep polling this long for new work before parking the thread
    /// (`None`: park at once). A parked executor costs a futex wake-up and a
    /// reschedule per arriving request; spinning trades a core's idle time
    /// for that latency.
    pub spin_before_park: Option<Duration>,
}

impl ExecutorConfig {
    /// One executor on each online CPU, with `io_memory_bytes` each.
    pub fn all_cpus(io_memory_bytes: usize, name: &str) -> ExecutorConfig {
        let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        ExecutorConfig {
            cpus: (0..count).collect(),
            io_memory_bytes,
            name: name.to_owned(),
            spin_before_park: None,
        }
    }
}

/// glommio's default registered I/O memory per executor (10 MiB), what a
/// [`LocalConfig::default`] executor gets.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 10 << 20;

/// How to start one executor ([`spawn_executor`], [`run_local`]).
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// The CPU to pin it to; `None`: the scheduler places its thread.
    pub cpu: Option<usize>,
    /// Registered I/O memory, in bytes.
    pub io_memory_bytes: usize,
    /// Its thread's name.
    pub name: String,
    /// See [`ExecutorConfig::spin_before_park`].
    pub spin_before_park: Option<Duration>,
}

impl Default for LocalConfig {
    /// Unpinned, [`IO_MEMORY_BYTES_DEFAULT`], named `quire-local`.
    fn default() -> LocalConfig {
        LocalConfig {
            cpu: None,
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            name: "quire-local".to_owned(),
            spin_before_park: None,
        }
    }
}

/// Why executors could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// glommio refused to start an executor.
    #[error("starting the executor {executor}: {detail}")]
    Start {
        /// Its name and CPU.
        executor: String,
        /// glommio's error.
        detail: String,
    },
    /// An executor's task panicked or its thread failed.
    #[error("the executor {executor} failed: {detail}")]
    Join {
        /// Its name and CPU.
        executor: String,
        /// What happened.
        detail: String,
    },
}

fn describe(name: &str, cpu: Option<usize>) -> String {
    match cpu {
        Some(cpu) => format!("{name} on CPU {cpu}"),
        None => format!("{name} (unpinned)"),
    }
}

/// A running single executor; [`join`](Self::join) waits for its task.
/// Dropping the handle leaves the executor running until its task ends
/// (or the process exits).
pub struct ExecutorHandle<T: Send + 'static> {
    handle: glommio::ExecutorJoinHandle<T>,
    executor: String,
}

impl<T: Send + 'static> std::fmt::Debug for ExecutorHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExecutorHandle({})", self.executor)
    }
}

impl<T: Send + 'static> ExecutorHandle<T> {
    /// Waits for the executor's task and returns its output.
    pub fn join(self) -> Result<T, ExecutorError> {
        let executor = self.executor;
        self.handle.join().map_err(|e| ExecutorError::Join {
            executor,
            detail: e.to_string(),
        })
    }
}

/// Starts one executor on a thread of its own running `task()`.
pub fn spawn_executor<T, F, Fut>(
    config: &LocalConfig,
    task: F,
) -> Result<ExecutorHandle<T>, ExecutorError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let placement = config.cpu.map_or(Placement::Unbound, Placement::Fixed);
    let executor = describe(&config.name, config.cpu);
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&config.name)
        .io_memory(config.io_memory_bytes);
    if let Some(spin) = config.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    let handle = builder.spawn(task).map_err(|e| ExecutorError::Start {
        executor: executor.clone(),
        detail: e.to_string(),
    })?;
    Ok(ExecutorHandle { handle, executor })
}

/// Runs `task()` on one new executor and waits for its output.
pub fn run_local<T, F, Fut>(config: &LocalConfig, task: F) -> Result<T, ExecutorError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    spawn_executor(config, task)?.join()
}

/// Starts one executor per CPU of `config`, runs `task(core_index)` on each,
/// and returns their results in CPU order with the registration status.
pub fn run_per_core<T, F, Fut>(
    config: &ExecutorConfig,
    task: F,
) -> Result<(RegistrationStatus, Vec<T>), ExecutorError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let status = probe_buffer_registration(config.io_memory_bytes);
    if let RegistrationStatus::Unregistered { reason } = &status {
        eprintln!(
            "quire-io: WARNING: io_uring buffer registration of {} bytes per executor failed ({reason}); \
             glommio will fall back to unregistered buffers and every direct read will pin its pages. \
             Run with CAP_IPC_LOCK or raise the memlock limit.",
            config.io_memory_bytes
        );
    }
    let mut handles = Vec::with_capacity(config.cpus.len());
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let task = task.clone();
        let local = LocalConfig {
            cpu: Some(cpu),
            io_memory_bytes: config.io_memory_bytes,
            name: format!("{}-{index}", config.name),
            spin_before_park: config.spin_before_park,
        };
        handles.push(spawn_executor(&local, move || task(index))?);
    }
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.join()?);
    }
    Ok((status, results))
}
