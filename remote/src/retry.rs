//! Attempts of one operation: each bounded in time, failures worth another
//! try ([`RemoteError::is_transient`]) retried after an exponential backoff,
//! at most [`RetryPolicy::attempts_max`] attempts in all, each retry
//! counted in the metrics.

use std::future::Future;

use crate::config::RetryPolicy;
use crate::error::RemoteError;
use crate::metrics::RemoteMetrics;

/// Runs `attempt` until it succeeds, fails for good, or the policy's
/// attempts are spent. `op` names the operation in metrics and the log,
/// `key` the object or prefix.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    metrics: &RemoteMetrics,
    op: &'static str,
    key: &str,
    mut attempt: F,
) -> Result<T, RemoteError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    let mut backoff = policy.backoff_initial;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = match tokio::time::timeout(policy.attempt_timeout, attempt()).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::TimedOut {
                op,
                key: key.to_owned(),
                after: policy.attempt_timeout,
            }),
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && attempts < policy.attempts_max => {
                metrics.retries.with_label_values(&[op]).inc();
                // The first retry and then every tenth are logged: an outage
                // shows without one line per attempt of every operation.
                if attempts == 1 || attempts.is_multiple_of(10) {
                    eprintln!(
                        "remote: {op} {key}: attempt {attempts} of {} failed, retrying in {backoff:?}: {error}",
                        policy.attempts_max
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(policy.backoff_max);
            }
            Err(error) => return Err(error),
        }
    }
}
