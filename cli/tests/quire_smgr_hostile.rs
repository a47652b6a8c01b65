//! The compute's page-protocol client in C (`postgres/extensions/quire_smgr`)
//! against a scripted fake pageserver that breaks the protocol
//! (docs/protocol/page-service.md) one way at a time: every violation, in
//! the handshake or in an answer, is a clean ERROR naming what was wrong,
//! the backend never crashes, a stalled answer ends at
//! `quire.request_timeout` or at a statement timeout, and a connection the
//! server dropped is replaced on the next call.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_tests::pg_install;

const PAGE: usize = 8192;
/// How long the fake waits on a client before giving up.
const FAKE_DEADLINE: Duration = Duration::from_secs(20);

const HELLO_OK: u8 = 0x81;
const GET_PAGE_OK: u8 = 0x82;
const GET_PAGES_OK: u8 = 0x83;
const NBLOCKS_OK: u8 = 0x84;
const EXISTS_OK: u8 = 0x85;
const ERROR: u8 = 0xFF;

/// A frame: header (length, kind, reserved, id) and body.
fn frame(kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn hello_ok_body(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&262_176u32.to_le_bytes());
    body.extend_from_slice(&128u32.to_le_bytes());
    body.extend_from_slice(&32u32.to_le_bytes());
    body.extend_from_slice(&1000u32.to_le_bytes());
    body
}

fn hello_ok() -> Vec<u8> {
    frame(HELLO_OK, 0, &hello_ok_body(1))
}

fn error_body(code: u16, kind: u8, flags: u8, details: (u64, u64), message: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&[kind, flags]);
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&details.0.to_le_bytes());
    body.extend_from_slice(&details.1.to_le_bytes());
    body.extend_from_slice(message);
    body
}

fn lsn_and(lsn: u64, rest: &[u8]) -> Vec<u8> {
    let mut body = lsn.to_le_bytes().to_vec();
    body.extend_from_slice(rest);
    body
}

/// What the fake does on one connection after answering the Hello: for
/// each request, the bytes to answer it with (given its id).
type Answer = Box<dyn Fn(u64) -> Vec<u8> + Send>;

struct Script {
    hello_reply: Vec<u8>,
    answers: Vec<Answer>,
    /// Close right after the last answer (else hold until the client closes).
    close: bool,
}

fn script(hello_reply: Vec<u8>, answers: Vec<Answer>) -> Script {
    Script {
        hello_reply,
        answers,
        close: false,
    }
}

/// Reads one client frame: its id and kind.
fn read_request(stream: &mut TcpStream) -> Result<(u64, u8)> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).context("read a header")?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    ensure!(
        (16..=4168).contains(&length),
        "client frame of {length} bytes"
    );
    let mut body = vec![0u8; length - 16];
    stream.read_exact(&mut body).context("read a body")?;
    let id = u64::from_le_bytes(header[8..16].try_into()?);
    Ok((id, header[4]))
}

/// A fake pageserver serving one script per connection, in order.
struct Fake {
    address: SocketAddr,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Fake {
    fn start(scripts: Vec<Script>) -> Result<Fake> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let thread = std::thread::spawn(move || -> Result<()> {
            for script in scripts {
                let (mut stream, _) = listener.accept()?;
                stream.set_read_timeout(Some(FAKE_DEADLINE))?;
                let (_, kind) = read_request(&mut stream)?;
                ensure!(kind == 0x01, "first frame of kind {kind:#04X}");
                stream.write_all(&script.hello_reply)?;
                for answer in &script.answers {
                    let (id, _) = read_request(&mut stream)?;
                    // A write may fail once the client has given up on us.
                    let _ = stream.write_all(&answer(id));
                }
                if !script.close {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                }
            }
            Ok(())
        });
        Ok(Fake {
            address,
            thread: Some(thread),
        })
    }

    /// Waits for the fake to have served every script.
    fn finish(mut self) -> Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the fake pageserver panicked"),
            None => Ok(()),
        }
    }
}

/// The session's settings pointing at `address`.
fn settings(address: SocketAddr) -> String {
    format!(
        "SET quire.pageserver = '{address}'; SET quire.tenant = '11111111111111111111111111111111'; \
         SET quire.timeline = '22222222222222222222222222222222'; SET quire.request_timeout = 3000;"
    )
}

const NBLOCKS: &str = "SELECT quire_nblocks(1663, 5, 1259, 0)";

/// Serves `scripts`, runs `sql` after the settings: it must fail with an
/// ERROR containing `expected`.
fn refused(
    compute: &PgCluster,
    what: &str,
    scripts: Vec<Script>,
    sql: &str,
    expected: &str,
) -> Result<()> {
    let fake = Fake::start(scripts)?;
    let began = Instant::now();
    let result = compute.psql("postgres", &format!("{} {sql}", settings(fake.address)));
    let took = began.elapsed();
    let error = match result {
        Ok(out) => bail!("{what}: succeeded with {out:?}"),
        Err(error) => format!("{error:#}"),
    };
    let text = error
        .split_once("ERROR:")
        .map(|(_, e)| e.trim())
        .unwrap_or_default();
    ensure!(
        text.contains(expected),
        "{what}: expected an ERROR containing {expected:?}, got {error}"
    );
    ensure!(took < Duration::from_secs(10), "{what}: took {took:?}");
    let first: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect();
    println!("{what}: {first}");
    fake.finish().with_context(|| what.to_owned())
}

#[test]
fn quire_smgr_client_refuses_every_protocol_violation() -> Result<()> {
    let install = pg_install()?;
    let mut compute = PgCluster::create(&install, PgClusterOptions::default())?;
    compute.start()?;
    compute.psql("postgres", "CREATE EXTENSION quire_smgr")?;
    handshake_violations(&compute)?;
    handshake_errors(&compute)?;
    small_frames(&compute)?;
    answer_violations(&compute)?;
    stalls(&compute)?;
    reconnects(&compute)?;

    let log = std::fs::read_to_string(compute.log_path())?;
    ensure!(
        !log.contains("terminated by signal") && !log.contains("PANIC"),
        "a backend crashed:\n{log}"
    );
    compute.stop()?;
    Ok(())
}

/// Every way a Hello's answer can break the spec.
fn handshake_violations(compute: &PgCluster) -> Result<()> {
    let mut too_long = hello_ok();
    too_long.extend_from_slice(&[0; 4]);
    too_long[0] = 40;
    let mut reserved_header = hello_ok();
    reserved_header[6] = 1;
    let mut huge = hello_ok();
    huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut reserved_body = hello_ok_body(1);
    reserved_body[2] = 1;
    let mut depth = hello_ok_body(1);
    depth[8..12].copy_from_slice(&0u32.to_le_bytes());
    let hello_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "HelloOk of version 2",
            frame(HELLO_OK, 0, &hello_ok_body(2)),
            "protocol version 2",
        ),
        (
            "HelloOk with a reserved byte set",
            frame(HELLO_OK, 0, &reserved_body),
            "non-zero reserved",
        ),
        (
            "a header with a reserved byte set",
            reserved_header,
            "non-zero reserved header",
        ),
        (
            "HelloOk with 4 bytes too many",
            too_long,
            "its layout has 36",
        ),
        ("a frame of 4 GiB", huge, "frame of 4294967295 bytes"),
        (
            "HelloOk with pipeline depth 0",
            frame(HELLO_OK, 0, &depth),
            "pipeline_depth 0",
        ),
        (
            "the Hello answered for request 7",
            frame(HELLO_OK, 7, &hello_ok_body(1)),
            "answered request 7, expected 0",
        ),
        (
            "the Hello answered with a page",
            frame(GET_PAGE_OK, 0, &[0; 8 + PAGE]),
            "answered a Hello with kind 0x82",
        ),
        (
            "error code 99",
            frame(ERROR, 0, &error_body(99, 1, 1, (0, 0), b"")),
            "error code 99",
        ),
        (
            "error flags 0x02",
            frame(ERROR, 0, &error_body(5, 1, 2, (0, 0), b"")),
            "flags 0x02",
        ),
        (
            "UnknownTenant with details",
            frame(ERROR, 0, &error_body(5, 1, 1, (1, 0), b"")),
            "details 0x1, 0x0",
        ),
        (
            "an error message not UTF-8",
            frame(ERROR, 0, &error_body(5, 1, 1, (0, 0), b"\xff\xfe")),
            "not UTF-8",
        ),
        (
            "an error for another kind",
            frame(ERROR, 0, &error_body(5, 4, 1, (0, 0), b"")),
            "Error for kind 0x04",
        ),
        ("a closed stream", Vec::new(), "closed the connection"),
    ];
    for (what, reply, expected) in hello_cases {
        let mut one = script(reply, Vec::new());
        one.close = true;
        refused(compute, what, vec![one], NBLOCKS, expected)?;
    }
    Ok(())
}

/// A server whose frames cannot hold one `GetPages` page is never asked
/// for one.
fn small_frames(compute: &PgCluster) -> Result<()> {
    let mut body = hello_ok_body(1);
    body[4..8].copy_from_slice(&8216u32.to_le_bytes());
    refused(
        compute,
        "frames too small for GetPages",
        vec![script(frame(HELLO_OK, 0, &body), Vec::new())],
        "SELECT quire_getpages(1663, 5, 1259, 0, 0, 2)",
        "would exceed the server's frame_bytes_max 8216",
    )
}

/// A Hello's `Error` whose lengths disagree, and one with the longest
/// message, which comes through whole.
fn handshake_errors(compute: &PgCluster) -> Result<()> {
    let mut length_lies = frame(ERROR, 0, &error_body(5, 1, 1, (0, 0), b"abc"));
    length_lies[20..24].copy_from_slice(&2u32.to_le_bytes());
    refused(
        compute,
        "an error whose message length lies",
        vec![script(length_lies, Vec::new())],
        NBLOCKS,
        "with a message of 2",
    )?;
    let long_message = vec![b'm'; 1024];
    refused(
        compute,
        "UnknownTimeline with the longest message",
        vec![script(
            frame(ERROR, 0, &error_body(6, 1, 1, (0, 0), &long_message)),
            Vec::new(),
        )],
        NBLOCKS,
        &format!("UnknownTimeline: {}", "m".repeat(1024)),
    )?;

    Ok(())
}

/// Answers that do not answer their request.
fn answer_violations(compute: &PgCluster) -> Result<()> {
    let answer_cases: Vec<(&str, Answer, &str, &str)> = vec![
        (
            "an answer to another request",
            Box::new(|id| frame(NBLOCKS_OK, id + 1, &lsn_and(100, &5u32.to_le_bytes()))),
            NBLOCKS,
            "answered request",
        ),
        (
            "an answer served at LSN 0",
            Box::new(|id| frame(NBLOCKS_OK, id, &lsn_and(0, &5u32.to_le_bytes()))),
            NBLOCKS,
            "not a position",
        ),
        (
            "an answer served at latest",
            Box::new(|id| frame(NBLOCKS_OK, id, &lsn_and(u64::MAX, &5u32.to_le_bytes()))),
            NBLOCKS,
            "not a position",
        ),
        (
            "an answer of another kind",
            Box::new(|id| frame(EXISTS_OK, id, &lsn_and(100, &[1]))),
            NBLOCKS,
            "answered a Nblocks with kind 0x85",
        ),
        (
            "an Exists byte of 2",
            Box::new(|id| frame(EXISTS_OK, id, &lsn_and(100, &[2]))),
            "SELECT quire_exists(1663, 5, 1259, 0)",
            "expected 0 or 1",
        ),
        (
            "a GetPage answer a byte short",
            Box::new(|id| frame(GET_PAGE_OK, id, &lsn_and(100, &[0; PAGE - 1]))),
            "SELECT quire_getpage(1663, 5, 1259, 0, 0)",
            "its layout has 8216",
        ),
        (
            "a GetPages answer with fewer pages",
            Box::new(|id| {
                let mut rest = 1u32.to_le_bytes().to_vec();
                rest.extend_from_slice(&[0; 4 + PAGE]);
                frame(GET_PAGES_OK, id, &lsn_and(100, &rest))
            }),
            "SELECT quire_getpages(1663, 5, 1259, 0, 0, 2)",
            "its layout has 16416",
        ),
        (
            "a GetPages answer whose count lies",
            Box::new(|id| {
                let mut rest = 1u32.to_le_bytes().to_vec();
                rest.extend_from_slice(&[0; 4 + 2 * PAGE]);
                frame(GET_PAGES_OK, id, &lsn_and(100, &rest))
            }),
            "SELECT quire_getpages(1663, 5, 1259, 0, 0, 2)",
            "GetPages of 2 blocks with 1 pages",
        ),
        (
            "a page cut short by a close",
            Box::new(|id| {
                let mut bytes = frame(GET_PAGE_OK, id, &lsn_and(100, &[0; PAGE]));
                bytes.truncate(4000);
                bytes
            }),
            "SELECT quire_getpage(1663, 5, 1259, 0, 0)",
            "closed the connection while reading a page",
        ),
    ];
    for (what, answer, sql, expected) in answer_cases {
        let mut one = script(hello_ok(), vec![answer]);
        one.close = true;
        refused(compute, what, vec![one], sql, expected)?;
    }

    Ok(())
}

/// A page that stops halfway ends at `quire.request_timeout` (3 s here); a
/// statement timeout cancels a wait well inside it.
fn stalls(compute: &PgCluster) -> Result<()> {
    let stall: Answer = Box::new(|id| {
        let mut bytes = frame(GET_PAGE_OK, id, &lsn_and(100, &[0; PAGE]));
        bytes.truncate(4000);
        bytes
    });
    let began = Instant::now();
    refused(
        compute,
        "a page that stops halfway",
        vec![script(hello_ok(), vec![stall])],
        "SELECT quire_getpage(1663, 5, 1259, 0, 0)",
        "timed out after 3000 ms reading a page",
    )?;
    ensure!(
        began.elapsed() >= Duration::from_millis(2900),
        "the stall ended early"
    );

    let silent: Answer = Box::new(|_| Vec::new());
    let began = Instant::now();
    refused(
        compute,
        "a cancelled wait",
        vec![script(hello_ok(), vec![silent])],
        &format!("SET statement_timeout = 300; {NBLOCKS}"),
        "canceling statement due to statement timeout",
    )?;
    ensure!(
        began.elapsed() < Duration::from_millis(2500),
        "the cancel took {:?}",
        began.elapsed()
    );

    Ok(())
}

/// A refused request keeps the connection; a dropped one is replaced.
fn reconnects(compute: &PgCluster) -> Result<()> {
    let not_found: Answer = Box::new(|id| {
        frame(
            ERROR,
            id,
            &error_body(9, 0x04, 0, (0, 0), b"no such relation"),
        )
    });
    let five: Answer = Box::new(|id| frame(NBLOCKS_OK, id, &lsn_and(100, &5u32.to_le_bytes())));
    let six: Answer = Box::new(|id| frame(NBLOCKS_OK, id, &lsn_and(100, &6u32.to_le_bytes())));
    let mut first = script(hello_ok(), vec![not_found, five]);
    first.close = true;
    let fake = Fake::start(vec![first, script(hello_ok(), vec![six])])?;
    let session = format!(
        "{}\nDO $$ BEGIN PERFORM quire_nblocks(1663, 5, 1259, 0); RAISE EXCEPTION 'no error';\n\
         EXCEPTION WHEN others THEN IF SQLERRM NOT LIKE '%NotFound: no such relation%' THEN RAISE; END IF; END $$;\n\
         {NBLOCKS};\nSELECT pg_sleep(0.2);\n{NBLOCKS};\n",
        settings(fake.address)
    );
    let out = compute.psql_script("postgres", &session)?;
    let lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        lines == ["5", "6"],
        "NotFound, then 5 on the first connection and 6 on the next: {out:?}"
    );
    fake.finish()
}
