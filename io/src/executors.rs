//! One pinned glommio executor per core.
//!
//! [`run_per_core`] starts an executor on each requested CPU, runs the given
//! task on each, and waits for all of them. Before that, it checks that the
//! executors' I/O memory can be registered with io_uring (pinned by the
//! kernel): glommio falls back to unregistered buffers with no more than a
//! log line when the memlock limit is too low, and every direct read then
//! pays for pinning its pages. The check's result is returned and logged
//! loudly, so that a binary can refuse to run degraded.

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
}

impl ExecutorConfig {
    /// One executor on each online CPU, with `io_memory_bytes` each.
    pub fn all_cpus(io_memory_bytes: usize, name: &str) -> ExecutorConfig {
        let count = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        ExecutorConfig {
            cpus: (0..count).collect(),
            io_memory_bytes,
            name: name.to_owned(),
        }
    }
}

/// Why executors could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// glommio refused to start an executor.
    #[error("starting the executor on CPU {cpu}: {detail}")]
    Start {
        /// The CPU.
        cpu: usize,
        /// glommio's error.
        detail: String,
    },
    /// An executor's task panicked or its thread failed.
    #[error("the executor on CPU {cpu} failed: {detail}")]
    Join {
        /// The CPU.
        cpu: usize,
        /// What happened.
        detail: String,
    },
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
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("{}-{index}", config.name))
            .io_memory(config.io_memory_bytes)
            .spawn(move || task(index))
            .map_err(|e| ExecutorError::Start {
                cpu,
                detail: e.to_string(),
            })?;
        handles.push((cpu, handle));
    }
    let mut results = Vec::with_capacity(handles.len());
    for (cpu, handle) in handles {
        results.push(handle.join().map_err(|e| ExecutorError::Join {
            cpu,
            detail: e.to_string(),
        })?);
    }
    Ok((status, results))
}
