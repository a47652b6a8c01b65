//! A real S3-compatible server for tests: moto in server mode on a free
//! loopback port, installed into the cache by `cluster/moto.sh` the first
//! time a test asks for one.
//!
//! moto keeps its objects in memory, so a killed and restarted server comes
//! back empty (its buckets included: [`S3Server::restart`] creates them
//! again). The server runs under a small shell that kills it when its
//! standard input closes, so a test process that dies leaves no server
//! behind. Every wait here is bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bounded::run_checked;
use crate::free_port;

/// Installing moto downloads it from the package registry once.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// moto imports a good deal of Python before it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The installed server program, found once per process.
fn moto_server() -> Result<PathBuf> {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = PATH.get() {
        return Ok(path.clone());
    }
    let script = crate::install::repo_root().join("cluster/moto.sh");
    let output = run_checked(&mut Command::new(&script), INSTALL_TIMEOUT)
        .context("install moto with cluster/moto.sh")?;
    let stdout = String::from_utf8(output.stdout).context("read cluster/moto.sh output")?;
    let Some(line) = stdout.lines().last() else {
        bail!("cluster/moto.sh printed no path");
    };
    Ok(PATH.get_or_init(|| PathBuf::from(line.trim())).clone())
}

/// A moto S3 server on a loopback port.
pub struct S3Server {
    port: u16,
    dir: tempfile::TempDir,
    buckets: Vec<String>,
    /// The shell that runs the server, and its standard input (closing it
    /// stops the server).
    wrapper: Option<(Child, ChildStdin)>,
    /// The server's process id.
    pid: u32,
}

impl S3Server {
    /// Starts a server (installing moto first if the cache lacks it) with
    /// the bucket `bucket`.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let mut server = S3Server {
            port: free_port()?,
            dir: tempfile::tempdir().context("create the S3 server's directory")?,
            buckets: vec![bucket.to_owned()],
            wrapper: None,
            pid: 0,
        };
        server.launch()?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment an S3 client reads to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "quire-test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "quire-test-secret".to_owned()),
        ]
    }

    /// The server's log (one line per request).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("moto.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The server's process id (to stop it with signals).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the server with SIGKILL (its objects are gone with it).
    pub fn kill(&mut self) -> Result<()> {
        signal(self.pid, "KILL")?;
        if let Some((mut child, stdin)) = self.wrapper.take() {
            drop(stdin);
            child.wait().context("wait for the S3 server's shell")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port, with its buckets (empty).
    pub fn restart(&mut self) -> Result<()> {
        if self.wrapper.is_some() {
            self.kill()?;
        }
        self.launch()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server.
    pub fn signal(&self, signal_name: &str) -> Result<()> {
        signal(self.pid, signal_name)
    }

    fn launch(&mut self) -> Result<()> {
        let program = moto_server()?;
        // The shell starts the server, says its pid, and kills it once its
        // standard input reaches its end: when we close it, or die.
        let script = r#"
            "$0" -H 127.0.0.1 -p "$1" >>"$2" 2>&1 &
            echo $!
            cat >/dev/null
            kill -9 $! 2>/dev/null
            wait $!
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .arg(&program)
            .arg(self.port.to_string())
            .arg(self.log_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        let stdin = child.stdin.take().context("the S3 server shell's stdin")?;
        let mut stdout = child
            .stdout
            .take()
            .context("the S3 server shell's stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).context("read the S3 server's pid")? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        self.pid = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .with_context(|| format!("the S3 server shell said {line:?}, not a pid"))?;
        self.wrapper = Some((child, stdin));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "moto did not listen on port {} within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for bucket in self.buckets.clone() {
            self.create_bucket(&bucket)?;
        }
        Ok(())
    }

    /// Creates a bucket (moto takes an unsigned request).
    pub fn create_bucket(&mut self, bucket: &str) -> Result<()> {
        let status = request(self.port, &format!("PUT /{bucket}"))?;
        if status != 200 {
            bail!("creating bucket {bucket}: HTTP {status}");
        }
        if !self.buckets.iter().any(|b| b == bucket) {
            self.buckets.push(bucket.to_owned());
        }
        Ok(())
    }

    /// The directory the server's log is in (kept for a failing test's
    /// reader as long as the server lives).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if self.wrapper.is_some() {
            let _ = self.kill();
        }
    }
}

/// Sends `signal_name` to `pid` with kill(1).
fn signal(pid: u32, signal_name: &str) -> Result<()> {
    run_checked(
        Command::new("kill").args([format!("-{signal_name}"), pid.to_string()]),
        Duration::from_secs(10),
    )
    .with_context(|| format!("send SIG{signal_name} to the S3 server ({pid})"))?;
    Ok(())
}

/// Sends one bodiless HTTP request line (`METHOD /path`) and returns the
/// status code.
fn request(port: u16, line: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to the S3 server on port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{line} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("read the S3 server's answer")?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))
}
