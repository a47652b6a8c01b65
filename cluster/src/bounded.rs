//! Running a child process with a deadline.
//!
//! Every command the cluster tooling runs (`initdb`, `pg_ctl`, `psql`, `pgbench`) goes
//! through here, so that a hung child fails the caller after a bounded time
//! instead of hanging a test run.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `command` with stdin closed, collects its output, and kills it if it
/// has not exited after `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {shown}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("wait for {shown}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            // The child may exit between try_wait and kill; either way it is gone.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {} s", timeout.as_secs_f64());
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: join_drain(stdout),
        stderr: join_drain(stderr),
    })
}

/// [`run_bounded`], failing unless the command exits with status 0; the error
/// carries its stderr.
pub fn run_checked(command: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = describe(command);
    let output = run_bounded(command, timeout)?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&output.stdout).trim_end()
        );
    }
    Ok(output)
}

fn describe(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

type Drain = Option<thread::JoinHandle<Vec<u8>>>;

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the capture; the exit status still reports the outcome.
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
}

fn join_drain(drain: Drain) -> Vec<u8> {
    drain
        .and_then(|handle| handle.join().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_status() {
        let output = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
        assert_eq!(output.status.code(), Some(3));
    }

    #[test]
    fn kills_a_child_past_its_deadline() {
        let started = Instant::now();
        let error = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(error.contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn checked_reports_stderr_of_a_failure() {
        let error = run_checked(
            Command::new("sh").args(["-c", "echo broken >&2; exit 1"]),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("broken"), "{error}");
    }
}
