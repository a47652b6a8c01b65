//! One Postgres `--wal-redo` process and the exchange of bytes with it.
//!
//! The process runs `postgres --wal-redo quire_walredo DIR` (as an
//! unprivileged user when we are root: Postgres refuses root), with its own
//! scratch directory. It is started on a thread of its own
//! ([`quire_io::child::spawn_with`]: the fork never stalls the core) and
//! counts as started once it has answered a ping, so no request waits for
//! Postgres to initialise. Requests are written while replies are read,
//! both as asynchronous operations on the core's executor
//! ([`quire_io::pipe`]), so a pipeline of any length cannot deadlock and a
//! slow or hung process holds up only the task awaiting it. Every exchange
//! has a deadline, after which the process is killed. [`RedoProcess::stop`]
//! closes its stdin (at the end of its input it exits by itself) and kills
//! it after a grace period, awaiting timers, never sleeping.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use quire_io::child::{describe_exit, reap_detached, wait_exit};
use quire_io::pipe::{PipeReader, PipeWriter, set_pipe_capacity};

use crate::protocol::{self, Reply, parse_replies};

/// Bytes asked for each pipe's buffer: a batch of 64 pages and their
/// records crosses in a few operations rather than one per 64 KiB.
const PIPE_CAPACITY: usize = 1024 * 1024;

/// How long a stopped process (its stdin closed) may take to exit before
/// it is killed.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// How long a process that closed its stdout may take to exit before it is
/// killed (it is ending: a crash, a signal, or an error reply sent).
const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);

/// How long a process dropped without [`RedoProcess::stop`] may take to
/// see the end of its input and exit before the reaping thread kills it.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// How to start redo processes.
#[derive(Clone, Debug)]
pub struct RedoConfig {
    /// The patched build's `bin/postgres`.
    pub postgres: PathBuf,
    /// `(uid, gid)` to run as, or `None` for ourselves (never root).
    pub run_as: Option<(u32, u32)>,
    /// Where each process gets its scratch directory (`redo-<slot>`).
    pub scratch_root: PathBuf,
    /// How long one exchange may take before the process is killed; also
    /// how long a request waits for a process when none is ready.
    pub timeout: Duration,
}

/// Why an exchange with a redo process failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    /// No process was ready for the request within the wait limit, or the
    /// pool was shut down.
    #[error("no redo process: {0}")]
    NoProcess(String),
    /// The tenant's queue already holds this many jobs: the request was
    /// refused, not queued.
    #[error("the tenant's redo queue is full ({0} jobs)")]
    QueueFull(usize),
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
    /// `None` once reaped (or handed to a reaping thread).
    child: Option<Child>,
    /// `None` once closed, or after a write failed (the reader is gone).
    stdin: Option<PipeWriter>,
    stdout: Option<PipeReader>,
    /// Reply bytes read: `inbox[..unread]` is what no reply has consumed
    /// yet (a partial reply at most, between reads). Allocated once.
    inbox: Box<[u8]>,
    unread: usize,
    timeout: Duration,
    alive: bool,
    slot: usize,
    pid: u32,
}

/// How the reading side of an exchange ended.
enum ReadEnd {
    /// Every expected reply is in.
    Complete,
    /// An error reply (the replies before it are kept).
    ErrorReply(String),
    /// The process closed its stdout.
    EndOfFile,
    /// Bytes that are not replies.
    Protocol(String),
    /// The read itself failed.
    Failed(std::io::Error),
}

impl RedoProcess {
    /// Starts a process with scratch directory `redo-<slot>` (reused by the
    /// slot's next process, so that a killed process's System V interlock
    /// segment is reclaimed rather than leaked) and waits for its first
    /// answer. Nothing here blocks the core.
    pub async fn start(config: &RedoConfig, slot: usize) -> Result<RedoProcess, RedoProcessError> {
        let prepare = {
            let config = config.clone();
            move || prepare_command(&config, slot)
        };
        let mut child = quire_io::child::spawn_with(prepare)
            .await
            .map_err(|e| RedoProcessError::Spawn(format!("{}: {e}", config.postgres.display())))?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            reap_detached(child, Duration::ZERO);
            return Err(RedoProcessError::Spawn("no pipes to the child".into()));
        };
        // A refusal (a lowered pipe-max-size) only costs more operations
        // per batch: the pipe keeps its default size.
        let _ = set_pipe_capacity(stdin.as_fd(), PIPE_CAPACITY);
        let _ = set_pipe_capacity(stdout.as_fd(), PIPE_CAPACITY);
        let pipes = PipeWriter::new(stdin).and_then(|w| Ok((w, PipeReader::new(stdout)?)));
        let (stdin, stdout) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => {
                let _ = child.kill();
                reap_detached(child, Duration::ZERO);
                return Err(RedoProcessError::Spawn(format!("pipe: {e}")));
            }
        };
        let mut process = RedoProcess {
            child: Some(child),
            stdin: Some(stdin),
            stdout: Some(stdout),
            inbox: vec![0u8; PIPE_CAPACITY].into_boxed_slice(),
            unread: 0,
            timeout: config.timeout,
            alive: true,
            slot,
            pid,
        };
        let mut ping = Vec::with_capacity(5);
        protocol::ping(&mut ping);
        match process.exchange(&[&ping], 1).await {
            Ok(_) => Ok(process),
            Err((_, error)) => {
                process.stop().await;
                Err(RedoProcessError::Spawn(format!(
                    "it did not answer its first ping: {error}"
                )))
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The scratch slot it runs in.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Whether the process can take requests (as far as we know: a process
    /// that died since its last exchange is found out by the next one, or
    /// by [`RedoProcess::has_exited`]).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Asks the kernel, without waiting, whether the process has ended
    /// (killed while idle, for example); marks it dead if so.
    pub fn has_exited(&mut self) -> bool {
        if self.alive
            && let Some(child) = self.child.as_mut()
            && !matches!(child.try_wait(), Ok(None))
        {
            self.alive = false;
        }
        !self.alive
    }

    /// Sends `request` (any number of messages, the parts taken in order as
    /// one byte string) and returns the first `expected` replies. An error
    /// reply, a death or the deadline ends the process; the replies
    /// received before it are returned with the error.
    pub async fn exchange(
        &mut self,
        request: &[&[u8]],
        expected: usize,
    ) -> Result<Vec<Reply>, (Vec<Reply>, RedoProcessError)> {
        let mut replies = Vec::with_capacity(expected);
        let Some(stdout) = self.stdout.as_ref().filter(|_| self.alive) else {
            return Err((replies, RedoProcessError::Died("stopped earlier".into())));
        };
        let deadline = Instant::now() + self.timeout;
        let ended = {
            let stdin = self.stdin.as_ref();
            let write = async move {
                match stdin {
                    Some(stdin) => stdin.write_all_vectored(request).await.is_ok(),
                    None => false,
                }
            };
            let read = read_replies(
                stdout,
                &mut self.inbox,
                &mut self.unread,
                &mut replies,
                expected,
            );
            quire_io::timeout_at(deadline, write_while_reading(write, read)).await
        };
        let Ok((written, end)) = ended else {
            self.kill();
            return Err((replies, RedoProcessError::TimedOut(self.timeout)));
        };
        if !written {
            // The reader is gone; what it wrote before (an error reply, or
            // the end of file) told why.
            self.stdin = None;
        }
        match end {
            ReadEnd::Complete => {
                replies.truncate(expected);
                Ok(replies)
            }
            // The process exits after an error reply; stopping it reaps it.
            ReadEnd::ErrorReply(message) => {
                self.alive = false;
                Err((replies, RedoProcessError::Replied(message)))
            }
            ReadEnd::EndOfFile => {
                let how = self.reap_ending().await;
                Err((replies, RedoProcessError::Died(how)))
            }
            ReadEnd::Protocol(what) => {
                self.kill();
                Err((replies, RedoProcessError::Protocol(what)))
            }
            ReadEnd::Failed(error) => {
                self.kill();
                Err((replies, RedoProcessError::Died(format!("read: {error}"))))
            }
        }
    }

    /// Waits for a process that closed its stdout to end; how it ended.
    async fn reap_ending(&mut self) -> String {
        self.alive = false;
        self.stdin = None;
        let Some(mut child) = self.child.take() else {
            return "ended".into();
        };
        match wait_exit(&mut child, EXIT_AFTER_EOF).await {
            Ok(status) => describe_exit(status),
            Err(error) => {
                reap_detached(child, Duration::ZERO);
                format!("could not wait for it: {error}")
            }
        }
    }

    /// Kills the process (`SIGKILL`, without waiting: [`RedoProcess::stop`]
    /// reaps it).
    pub fn kill(&mut self) {
        self.alive = false;
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
    }

    /// Stops the process: closing stdin makes it exit by itself; it is
    /// killed if it has not within [`STOP_GRACE`].
    /// Returns how it ended.
    pub async fn stop(mut self) -> String {
        self.alive = false;
        if let Some(stdin) = self.stdin.take() {
            let _ = stdin.close().await;
        }
        let how = match self.child.take() {
            Some(mut child) => match wait_exit(&mut child, STOP_GRACE).await {
                Ok(status) => describe_exit(status),
                Err(error) => {
                    reap_detached(child, Duration::ZERO);
                    format!("could not wait for it: {error}")
                }
            },
            None => "ended".into(),
        };
        if let Some(stdout) = self.stdout.take() {
            let _ = stdout.close().await;
        }
        how
    }
}

impl Drop for RedoProcess {
    /// Without an executor to await on: the pipes are closed (the process
    /// sees the end of its input and exits by itself) and a thread of its
    /// own reaps it, killing it if it has not exited within `DROP_GRACE`.
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(child) = self.child.take() {
            let grace = if self.alive {
                DROP_GRACE
            } else {
                Duration::ZERO
            };
            reap_detached(child, grace);
        }
    }
}

/// The command for a process in `slot`, its scratch directory made (run on
/// the spawning thread: directory calls stay off the core too).
fn prepare_command(config: &RedoConfig, slot: usize) -> std::io::Result<Command> {
    let scratch = config.scratch_root.join(format!("redo-{slot}"));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| std::io::Error::new(e.kind(), format!("create {}: {e}", scratch.display())))?;
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
                std::io::Error::new(e.kind(), format!("chown {}: {e}", dir.display()))
            })?;
        }
        command.uid(uid).gid(gid);
    }
    Ok(command)
}

/// Runs the writing and the reading of one exchange together. The reading
/// decides: once it ends with every reply in, the writing is finished too;
/// once it ends otherwise (an error reply, the end of file), the process is
/// finished and so is the writing. Returns whether everything was written,
/// and how the reading ended.
async fn write_while_reading(
    write: impl Future<Output = bool>,
    read: impl Future<Output = ReadEnd>,
) -> (bool, ReadEnd) {
    let (write, read) = (pin!(write), pin!(read));
    match select(write, read).await {
        Either::Left((written, read)) => (written, read.await),
        Either::Right((ReadEnd::Complete, write)) => (write.await, ReadEnd::Complete),
        Either::Right((end, _)) => (true, end),
    }
}

/// Reads replies into `replies` until `expected` are in, an error reply
/// comes, or the process closes its stdout.
async fn read_replies(
    stdout: &PipeReader,
    inbox: &mut [u8],
    unread: &mut usize,
    replies: &mut Vec<Reply>,
    expected: usize,
) -> ReadEnd {
    loop {
        let used = match parse_replies(&inbox[..*unread], replies) {
            Ok(used) => used,
            Err(what) => return ReadEnd::Protocol(what),
        };
        // Forget the whole replies, moving the partial one after them to
        // the front of the inbox.
        inbox.copy_within(used..*unread, 0);
        *unread -= used;
        if let Some(pos) = replies.iter().position(|r| matches!(r, Reply::Error(_))) {
            let message = match replies.swap_remove(pos) {
                Reply::Error(message) => message,
                Reply::Ok(_) => String::new(),
            };
            replies.truncate(pos);
            return ReadEnd::ErrorReply(message);
        }
        if replies.len() >= expected {
            return ReadEnd::Complete;
        }
        // A partial reply is at most `protocol::MAX_REPLY` + 5 bytes, far
        // less than the inbox.
        let Some(room) = inbox.get_mut(*unread..).filter(|room| !room.is_empty()) else {
            return ReadEnd::Protocol("a reply larger than the inbox".into());
        };
        match stdout.read(room).await {
            Ok(0) => return ReadEnd::EndOfFile,
            Ok(n) => *unread += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return ReadEnd::Failed(e),
        }
    }
}
