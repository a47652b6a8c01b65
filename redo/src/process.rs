//! One Postgres `--wal-redo` process and the exchange of bytes with it.
//!
//! The process runs `postgres --wal-redo quire_walredo DIR` (as an
//! unprivileged user when we are root: Postgres refuses root), with its own
//! scratch directory. Requests are written while replies are read, both
//! pipes non-blocking, so a pipeline of any length cannot deadlock; every
//! exchange has a deadline, after which the process is killed.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use quire_io::pipe::{set_nonblocking, set_pipe_capacity, wait_ready};

use crate::protocol::{Reply, parse_replies};

/// Bytes asked for each pipe's buffer: a batch of 64 pages and their
/// records crosses in a few wake-ups rather than one per 64 KiB.
const PIPE_CAPACITY: usize = 1024 * 1024;

/// How to start redo processes.
#[derive(Clone, Debug)]
pub struct RedoConfig {
    /// The patched build's `bin/postgres`.
    pub postgres: PathBuf,
    /// `(uid, gid)` to run as, or `None` for ourselves (never root).
    pub run_as: Option<(u32, u32)>,
    /// Where each process gets its scratch directory (`redo-<slot>`).
    pub scratch_root: PathBuf,
    /// How long one exchange may take before the process is killed.
    pub timeout: Duration,
}

/// Why an exchange with a redo process failed.
#[derive(Debug, thiserror::Error)]
pub enum RedoProcessError {
    /// The process could not be started.
    #[error("could not start the redo process: {0}")]
    Spawn(String),
    /// The process reported an error (and exited).
    #[error("redo process error: {0}")]
    Replied(String),
    /// The process ended without a reply.
    #[error("redo process died: {0}")]
    Died(String),
    /// No reply within the deadline; the process was killed.
    #[error("redo process gave no reply within {0:?}; killed")]
    TimedOut(Duration),
    /// Bytes that are not the protocol.
    #[error("redo process broke the protocol: {0}")]
    Protocol(String),
}

impl RedoProcessError {
    /// Whether the same request may succeed on a fresh process (the process
    /// failed, not the request).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RedoProcessError::Died(_) | RedoProcessError::TimedOut(_)
        )
    }
}

/// A running redo process.
pub struct RedoProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    /// Reply bytes read: `inbox[..unread]` is what no reply has consumed
    /// yet (a partial reply at most, between reads). Allocated once.
    inbox: Box<[u8]>,
    unread: usize,
    timeout: Duration,
    alive: bool,
    slot: usize,
}

impl RedoProcess {
    /// Starts a process with scratch directory `redo-<slot>` (reused by the
    /// slot's next process, so that a killed process's System V interlock
    /// segment is reclaimed rather than leaked).
    pub fn spawn(config: &RedoConfig, slot: usize) -> Result<RedoProcess, RedoProcessError> {
        let scratch = config.scratch_root.join(format!("redo-{slot}"));
        std::fs::create_dir_all(&scratch)
            .map_err(|e| RedoProcessError::Spawn(format!("create {}: {e}", scratch.display())))?;
        let mut command = Command::new(&config.postgres);
        command
            .arg("--wal-redo")
            .arg("quire_walredo")
            .arg(&scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((uid, gid)) = config.run_as {
            for dir in [&config.scratch_root, &scratch] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| {
                    RedoProcessError::Spawn(format!("chown {}: {e}", dir.display()))
                })?;
            }
            command.uid(uid).gid(gid);
        }
        let mut child = command
            .spawn()
            .map_err(|e| RedoProcessError::Spawn(format!("{}: {e}", config.postgres.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RedoProcessError::Spawn("no pipes to the child".into()));
        };
        for fd in [stdin.as_fd(), stdout.as_fd()] {
            set_nonblocking(fd).map_err(|e| RedoProcessError::Spawn(format!("pipe: {e}")))?;
            // A refusal (a lowered pipe-max-size) only costs more wake-ups
            // per batch: the pipe keeps its default size.
            let _ = set_pipe_capacity(fd, PIPE_CAPACITY);
        }
        Ok(RedoProcess {
            child,
            stdin: Some(stdin),
            stdout,
            inbox: vec![0u8; PIPE_CAPACITY].into_boxed_slice(),
            unread: 0,
            timeout: config.timeout,
            alive: true,
            slot,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The scratch slot it runs in.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Whether the process can take requests.
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Sends `request` (any number of messages) and returns the first
    /// `expected` replies. An error reply, a death or the deadline ends the
    /// process; the replies received before it are returned with the error.
    pub fn exchange(
        &mut self,
        request: &[u8],
        expected: usize,
    ) -> Result<Vec<Reply>, (Vec<Reply>, RedoProcessError)> {
        let mut replies = Vec::with_capacity(expected);
        if !self.alive {
            return Err((replies, RedoProcessError::Died("stopped earlier".into())));
        }
        let deadline = Instant::now() + self.timeout;
        let mut written = 0;
        loop {
            let used = parse_replies(&self.inbox[..self.unread], &mut replies)
                .map_err(|e| (Vec::new(), RedoProcessError::Protocol(e)))
                .inspect_err(|_| self.kill())?;
            self.consume(used);
            if let Some(pos) = replies.iter().position(|r| matches!(r, Reply::Error(_))) {
                let Reply::Error(message) = replies.remove(pos) else {
                    unreachable!("position found an error reply");
                };
                replies.truncate(pos);
                self.reap();
                return Err((replies, RedoProcessError::Replied(message)));
            }
            if replies.len() >= expected && written == request.len() {
                replies.truncate(expected);
                return Ok(replies);
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Err((replies, RedoProcessError::TimedOut(self.timeout)));
            }
            let want_write = written < request.len() && self.stdin.is_some();
            let ready = wait_ready(
                self.stdout.as_fd(),
                self.stdin.as_ref().filter(|_| want_write).map(AsFd::as_fd),
                deadline - now,
            )
            .map_err(|e| (Vec::new(), RedoProcessError::Protocol(format!("poll: {e}"))))?;
            if ready.writable
                && let Some(stdin) = self.stdin.as_mut()
            {
                match stdin.write(&request[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // The reader is gone; what it wrote before dying (an
                    // error reply, or end of file) tells why.
                    Err(_) => {
                        self.stdin = None;
                        written = request.len();
                    }
                }
            }
            if ready.readable {
                match self.stdout.read(&mut self.inbox[self.unread..]) {
                    Ok(0) => {
                        // Let the replies parse once more: an error reply may
                        // have arrived together with the end of file.
                        let used =
                            parse_replies(&self.inbox[..self.unread], &mut replies).unwrap_or(0);
                        self.consume(used);
                        if let Some(Reply::Error(message)) = replies
                            .iter()
                            .find(|r| matches!(r, Reply::Error(_)))
                            .cloned()
                        {
                            replies.retain(|r| matches!(r, Reply::Ok(_)));
                            self.reap();
                            return Err((replies, RedoProcessError::Replied(message)));
                        }
                        let status = self.reap();
                        return Err((replies, RedoProcessError::Died(status)));
                    }
                    Ok(n) => self.unread += n,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => {
                        self.kill();
                        return Err((replies, RedoProcessError::Died(format!("read: {e}"))));
                    }
                }
            }
        }
    }

    /// Forgets the first `used` unread bytes (whole replies), moving the
    /// partial reply after them to the front of the inbox.
    fn consume(&mut self, used: usize) {
        self.inbox.copy_within(used..self.unread, 0);
        self.unread -= used;
    }

    /// Kills the process (a timeout, or a test) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.reap();
    }

    /// Waits for an exiting process; describes how it ended.
    fn reap(&mut self) -> String {
        self.alive = false;
        self.stdin = None;
        match self.child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "ended".into(),
            },
            Err(e) => format!("could not wait for it: {e}"),
        }
    }

    /// Stops the process: closing stdin makes it exit cleanly (removing its
    /// shared memory); it is killed if it has not after a short while.
    pub fn stop(mut self) {
        self.stop_in_place();
    }

    fn stop_in_place(&mut self) {
        if !self.alive {
            return;
        }
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.alive = false;
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.kill();
    }
}

impl Drop for RedoProcess {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}
