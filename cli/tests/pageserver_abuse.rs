//! A running `quire pageserver` (two cores, `--handshake-timeout-ms 1000`,
//! `--lsn-wait-ms 500`) under hostile and mistaken clients, while one good
//! connection stays open: after every attack it must still answer a
//! `GetPage` (the file's page) and an `Nblocks` (the file's size). The
//! attacks: garbage bytes; frame lengths below 16 and above the maximum,
//! before and after the handshake; a request before the `Hello`, a second
//! `Hello`; unknown kinds, reply kinds and malformed bodies after
//! `HelloOk` (answered `BadRequest`, the connection stays open); `Hello`s
//! for an unknown tenant, timeline, shard count or version; handshakes
//! that never complete; a `not_modified_since` beyond anything ingested
//! (`WalNotIngested` after the wait); relations and blocks that do not
//! exist (`NotFound`); reads below the GC cutoff (`LsnBelowGcCutoff`);
//! frames cut off by a close. At the end no connection slot is leaked.

mod pageserver_support;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_net::id::{ShardIdentity, TenantId, TimelineId};
use quire_net::page_protocol::{
    ClientMessage, REQUEST_FRAME_BYTES_MAX, ReadLsn, Request, RequestLsn, Response, ServerMessage,
    ServiceError, kind,
};
use quire_postgres::Lsn;
use quire_postgres::types::{BlockNo, RelTag};
use serde_json::json;

use pageserver_support::{
    Imported, PageConn, Pageserver, Source, connect, error_of, expect_closing_error, field,
    frame_bytes, get_page, hello, import, nblocks, until_closed,
};

const HANDSHAKE_MS: u64 = 1_000;
const LSN_WAIT_MS: u64 = 500;
/// How long the server may take to close a connection it refused.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// The good connection and what it must keep answering.
struct Witness<'a> {
    conn: PageConn,
    source: &'a Source,
    lsn: Lsn,
    checks: u32,
}

impl Witness<'_> {
    /// A `GetPage` and an `Nblocks` on the good connection, after `attack`.
    fn still_served(&mut self, attack: &str) -> Result<()> {
        let block = self.checks % self.source.blocks();
        self.checks += 1;
        let (lsn, page) = self
            .conn
            .page(self.source.rel, block)
            .with_context(|| format!("the good connection after {attack}"))?;
        ensure!(
            lsn == self.lsn && page == self.source.page(block),
            "after {attack}: block {block} served at {lsn} differs from the file's"
        );
        let size = self.conn.nblocks(self.source.rel)?;
        ensure!(
            size == self.source.blocks(),
            "after {attack}: Nblocks {size}"
        );
        Ok(())
    }
}

/// A 16-byte header claiming `length` bytes.
fn header(length: u32, frame_kind: u8, request_id: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&[frame_kind, 0, 0, 0]);
    bytes.extend_from_slice(&request_id.to_le_bytes());
    bytes
}

/// A whole frame of `frame_kind` with `body`.
fn raw_frame(frame_kind: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(16 + body.len()).unwrap_or(u32::MAX);
    let mut bytes = header(length, frame_kind, request_id);
    bytes.extend_from_slice(body);
    bytes
}

/// A GetPage frame whose bytes `edit` changes; its length field is fixed up.
fn edited_get_page(
    rel: RelTag,
    request_id: u64,
    edit: impl FnOnce(&mut Vec<u8>),
) -> Result<Vec<u8>> {
    let mut bytes = frame_bytes(request_id, ClientMessage::Request(get_page(rel, 0)?))?;
    edit(&mut bytes);
    let length = u32::try_from(bytes.len())?.to_le_bytes();
    bytes[..4].copy_from_slice(&length);
    Ok(bytes)
}

/// Sends `bytes` on a fresh connection (after a `Hello` if `hello` is
/// given) and returns what the server sent before closing.
fn fresh(
    server: &Pageserver,
    good_hello: Option<&quire_net::page_protocol::Hello>,
    bytes: &[u8],
) -> Result<Vec<quire_net::page_protocol::ServerFrame>> {
    let mut stream = match good_hello {
        Some(good) => PageConn::ready(server.page, good)?.stream,
        None => connect(server.page)?,
    };
    stream.write_all(bytes)?;
    Ok(until_closed(&mut stream, CLOSE_DEADLINE)?.0)
}

fn framing_attacks(
    server: &Pageserver,
    good: &quire_net::page_protocol::Hello,
    witness: &mut Witness<'_>,
    rel: RelTag,
) -> Result<()> {
    // Garbage: an HTTP request. Its first bytes read as a huge length.
    let mut stream = connect(server.page)?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (frames, _) = until_closed(&mut stream, CLOSE_DEADLINE)?;
    for frame in &frames {
        let error = error_of(frame)?;
        ensure!(
            error.error == ServiceError::BadRequest && error.closes,
            "garbage: {frame:?}"
        );
    }
    println!("garbage: {} closing BadRequest, closed", frames.len());
    witness.still_served("garbage")?;

    let max = REQUEST_FRAME_BYTES_MAX;
    for (length, when) in [(8, "before the Hello"), (max + 1, "before the Hello")] {
        let frames = fresh(server, None, &header(length, kind::GET_PAGE, 5))?;
        expect_closing_error(
            &frames,
            5,
            kind::GET_PAGE,
            ServiceError::BadRequest,
            &format!("length {length} {when}"),
        )?;
        witness.still_served(&format!("length {length} {when}"))?;
    }
    for length in [0, 15, max + 1, u32::MAX] {
        let frames = fresh(server, Some(good), &header(length, kind::GET_PAGE, 6))?;
        expect_closing_error(
            &frames,
            6,
            kind::GET_PAGE,
            ServiceError::BadRequest,
            &format!("length {length} after HelloOk"),
        )?;
        witness.still_served(&format!("length {length} after HelloOk"))?;
    }

    let request = frame_bytes(9, ClientMessage::Request(get_page(rel, 0)?))?;
    let frames = fresh(server, None, &request)?;
    expect_closing_error(
        &frames,
        9,
        kind::GET_PAGE,
        ServiceError::BadRequest,
        "a GetPage before the Hello",
    )?;
    witness.still_served("a request before the Hello")?;

    let second = frame_bytes(11, ClientMessage::Hello(good.clone()))?;
    let frames = fresh(server, Some(good), &second)?;
    expect_closing_error(
        &frames,
        11,
        kind::HELLO,
        ServiceError::BadRequest,
        "a second Hello",
    )?;
    witness.still_served("a second Hello")?;

    // A second Hello behind pipelined requests: those are answered first.
    let mut both = frame_bytes(12, ClientMessage::Request(get_page(rel, 0)?))?;
    both.extend(second);
    let frames = fresh(server, Some(good), &both)?;
    ensure!(
        frames.len() == 2
            && matches!(
                frames[0].message,
                ServerMessage::Response(Response::GetPage { .. })
            ),
        "a GetPage then a Hello: {frames:?}"
    );
    expect_closing_error(
        &frames[1..],
        11,
        kind::HELLO,
        ServiceError::BadRequest,
        "a Hello after a GetPage",
    )?;

    // A frame cut off by a close, before and after the handshake.
    let mut stream = connect(server.page)?;
    stream.write_all(&frame_bytes(0, ClientMessage::Hello(good.clone()))?[..30])?;
    drop(stream);
    let mut conn = PageConn::ready(server.page, good)?;
    conn.send_raw(&request[..20])?;
    drop(conn);
    witness.still_served("frames cut off by a close")
}

/// Whole frames that break the spec: what each is, its bytes, the kind
/// the answer must name.
fn bad_frames(rel: RelTag) -> Result<Vec<(&'static str, Vec<u8>, u8)>> {
    let body = vec![0u8; 36];
    let mut cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("an unknown kind", raw_frame(0x42, 100, &body), 0x42),
        (
            "a reply kind",
            raw_frame(kind::GET_PAGE_OK, 101, &[0u8; 8200 - 8192]),
            kind::GET_PAGE_OK,
        ),
        (
            "an Error frame",
            raw_frame(kind::ERROR, 102, &[0u8; 24]),
            kind::ERROR,
        ),
        (
            "a GetPage one byte short",
            edited_get_page(rel, 103, |b| {
                b.pop();
            })?,
            kind::GET_PAGE,
        ),
        (
            "a GetPage one byte long",
            edited_get_page(rel, 104, |b| b.push(0))?,
            kind::GET_PAGE,
        ),
        (
            "a reserved header byte set",
            edited_get_page(rel, 105, |b| b[6] = 1)?,
            kind::GET_PAGE,
        ),
        (
            "a reserved relation byte set",
            edited_get_page(rel, 106, |b| b[16 + 16 + 14] = 1)?,
            kind::GET_PAGE,
        ),
        (
            "fork 9",
            edited_get_page(rel, 107, |b| b[16 + 16 + 12] = 9)?,
            kind::GET_PAGE,
        ),
        (
            "block InvalidBlockNumber",
            edited_get_page(rel, 108, |b| {
                b[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
            })?,
            kind::GET_PAGE,
        ),
        (
            "request_lsn 0",
            edited_get_page(rel, 109, |b| b[16..24].copy_from_slice(&0u64.to_le_bytes()))?,
            kind::GET_PAGE,
        ),
        (
            "not_modified_since latest",
            edited_get_page(rel, 110, |b| {
                b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
            })?,
            kind::GET_PAGE,
        ),
    ];
    // GetPages over 32 blocks, and a range past MaxBlockNumber.
    let get_pages = |id: u64, first: u32, count: u32| -> Result<Vec<u8>> {
        let mut body = Vec::new();
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&rel.spc_oid.to_le_bytes());
        body.extend_from_slice(&rel.db_oid.to_le_bytes());
        body.extend_from_slice(&rel.rel_number.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.extend_from_slice(&first.to_le_bytes());
        body.extend_from_slice(&count.to_le_bytes());
        Ok(raw_frame(kind::GET_PAGES, id, &body))
    };
    cases.push((
        "GetPages of 33 blocks",
        get_pages(111, 0, 33)?,
        kind::GET_PAGES,
    ));
    cases.push((
        "GetPages of 0 blocks",
        get_pages(112, 0, 0)?,
        kind::GET_PAGES,
    ));
    cases.push((
        "GetPages past MaxBlockNumber",
        get_pages(113, u32::MAX - 3, 8)?,
        kind::GET_PAGES,
    ));
    Ok(cases)
}

/// Frames the server refuses one by one, on one connection that stays open.
fn bad_frames_keep_the_connection(
    server: &Pageserver,
    good: &quire_net::page_protocol::Hello,
    source: &Source,
) -> Result<()> {
    let rel = source.rel;
    let mut conn = PageConn::ready(server.page, good)?;
    let cases = bad_frames(rel)?;
    for (what, bytes, request_kind) in &cases {
        let id = u64::from_le_bytes(bytes[8..16].try_into()?);
        conn.send_raw(bytes)?;
        let frame = conn.recv().with_context(|| what.to_string())?;
        let error = error_of(&frame).with_context(|| what.to_string())?;
        ensure!(
            frame.request_id == id
                && error.error == ServiceError::BadRequest
                && !error.closes
                && error.request_kind == *request_kind,
            "{what}: expected an open BadRequest for {id}, got {frame:?}"
        );
        let (_, page) = conn
            .page(rel, 2)
            .with_context(|| format!("the request after {what}"))?;
        ensure!(page == source.page(2), "after {what}: block 2 differs");
        println!(
            "{what}: BadRequest ({}), the connection answers on",
            error.message
        );
    }
    // All of them pipelined in one write, between good requests: every
    // answer in order.
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for (n, (_, bytes, _)) in cases.iter().enumerate() {
        let id = 1000 + n as u64;
        pipeline.extend(frame_bytes(id, ClientMessage::Request(get_page(rel, 3)?))?);
        expected.push((id, true));
        pipeline.extend_from_slice(bytes);
        expected.push((u64::from_le_bytes(bytes[8..16].try_into()?), false));
    }
    conn.send_raw(&pipeline)?;
    for (id, good) in expected {
        let frame = conn.recv()?;
        ensure!(
            frame.request_id == id,
            "pipelined: expected the answer to {id}, got {frame:?}"
        );
        match (&frame.message, good) {
            (ServerMessage::Response(Response::GetPage { page, .. }), true)
                if page[..] == *source.page(3) => {}
            (ServerMessage::Error(error), false)
                if error.error == ServiceError::BadRequest && !error.closes => {}
            _ => bail!("pipelined: request {id}: {frame:?}"),
        }
    }
    println!(
        "{} bad frames pipelined between good GetPages: each answered in order",
        cases.len()
    );
    Ok(())
}

fn refused_hellos(server: &Pageserver, imported: &Imported) -> Result<()> {
    let (tenant, timeline) = (imported.tenant, imported.timeline);
    let unsharded = ShardIdentity::unsharded();
    let cases = [
        (
            "an unknown tenant",
            hello(TenantId([0x5A; 16]), timeline, unsharded, ""),
            ServiceError::UnknownTenant,
        ),
        (
            "an unknown timeline",
            hello(tenant, TimelineId([0x5B; 16]), unsharded, ""),
            ServiceError::UnknownTimeline,
        ),
        (
            "shard 0 of 2 for an unsharded tenant",
            hello(tenant, timeline, ShardIdentity::new(0, 2, 8)?, ""),
            ServiceError::ShardNotHere,
        ),
        (
            "shard 1 of 2 for an unsharded tenant",
            hello(tenant, timeline, ShardIdentity::new(1, 2, 8)?, ""),
            ServiceError::ShardNotHere,
        ),
    ];
    for (what, bad, expected) in cases {
        PageConn::refused(server.page, &bad, expected, what)?;
    }
    let mut future = hello(tenant, timeline, unsharded, "");
    future.version_min = 2;
    future.version_max = 7;
    PageConn::refused(
        server.page,
        &future,
        ServiceError::UnsupportedVersion { min: 1, max: 1 },
        "versions 2 to 7",
    )?;
    // A bad magic.
    let mut bytes = frame_bytes(
        0,
        ClientMessage::Hello(hello(tenant, timeline, unsharded, "")),
    )?;
    bytes[16] = b'X';
    let frames = fresh(server, None, &bytes)?;
    expect_closing_error(
        &frames,
        0,
        kind::HELLO,
        ServiceError::BadRequest,
        "a Hello with a bad magic",
    )
}

fn handshake_timeouts(server: &Pageserver, good: &quire_net::page_protocol::Hello) -> Result<()> {
    let hello_bytes = frame_bytes(0, ClientMessage::Hello(good.clone()))?;
    for (what, sent) in [
        ("nothing sent", 0),
        ("half a header", 8),
        ("a Hello but its last byte", hello_bytes.len() - 1),
    ] {
        let mut stream = connect(server.page)?;
        stream.write_all(&hello_bytes[..sent])?;
        let (frames, after) = until_closed(&mut stream, Duration::from_secs(6))?;
        ensure!(frames.is_empty(), "{what}: the server answered {frames:?}");
        let limit = Duration::from_millis(HANDSHAKE_MS);
        ensure!(
            after >= limit.mul_f64(0.8) && after <= limit * 3 + Duration::from_millis(500),
            "{what}: closed after {after:?}, the handshake timeout is {limit:?}"
        );
        println!("a handshake with {what}: closed without an answer after {after:?}");
    }
    Ok(())
}

/// `WalNotIngested` after the wait, and a read ahead of what is ingested
/// of data not changed since served at the last LSN.
fn lsn_waits(conn: &mut PageConn, imported: &Imported, source: &Source) -> Result<()> {
    let rel = source.rel;
    ensure!(
        u64::from(conn.limits.lsn_wait_ms) == LSN_WAIT_MS,
        "HelloOk: {:?}",
        conn.limits
    );
    let ahead = Lsn(imported.lsn.0 + (16 << 20));
    let began = Instant::now();
    let request = Request::GetPage {
        lsn: ReadLsn::latest(ahead)?,
        rel,
        block: BlockNo(0),
    };
    let error = conn.call_refused(
        &request,
        ServiceError::WalNotIngested {
            waited_for: ahead,
            last_ingested: imported.lsn,
        },
    )?;
    let waited = began.elapsed();
    ensure!(
        waited >= Duration::from_millis(LSN_WAIT_MS - 50)
            && waited < Duration::from_millis(LSN_WAIT_MS * 6),
        "WalNotIngested after {waited:?}, the wait is {LSN_WAIT_MS} ms"
    );
    println!(
        "not_modified_since {ahead}: WalNotIngested after {waited:?} ({})",
        error.message
    );
    // Pipelined, a batch of such reads shares one wait: eight answers
    // within about one wait, not eight waits in turn.
    let began = Instant::now();
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for block in 0..8 {
        let id = conn.next_id();
        ids.push(id);
        bytes.extend(frame_bytes(
            id,
            ClientMessage::Request(Request::GetPage {
                lsn: ReadLsn::latest(ahead)?,
                rel,
                block: BlockNo(block),
            }),
        )?);
    }
    conn.send_raw(&bytes)?;
    for id in ids {
        let frame = conn.recv()?;
        match frame.message {
            ServerMessage::Error(error)
                if frame.request_id == id
                    && matches!(error.error, ServiceError::WalNotIngested { .. }) => {}
            other => bail!("pipelined read {id} ahead of ingest: {other:?}"),
        }
    }
    let waited = began.elapsed();
    ensure!(
        waited < Duration::from_millis(LSN_WAIT_MS * 3),
        "eight pipelined reads ahead of ingest took {waited:?}; one wait is {LSN_WAIT_MS} ms"
    );
    println!("eight pipelined reads ahead of ingest: all WalNotIngested after {waited:?}");
    // The same for a size.
    let request = Request::Nblocks {
        lsn: ReadLsn::new(RequestLsn::At(ahead), ahead)?,
        rel,
    };
    conn.call_refused(
        &request,
        ServiceError::WalNotIngested {
            waited_for: ahead,
            last_ingested: imported.lsn,
        },
    )?;
    // A request_lsn ahead with an old not_modified_since is served at the last LSN.
    let request = Request::GetPage {
        lsn: ReadLsn::new(RequestLsn::At(ahead), imported.lsn)?,
        rel,
        block: BlockNo(1),
    };
    match conn.call(request)? {
        ServerMessage::Response(Response::GetPage { lsn, page })
            if lsn == imported.lsn && page[..] == *source.page(1) => {}
        other => bail!(
            "a read at {ahead} of data unchanged since {}: {other:?}",
            imported.lsn
        ),
    }
    Ok(())
}

/// Relations and blocks that do not exist.
fn not_found(conn: &mut PageConn, source: &Source) -> Result<()> {
    let rel = source.rel;
    let missing = RelTag {
        rel_number: 999_999,
        ..rel
    };
    let error = conn.call_refused(&nblocks(missing)?, ServiceError::NotFound)?;
    println!(
        "Nblocks of a missing relation: NotFound ({})",
        error.message
    );
    conn.call_refused(&get_page(missing, 0)?, ServiceError::NotFound)?;
    let error = conn.call_refused(&get_page(rel, source.blocks())?, ServiceError::NotFound)?;
    println!("the block past the end: NotFound ({})", error.message);
    conn.call_refused(&get_page(rel, BlockNo::MAX.0)?, ServiceError::NotFound)?;
    match conn.call(Request::Exists {
        lsn: ReadLsn::latest(Lsn(0))?,
        rel: missing,
    })? {
        ServerMessage::Response(Response::Exists { exists: false, .. }) => {}
        other => bail!("Exists of a missing relation: {other:?}"),
    }
    Ok(())
}

/// GC up to the import LSN: reads below it are refused, reads at it
/// served; a cutoff past everything leaves the latest readable.
fn gc_cutoff(
    server: &Pageserver,
    conn: &mut PageConn,
    imported: &Imported,
    source: &Source,
) -> Result<()> {
    let rel = source.rel;
    let path = format!(
        "/v1/tenant/{}/timeline/{}/gc",
        imported.tenant, imported.timeline
    );
    let (status, body) = server.http_call(
        "POST",
        &path,
        None,
        Some(&json!({"cutoff_lsn": imported.lsn.to_string()})),
    )?;
    ensure!(status == 200, "POST {path}: {status} {body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let cutoff: Lsn = field(&answer["shards"][0], "gc_cutoff_lsn")?.parse()?;
    ensure!(
        cutoff == imported.lsn,
        "GC to {} set the cutoff to {cutoff}: {body}",
        imported.lsn
    );
    let below = Lsn(imported.lsn.0 - 8);
    let request = Request::GetPage {
        lsn: ReadLsn::new(RequestLsn::At(below), Lsn(0))?,
        rel,
        block: BlockNo(0),
    };
    let error = conn.call_refused(
        &request,
        ServiceError::LsnBelowGcCutoff {
            requested: below,
            cutoff,
        },
    )?;
    println!(
        "a read at {below} after GC to {cutoff}: LsnBelowGcCutoff ({})",
        error.message
    );
    let request = Request::Nblocks {
        lsn: ReadLsn::new(RequestLsn::At(below), Lsn(0))?,
        rel,
    };
    conn.call_refused(
        &request,
        ServiceError::LsnBelowGcCutoff {
            requested: below,
            cutoff,
        },
    )?;
    let request = Request::GetPage {
        lsn: ReadLsn::new(RequestLsn::At(imported.lsn), Lsn(0))?,
        rel,
        block: BlockNo(0),
    };
    match conn.call(request)? {
        ServerMessage::Response(Response::GetPage { lsn, .. }) if lsn == imported.lsn => {}
        other => bail!("a read at the GC cutoff: {other:?}"),
    }

    // A cutoff past everything is clamped: the latest stays readable.
    let (status, body) = server.http_call(
        "POST",
        &path,
        None,
        Some(&json!({"cutoff_lsn": "FFFFFFFF/FFFFFFFF"})),
    )?;
    ensure!(status == 200, "POST {path}: {status} {body}");
    let (lsn, page) = conn.page(rel, 0)?;
    ensure!(
        lsn == imported.lsn && page == source.page(0),
        "after GC past the end: block 0 at {lsn}"
    );
    ensure!(
        conn.nblocks(rel)? == source.blocks(),
        "after GC past the end: Nblocks"
    );
    Ok(())
}

#[test]
fn hostile_clients_never_disturb_a_good_connection() -> Result<()> {
    let source = Source::create(4_000)?;
    let root = tempfile::tempdir()?;
    let handshake = HANDSHAKE_MS.to_string();
    let wait = LSN_WAIT_MS.to_string();
    let mut server = Pageserver::start(
        &root.path().join("pageserver"),
        &[
            "--cores",
            "2",
            "--handshake-timeout-ms",
            &handshake,
            "--lsn-wait-ms",
            &wait,
        ],
    )?;
    let imported = import(&server, &source.pg.datadir(), &[], None)?;
    let good = hello(
        imported.tenant,
        imported.timeline,
        ShardIdentity::unsharded(),
        "",
    );
    let mut witness = Witness {
        conn: PageConn::ready(server.page, &good)?,
        source: &source,
        lsn: imported.lsn,
        checks: 0,
    };
    witness.still_served("nothing")?;

    framing_attacks(&server, &good, &mut witness, source.rel)?;
    bad_frames_keep_the_connection(&server, &good, &source)?;
    witness.still_served("bad frames")?;
    refused_hellos(&server, &imported)?;
    witness.still_served("refused Hellos")?;
    handshake_timeouts(&server, &good)?;
    witness.still_served("handshakes that never complete")?;
    let mut conn = PageConn::ready(server.page, &good)?;
    lsn_waits(&mut conn, &imported, &source)?;
    not_found(&mut conn, &source)?;
    gc_cutoff(&server, &mut conn, &imported, &source)?;
    drop(conn);
    witness.still_served("LSN rules")?;

    // Only the good connection is left open.
    let began = Instant::now();
    loop {
        let open = server.metric("quire_page_connections", "")?;
        if (open - 1.0).abs() < f64::EPSILON {
            break;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(5),
            "{open} page connections open, expected 1"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every BadRequest is counted: 34 answered after HelloOk (4 lengths, 2
    // second Hellos, 14 bad frames twice), at least 4 during handshakes.
    let errors = server.metric("quire_page_errors_total", "code=\"BadRequest\"")?;
    ensure!(
        errors >= 38.0,
        "quire_page_errors_total{{code=\"BadRequest\"}} = {errors}"
    );
    witness.still_served("everything")?;
    server.check_alive()
}
