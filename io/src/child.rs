//! Child processes started and waited for without holding up the core.
//!
//! Starting a process forks the caller, which for a server with large
//! mappings costs milliseconds of page-table copying: [`spawn`] does it on
//! a short-lived thread of its own (not pinned to the executor's CPU) and
//! the task awaits the result ([`spawn_with`] also prepares the command
//! there: directories to make). [`wait_exit`] waits for a process to end by
//! asking the kernel without blocking (`waitpid` with `WNOHANG`) between
//! timer sleeps, and kills it once its grace period is over.
//! [`reap_detached`] is for the places that cannot await (a `Drop`): a
//! thread of its own waits for the process and reaps it, so none is left
//! a zombie.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The first pause between two checks of an exiting process; it doubles up
/// to [`EXIT_POLL_MAX`].
const EXIT_POLL_FIRST: Duration = Duration::from_micros(200);

/// The longest pause between two checks of an exiting process.
const EXIT_POLL_MAX: Duration = Duration::from_millis(20);

/// How long a killed process may take to be reaped before [`wait_exit`]
/// gives up on it (one in uninterruptible sleep cannot die sooner).
const KILLED_EXIT_MAX: Duration = Duration::from_secs(10);

/// Starts `command` on a thread of its own and waits for the result
/// without blocking the core.
pub async fn spawn(command: Command) -> io::Result<Child> {
    spawn_with(move || Ok(command)).await
}

/// Runs `prepare` (making the command: directories to create, files to
/// check) and starts what it returns, both on a thread of its own; waits
/// for the result without blocking the core.
pub async fn spawn_with<F>(prepare: F) -> io::Result<Child>
where
    F: FnOnce() -> io::Result<Command> + Send + 'static,
{
    let (sender, receiver) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("quire-spawn".into())
        .spawn(move || {
            unpin_current_thread();
            let started = prepare().and_then(|mut command| command.spawn());
            // The task may have stopped waiting: the child then sees the
            // end of its input (if it reads any) and is reaped here.
            if let Err(Ok(mut child)) = sender.send(started) {
                drop(child.stdin.take());
                reap_detached(child, Duration::from_secs(1));
            }
        })?;
    receiver
        .await
        .map_err(|_| io::Error::other("the thread starting the process ended without a result"))?
}

/// Lets the calling thread run on every CPU the process may use (the
/// executor's threads are pinned, and a thread inherits its creator's
/// CPUs). A failure leaves it where it was.
fn unpin_current_thread() {
    // SAFETY: a zeroed cpu_set_t is a valid (empty) set; sched_getaffinity
    // writes at most its size into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = size_of::<libc::cpu_set_t>();
    // The main thread's CPUs (its thread id is the process id) are the
    // process's own; executor threads are never the main thread.
    // SAFETY: getpid has no preconditions.
    let main = unsafe { libc::getpid() };
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(main, size, &raw mut set) } != 0 {
        return;
    }
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes; pid 0 is the
    // calling thread.
    let _ = unsafe { libc::sched_setaffinity(0, size, &raw const set) };
}

/// Waits for `child` to end: `grace` for it to exit by itself, then it is
/// killed (`SIGKILL`) and reaped. An error if it is still there after that
/// (or `waitpid` failed).
pub async fn wait_exit(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    let mut deadline = Instant::now() + grace;
    let mut killed = false;
    let mut pause = EXIT_POLL_FIRST;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            if killed {
                return Err(io::Error::other(format!(
                    "process {} did not end within {KILLED_EXIT_MAX:?} of SIGKILL",
                    child.id()
                )));
            }
            // An error means it has already ended; the next check reaps it.
            let _ = child.kill();
            killed = true;
            deadline = Instant::now() + KILLED_EXIT_MAX;
            pause = EXIT_POLL_FIRST;
        }
        crate::runtime::sleep(pause).await;
        pause = (pause * 2).min(EXIT_POLL_MAX);
    }
}

/// Reaps `child` on a thread of its own: `grace` for it to exit, then it is
/// killed. For code that cannot await (a `Drop`); a failure to start the
/// thread leaves the process killed and unreaped.
pub fn reap_detached(mut child: Child, grace: Duration) {
    let reaper = std::thread::Builder::new()
        .name("quire-reap".into())
        .spawn(move || {
            let deadline = Instant::now() + grace;
            let mut pause = EXIT_POLL_FIRST;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => {}
                    Ok(Some(_)) | Err(_) => return,
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(EXIT_POLL_MAX);
            }
            let _ = child.kill();
            let _ = child.wait();
        });
    if let Err(error) = reaper {
        eprintln!("quire-io: no thread to reap a child process ({error}); it is left unreaped");
    }
}

/// How a process ended, in words (`exited with status 1`, `killed by
/// signal 9`).
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;
    use crate::executors::{LocalConfig, run_local};

    #[test]
    fn a_process_that_ignores_its_grace_is_killed_and_reaped() {
        let outcome = run_local(&LocalConfig::default(), || async {
            let mut command = Command::new("sleep");
            command.arg("30").stdin(Stdio::null());
            let mut child = spawn(command).await.map_err(|e| e.to_string())?;
            let started = Instant::now();
            let status = wait_exit(&mut child, Duration::from_millis(50))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((describe_exit(status), started.elapsed()))
        })
        .expect("the executor ran");
        let (how, took) = outcome.expect("waited");
        assert_eq!(how, "killed by signal 9");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn a_process_that_exits_is_reaped_with_its_status() {
        let how = run_local(&LocalConfig::default(), || async {
            let mut command = Command::new("sh");
            command.args(["-c", "exit 3"]);
            let mut child = spawn(command).await.map_err(|e| e.to_string())?;
            let status = wait_exit(&mut child, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(describe_exit(status))
        })
        .expect("the executor ran");
        assert_eq!(how, Ok("exited with status 3".to_owned()));
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let result = run_local(&LocalConfig::default(), || async {
            spawn(Command::new("/nonexistent/quire-test-program"))
                .await
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .expect("the executor ran");
        assert_eq!(result, Err(io::ErrorKind::NotFound));
    }
}
