//! Background processes of a local cluster: started detached (their own
//! process group, stdin closed, output appended to a log file, so they
//! outlive the `quire` command that started them and hold none of its
//! pipes), found again by pid, and stopped within a bound.
//!
//! A pid read from a file is trusted only while the process it names is
//! alive (not a zombie) and its command line holds the path it was started
//! with (its data directory): a pid reused by an unrelated process is never
//! signalled.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// How long a process may take to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Starts `command` detached, its stdout and stderr appended to `log`.
/// The returned child may be dropped: the process goes on.
pub fn spawn_detached(command: &mut Command, log: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = file
        .try_clone()
        .with_context(|| format!("open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", command.get_program().display()))
}

/// Writes `pid` to `path` (replaced atomically).
pub fn write_pid(path: &Path, pid: u32) -> Result<()> {
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n")).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))
}

/// The pid on the first line of `path` (a pid file, or Postgres'
/// `postmaster.pid`), if the file exists and holds one.
pub fn read_pid(path: &Path) -> Option<u32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 1)
}

/// Whether `pid` is a live process (not a zombie) whose command line holds
/// `marker`.
pub fn is_ours(pid: u32, marker: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, None | Some('Z' | 'X')) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    !marker.is_empty() && cmdline.windows(marker.len()).any(|w| w == marker)
}

/// The live process of `pid_file`, if it is ours (see [`is_ours`]).
pub fn running(pid_file: &Path, marker: &Path) -> Option<u32> {
    read_pid(pid_file).filter(|&pid| is_ours(pid, marker))
}

/// How a stop went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running.
    WasDown,
    /// It exited on the first signal within the grace period.
    Exited,
    /// It outlived the grace period and was killed (its whole group).
    Killed,
}

fn raw(pid: u32) -> Result<Pid> {
    Ok(Pid::from_raw(
        i32::try_from(pid).with_context(|| format!("pid {pid}"))?,
    ))
}

/// Waits up to `within` for `pid` to be gone; whether it is.
fn gone_within(pid: u32, marker: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !is_ours(pid, marker) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Sends `signal` to `pid` (if it is ours), waits up to `grace` for it to
/// exit, then kills its process group (it leads one: [`spawn_detached`],
/// and Postgres' postmaster started so) and waits again.
pub fn stop(pid: u32, marker: &Path, signal: Signal, grace: Duration) -> Result<Stopped> {
    if !is_ours(pid, marker) {
        return Ok(Stopped::WasDown);
    }
    let target = raw(pid)?;
    // It may exit between the check and the signal: then there is nothing to do.
    if kill(target, signal).is_err() && !is_ours(pid, marker) {
        return Ok(Stopped::WasDown);
    }
    if gone_within(pid, marker, grace) {
        return Ok(Stopped::Exited);
    }
    let _ = killpg(target, Signal::SIGKILL);
    let _ = kill(target, Signal::SIGKILL);
    if gone_within(pid, marker, KILL_GRACE) {
        return Ok(Stopped::Killed);
    }
    bail!(
        "process {pid} ({}) is still there {} s after SIGKILL",
        marker.display(),
        KILL_GRACE.as_secs()
    )
}

/// Waits until `ready` holds, at most `within`, failing early when `child`
/// exits; `what` names what is awaited, `log` where to look.
pub fn wait_ready(
    child: &mut Child,
    what: &str,
    log: &Path,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<Duration> {
    let began = Instant::now();
    loop {
        if ready() {
            return Ok(began.elapsed());
        }
        if let Some(status) = child.try_wait().context("wait for a child")? {
            bail!(
                "{what}: the process exited ({status}) before it was ready; its log {}:\n{}",
                log.display(),
                log_tail(log, 30)
            );
        }
        if began.elapsed() >= within {
            bail!(
                "{what}: not ready within {} s; its log {}:\n{}",
                within.as_secs(),
                log.display(),
                log_tail(log, 30)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

/// Whether something accepts TCP connections at `address` (within 200 ms).
pub fn listens(address: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    address.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_process_is_found_by_its_marker_and_stopped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let marker = dir.path().join("marker-arg");
        let log = dir.path().join("log");
        // `sh -c '…' sh MARKER`: the marker is in its command line. It
        // says when it ignores SIGTERM.
        let mut child = spawn_detached(
            Command::new("sh")
                .args(["-c", "trap '' TERM; touch \"$0.ready\"; sleep 30"])
                .arg(&marker),
            &log,
        )?;
        let ready_file = marker.with_extension("ready");
        let began = Instant::now();
        while !ready_file.exists() {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "the shell never started"
            );
            std::thread::sleep(POLL);
        }
        let pid = child.id();
        let pid_file = dir.path().join("x.pid");
        write_pid(&pid_file, pid)?;
        assert_eq!(running(&pid_file, &marker), Some(pid));
        assert_eq!(running(&pid_file, &dir.path().join("other")), None);
        // It ignores SIGTERM: killed after the grace period. The child is
        // reaped by a thread, as init would reap an orphan.
        let reaper = std::thread::spawn(move || child.wait());
        let how = stop(pid, &marker, Signal::SIGTERM, Duration::from_millis(300))?;
        assert_eq!(how, Stopped::Killed);
        let _ = reaper.join();
        assert_eq!(running(&pid_file, &marker), None);
        assert_eq!(
            stop(pid, &marker, Signal::SIGTERM, Duration::ZERO)?,
            Stopped::WasDown
        );
        Ok(())
    }

    #[test]
    fn pid_files_that_hold_no_pid_name_no_process() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("p");
        for text in ["", "x\n", "1\n", "-5\n", "99999999999\n"] {
            fs::write(&path, text)?;
            assert_eq!(read_pid(&path), None, "{text:?}");
        }
        assert_eq!(read_pid(&dir.path().join("absent")), None);
        Ok(())
    }
}
