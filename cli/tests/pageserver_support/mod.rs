//! What the pageserver service tests share: a `quire pageserver` child on
//! free loopback ports (killed when dropped), the `quire` admin commands
//! with their JSON (imports, branches, `quire verify --pageserver`: in
//! `admin`), a timeline following a running primary and a fork's every
//! page read (in `primary`), a stopped Postgres 17 cluster to import with
//! one table whose file the tests read pages from, and a blocking page-protocol
//! connection over `std::net::TcpStream` built on the net crate's codec, so
//! a test can send any bytes and check every frame it gets back.

#![allow(dead_code)]

mod admin;
pub mod primary;

pub use admin::*;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_bounded};
use quire_net::id::{ShardIdentity, TenantId, TimelineId};
use quire_net::page_protocol::{
    ClientFrame, ClientMessage, ErrorResponse, FRAME_HEADER_BYTES, Hello, HelloOk,
    RESPONSE_FRAME_BYTES_MAX, ReadLsn, Request, Response, ServerFrame, ServerMessage, ServiceError,
    VERSION_MAX, VERSION_MIN,
};
use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};
use quire_tests::pg_install;
use serde_json::Value;

/// The longest any one `quire` command may take.
pub(crate) const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// How long a started pageserver has to say where it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a test waits for any one frame.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

pub(crate) fn quire_binary() -> &'static str {
    env!("CARGO_BIN_EXE_quire")
}

/// Runs `quire args…` (bounded); its stdout, or an error with its stderr.
pub fn quire(args: &[&str]) -> Result<String> {
    let output = run_bounded(Command::new(quire_binary()).args(args), COMMAND_DEADLINE)?;
    ensure!(
        output.status.success(),
        "quire {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Runs `quire args…`, which must fail; its stderr.
pub fn quire_fails(args: &[&str]) -> Result<String> {
    let output = run_bounded(Command::new(quire_binary()).args(args), COMMAND_DEADLINE)?;
    ensure!(
        !output.status.success(),
        "quire {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Runs `quire args…` and parses what it prints as JSON.
pub fn quire_json(args: &[&str]) -> Result<Value> {
    let out = quire(args)?;
    serde_json::from_str(&out).with_context(|| format!("quire {args:?} printed {out:?}"))
}

/// A string field of a JSON object.
pub fn field<'a>(value: &'a Value, name: &str) -> Result<&'a str> {
    value
        .get(name)
        .and_then(Value::as_str)
        .with_context(|| format!("no string {name:?} in {value}"))
}

/// One `quire pageserver` process.
pub struct Pageserver {
    child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    /// The page service.
    pub page: SocketAddr,
    /// The admin API's `host:port`.
    pub http: String,
    /// Its stderr (appended to across restarts).
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Pageserver {
    /// Starts `quire pageserver --dir DIR` on free ports with `args` and
    /// waits for the line saying where it listens.
    pub fn start(dir: &Path, args: &[&str]) -> Result<Pageserver> {
        Pageserver::start_with_env(dir, args, &[])
    }

    /// [`Pageserver::start`] with `env` added to its environment (at
    /// every restart too).
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Result<Pageserver> {
        let mut server = Pageserver {
            child: None,
            dir: dir.to_owned(),
            page: "127.0.0.1:0".parse()?,
            http: String::new(),
            log: dir.with_extension("log"),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
        };
        server.restart()?;
        Ok(server)
    }

    /// Replaces the arguments it starts with (from the next restart on).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|&a| a.to_owned()).collect();
    }

    /// Starts it (again) on the same directory, on new free ports.
    pub fn restart(&mut self) -> Result<()> {
        self.restart_listening("127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts it again on the same directory and the same ports (its
    /// clients keep their addresses).
    pub fn restart_on_same_ports(&mut self) -> Result<()> {
        let (page, http) = (self.page.to_string(), self.http.clone());
        self.restart_listening(&page, &http)
    }

    fn restart_listening(&mut self, page: &str, http: &str) -> Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("open the pageserver log")?;
        let mut child = Command::new(quire_binary())
            .arg("pageserver")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--listen", page, "--http", http])
            .args(["--cache-mib", "32"])
            .args(&self.args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("start quire pageserver")?;
        let stdout = child.stdout.take().context("stdout")?;
        self.child = Some(child);
        let (lines, line) = mpsc::channel();
        // Drains stdout for the process's life: a closed pipe would make
        // its next print fail.
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines() {
                let Ok(text) = text else { break };
                let _ = lines.send(text);
            }
        });
        let began = Instant::now();
        loop {
            let left = START_DEADLINE.saturating_sub(began.elapsed());
            let text = line.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!(
                    "the pageserver said nothing within {START_DEADLINE:?}; its log:\n{}",
                    self.log_text()
                )
            })?;
            // pageserver: page service on IP:PORT, admin API on http://IP:PORT, N cores, data in DIR
            let Some(rest) = text.strip_prefix("pageserver: page service on ") else {
                continue;
            };
            let (page, rest) = rest.split_once(", admin API on http://").context("line")?;
            let (http, _) = rest.split_once(", ").context("line")?;
            self.page = page
                .parse()
                .with_context(|| format!("page address in {text:?}"))?;
            http.clone_into(&mut self.http);
            // The line means the server is ready: it must take a connection
            // at once.
            TcpStream::connect_timeout(&self.page, Duration::from_secs(2))
                .with_context(|| format!("the page service right after {text:?}"))?;
            println!("started: {text}");
            return Ok(());
        }
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none() && self.child.is_some()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How it exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if it died or its log shows a panic.
    pub fn check_alive(&mut self) -> Result<()> {
        ensure!(
            self.is_running(),
            "the pageserver exited; its log:\n{}",
            self.log_text()
        );
        let log = self.log_text();
        ensure!(
            !log.contains("panicked"),
            "the pageserver panicked; its log:\n{log}"
        );
        Ok(())
    }

    /// `--pageserver-http ADDR` for the admin commands.
    pub fn api(&self) -> [&str; 2] {
        ["--pageserver-http", &self.http]
    }

    /// `GET path` on the admin API: status and body.
    pub fn get(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        self.http_call("GET", path, token, None)
    }

    /// An admin API call: status and body (any status).
    pub fn http_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let url = format!("http://{}{path}", self.http);
        let mut request = ureq::request(method, &url).timeout(Duration::from_secs(60));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let answer = match body {
            Some(body) => request.send_json(body.clone()),
            None => request.call(),
        };
        match answer {
            Ok(response) => Ok((response.status(), response.into_string()?)),
            Err(ureq::Error::Status(status, response)) => {
                Ok((status, response.into_string().unwrap_or_default()))
            }
            Err(error) => bail!("{method} {url}: {error}"),
        }
    }

    /// The sum of the series `name` whose labels contain `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> Result<f64> {
        let (status, text) = self.get("/metrics", None)?;
        ensure!(status == 200, "/metrics: {status}: {text}");
        let mut sum = 0.0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                continue;
            }
            let value = rest.rsplit(' ').next().context("metric line")?;
            sum += value
                .parse::<f64>()
                .with_context(|| format!("metric line {line:?}"))?;
        }
        Ok(sum)
    }
}

impl Drop for Pageserver {
    /// Kills it; its log's end goes to the test's output (shown when the
    /// test fails).
    fn drop(&mut self) {
        let exited = self.exit_status();
        self.kill();
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines
            .get(lines.len().saturating_sub(40)..)
            .unwrap_or_default();
        println!(
            "pageserver {} ({}), last lines of its log:\n{}",
            self.dir.display(),
            exited.map_or_else(
                || "killed".to_owned(),
                |status| format!("had exited: {status}")
            ),
            tail.join("\n")
        );
    }
}

/// A cleanly stopped cluster with a table `t` of `rows` rows (about 90
/// rows a page), to import and to read expected pages from.
pub struct Source {
    /// The cluster (stopped).
    pub pg: PgCluster,
    /// `t`'s main fork.
    pub rel: RelTag,
    /// `t`'s file, as the cluster left it.
    pub file: Vec<u8>,
}

impl Source {
    /// initdb, `CREATE TABLE t`, `CHECKPOINT`, stop.
    pub fn create(rows: u32) -> Result<Source> {
        let install = pg_install()?;
        let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
        pg.start()?;
        pg.psql_script(
            "postgres",
            &format!(
                "CREATE TABLE t AS SELECT g, repeat('x', 60) AS pad FROM generate_series(1, {rows}) g;\nCHECKPOINT;\n"
            ),
        )?;
        let db: u32 = pg
            .psql(
                "postgres",
                "SELECT oid FROM pg_database WHERE datname = 'postgres'",
            )?
            .trim()
            .parse()?;
        let node: u32 = pg
            .psql("postgres", "SELECT pg_relation_filenode('t')")?
            .trim()
            .parse()?;
        let path = pg
            .psql("postgres", "SELECT pg_relation_filepath('t')")?
            .trim()
            .to_owned();
        pg.stop()?;
        let file =
            std::fs::read(pg.datadir().join(&path)).with_context(|| format!("read {path}"))?;
        ensure!(
            file.len() % BLCKSZ == 0 && !file.is_empty(),
            "{path} is {} bytes",
            file.len()
        );
        let rel = RelTag {
            spc_oid: 1663,
            db_oid: db,
            rel_number: node,
            fork: ForkNumber::Main,
        };
        Ok(Source { pg, rel, file })
    }

    /// Blocks in `t`.
    pub fn blocks(&self) -> u32 {
        u32::try_from(self.file.len() / BLCKSZ).unwrap_or(u32::MAX)
    }

    /// Block `block` of `t` as the cluster wrote it.
    pub fn page(&self, block: u32) -> &[u8] {
        let start = block as usize * BLCKSZ;
        &self.file[start..start + BLCKSZ]
    }
}

/// A `Hello` for `imported`, shard `shard`, with `token`.
pub fn hello(tenant: TenantId, timeline: TimelineId, shard: ShardIdentity, token: &str) -> Hello {
    Hello {
        version_min: VERSION_MIN,
        version_max: VERSION_MAX,
        tenant,
        timeline,
        shard,
        token: token.to_owned(),
    }
}

/// Bytes of a client frame.
pub fn frame_bytes(request_id: u64, message: ClientMessage) -> Result<Vec<u8>> {
    ClientFrame {
        request_id,
        message,
    }
    .to_bytes()
    .map_err(|e| anyhow::anyhow!("encode: {e}"))
}

/// A `GetPage` at the latest LSN.
pub fn get_page(rel: RelTag, block: u32) -> Result<Request> {
    Ok(Request::GetPage {
        lsn: ReadLsn::latest(Lsn(0))?,
        rel,
        block: BlockNo(block),
    })
}

/// An `Nblocks` at the latest LSN.
pub fn nblocks(rel: RelTag) -> Result<Request> {
    Ok(Request::Nblocks {
        lsn: ReadLsn::latest(Lsn(0))?,
        rel,
    })
}

/// A TCP connection to `address` with bounded reads and writes.
pub fn connect(address: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connect to {address}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(FRAME_DEADLINE))?;
    stream.set_write_timeout(Some(FRAME_DEADLINE))?;
    Ok(stream)
}

/// Fills `buf`; `false` if the stream ended (or was reset) before its
/// first byte.
fn read_whole(stream: &mut TcpStream, buf: &mut [u8]) -> Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match stream.read(&mut buf[at..]) {
            Ok(0) if at == 0 => return Ok(false),
            Ok(0) => bail!(
                "the stream ended inside a frame ({at} of {} bytes)",
                buf.len()
            ),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset && at == 0 => return Ok(false),
            Err(e) => return Err(e).context("read a frame"),
        }
    }
    Ok(true)
}

/// The next server frame, `None` at the end of the stream; the read
/// timeout set on `stream` bounds it.
pub fn read_frame(stream: &mut TcpStream) -> Result<Option<ServerFrame>> {
    let mut header = [0u8; FRAME_HEADER_BYTES as usize];
    if !read_whole(stream, &mut header)? {
        return Ok(None);
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    ensure!(
        (FRAME_HEADER_BYTES..=RESPONSE_FRAME_BYTES_MAX).contains(&length),
        "the server sent a frame of {length} bytes"
    );
    let mut frame = vec![0u8; length as usize];
    frame[..header.len()].copy_from_slice(&header);
    ensure!(
        read_whole(stream, &mut frame[header.len()..])? || length == FRAME_HEADER_BYTES,
        "the stream ended after a frame header"
    );
    ServerFrame::decode(&frame)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("the server sent a bad frame: {e}"))
}

/// Reads until the server closes the stream, for at most `within`: the
/// frames it sent and how long it took to close.
pub fn until_closed(
    stream: &mut TcpStream,
    within: Duration,
) -> Result<(Vec<ServerFrame>, Duration)> {
    let began = Instant::now();
    let mut frames = Vec::new();
    loop {
        let left = within.saturating_sub(began.elapsed());
        ensure!(
            !left.is_zero(),
            "the server kept the connection open for {within:?} (frames: {frames:?})"
        );
        stream.set_read_timeout(Some(left))?;
        match read_frame(stream) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return Ok((frames, began.elapsed())),
            Err(e) => {
                let timed_out = e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                });
                if !timed_out {
                    return Err(e);
                }
            }
        }
    }
}

/// The error a frame carries, or a failure naming what came instead.
pub fn error_of(frame: &ServerFrame) -> Result<&ErrorResponse> {
    match &frame.message {
        ServerMessage::Error(error) => Ok(error),
        other => bail!("expected an Error, got {other:?}"),
    }
}

/// Checks that `frames` is exactly one `Error` for request `request_id`
/// of kind `request_kind`, with code `error`, closing the connection.
pub fn expect_closing_error(
    frames: &[ServerFrame],
    request_id: u64,
    request_kind: u8,
    error: ServiceError,
    what: &str,
) -> Result<()> {
    let [frame] = frames else {
        bail!("{what}: expected one closing Error, got {frames:?}");
    };
    let answer = error_of(frame).with_context(|| what.to_owned())?;
    ensure!(
        frame.request_id == request_id
            && answer.request_kind == request_kind
            && answer.error == error
            && answer.closes,
        "{what}: expected a closing {error:?} for request {request_id} of kind {request_kind:#04X}, got {frame:?}"
    );
    println!("{what}: {:?}, closed ({})", answer.error, answer.message);
    Ok(())
}

/// A page connection after its `HelloOk`.
pub struct PageConn {
    /// The socket.
    pub stream: TcpStream,
    /// What the server said it allows.
    pub limits: HelloOk,
    next_id: u64,
}

impl PageConn {
    /// Connects and sends `hello`: the connection, or the server's refusal
    /// (which it must follow by closing).
    pub fn open(address: SocketAddr, hello: &Hello) -> Result<Result<PageConn, ErrorResponse>> {
        let mut stream = connect(address)?;
        stream.write_all(&frame_bytes(0, ClientMessage::Hello(hello.clone()))?)?;
        let frame =
            read_frame(&mut stream)?.context("the server closed instead of answering the Hello")?;
        ensure!(
            frame.request_id == 0,
            "the Hello's answer has id {}",
            frame.request_id
        );
        match frame.message {
            ServerMessage::HelloOk(limits) => Ok(Ok(PageConn {
                stream,
                limits,
                next_id: 1,
            })),
            ServerMessage::Error(error) => {
                ensure!(error.closes, "a refused Hello must close: {error:?}");
                let (rest, _) = until_closed(&mut stream, Duration::from_secs(5))?;
                ensure!(rest.is_empty(), "frames after a refused Hello: {rest:?}");
                Ok(Err(error))
            }
            ServerMessage::Response(response) => bail!("a Hello answered with {response:?}"),
        }
    }

    /// [`open`](Self::open), which must succeed.
    pub fn ready(address: SocketAddr, hello: &Hello) -> Result<PageConn> {
        match PageConn::open(address, hello)? {
            Ok(conn) => Ok(conn),
            Err(error) => bail!("the Hello was refused: {error:?}"),
        }
    }

    /// [`open`](Self::open), which must be refused with `expected`.
    pub fn refused(
        address: SocketAddr,
        hello: &Hello,
        expected: ServiceError,
        what: &str,
    ) -> Result<()> {
        match PageConn::open(address, hello)? {
            Ok(_) => bail!("{what}: the Hello was accepted"),
            Err(error) if error.error == expected => {
                println!("{what}: {:?} ({})", error.error, error.message);
                Ok(())
            }
            Err(error) => bail!("{what}: expected {expected:?}, got {error:?}"),
        }
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .context("write to the page service")
    }

    /// The next frame, which must come within [`FRAME_DEADLINE`].
    pub fn recv(&mut self) -> Result<ServerFrame> {
        self.stream.set_read_timeout(Some(FRAME_DEADLINE))?;
        read_frame(&mut self.stream)?.context("the server closed the connection")
    }

    /// Sends `request` and returns its answer, checked to answer it.
    pub fn call(&mut self, request: Request) -> Result<ServerMessage> {
        let frame = ClientFrame {
            request_id: self.next_id(),
            message: ClientMessage::Request(request),
        };
        self.send_raw(&frame.to_bytes().map_err(|e| anyhow::anyhow!("{e}"))?)?;
        let answer = self.recv()?;
        ensure!(
            answer.answers(&frame),
            "{answer:?} does not answer {frame:?}"
        );
        Ok(answer.message)
    }

    /// Block `block` of `rel` at the latest LSN: the served LSN and page.
    pub fn page(&mut self, rel: RelTag, block: u32) -> Result<(Lsn, Vec<u8>)> {
        match self.call(get_page(rel, block)?)? {
            ServerMessage::Response(Response::GetPage { lsn, page }) => Ok((lsn, page.to_vec())),
            other => bail!("GetPage of block {block}: {other:?}"),
        }
    }

    /// `rel`'s size in blocks at the latest LSN.
    pub fn nblocks(&mut self, rel: RelTag) -> Result<u32> {
        match self.call(nblocks(rel)?)? {
            ServerMessage::Response(Response::Nblocks { nblocks, .. }) => Ok(nblocks),
            other => bail!("Nblocks: {other:?}"),
        }
    }

    /// Sends `request`, which must be refused with `expected`, leaving the
    /// connection open.
    pub fn call_refused(
        &mut self,
        request: &Request,
        expected: ServiceError,
    ) -> Result<ErrorResponse> {
        match self.call(request.clone())? {
            ServerMessage::Error(error) if error.error == expected && !error.closes => Ok(error),
            other => bail!("{request:?}: expected an open {expected:?}, got {other:?}"),
        }
    }
}
