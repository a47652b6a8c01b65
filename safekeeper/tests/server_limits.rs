//! The safekeeper server's limits, in one process on loopback: a framed
//! connection's buffer stays small when idle and grows only for the frame
//! being read, an oversized length header is refused without growing it,
//! the first frame, a frame once begun, the wait between requests and a
//! frame sent to a peer that does not read are bounded, and the accept loop refuses connections past its limit with
//! an `Error` frame and serves again once the idle ones are reclaimed.

use std::rc::Rc;
use std::time::{Duration, Instant};

use quire_io::net::{TcpListener, TcpStream};
use quire_io::{LocalConfig, run_local};
use quire_postgres::Lsn;
use quire_safekeeper::server::conn::{ConnError, Deadlines, FramedConn, READ_BUF_BYTES};
use quire_safekeeper::server::limits::Limits;
use quire_safekeeper::server::{Config, Server};
use quire_safekeeper::wire::{MAX_FRAME, Message, TimelineKey};

const KEY: TimelineKey = TimelineKey {
    tenant: [7; 16],
    timeline: [8; 16],
};

const DEADLINES: Deadlines = Deadlines {
    handshake: Duration::from_millis(300),
    frame: Duration::from_millis(300),
    idle: Duration::from_millis(600),
    write: Duration::from_secs(2),
};

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let config = LocalConfig {
        io_memory_bytes: 2 << 20,
        ..LocalConfig::default()
    };
    run_local(&config, f).expect("the test task");
}

/// A server-side connection bounded by `DEADLINES` and the client's end.
async fn pair() -> (FramedConn, TcpStream) {
    pair_with(DEADLINES).await
}

/// A server-side connection bounded by `deadlines` and the client's end.
async fn pair_with(deadlines: Deadlines) -> (FramedConn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let client = TcpStream::connect(address).await.expect("connect");
    let (stream, _) = listener.accept().await.expect("accept");
    (FramedConn::accepted(stream, deadlines), client)
}

/// Reads what the server sends until it closes; the messages in it.
async fn read_until_closed(client: &mut TcpStream) -> Vec<Message> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = client
        .read_with_timeout(&mut chunk, Duration::from_secs(5))
        .await
    {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
    let mut messages = Vec::new();
    let mut at = 0;
    while let Ok(Some((message, used))) = Message::decode(&bytes[at..]) {
        messages.push(message);
        at += used;
    }
    messages
}

fn error_text(messages: &[Message]) -> String {
    match messages.first() {
        Some(Message::Error { message }) => message.clone(),
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

#[test]
fn the_read_buffer_grows_only_for_the_frame_it_reads() {
    on_executor(|| async {
        let (mut server, mut client) = pair().await;
        assert_eq!(server.buffer_bytes(), READ_BUF_BYTES);
        let status = Message::GetStatus { key: KEY };
        client.write_all(&status.encode()).await.expect("send");
        assert_eq!(server.receive().await.expect("status"), status);
        assert_eq!(server.buffer_bytes(), READ_BUF_BYTES, "a small frame");
        // A 1 MiB frame, then a small one right behind it.
        let wal = Message::Wal {
            begin: Lsn(1 << 24),
            bytes: vec![0xAB; 1 << 20],
        };
        let mut both = wal.encode();
        both.extend_from_slice(&status.encode());
        client.write_all(&both).await.expect("send");
        assert_eq!(server.receive().await.expect("WAL"), wal);
        assert_eq!(
            server.buffer_bytes(),
            READ_BUF_BYTES,
            "back to its idle size once the big frame is taken"
        );
        assert_eq!(server.receive().await.expect("status"), status);
    });
}

#[test]
fn an_oversized_length_is_refused_before_anything_grows() {
    on_executor(|| async {
        let (mut server, mut client) = pair().await;
        let mut header = vec![b'S'];
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        client.write_all(&header).await.expect("send");
        let error = server.receive().await.expect_err("a frame over the limit");
        assert!(matches!(error, ConnError::Frame(_)), "{error}");
        assert_eq!(server.buffer_bytes(), READ_BUF_BYTES);
        drop(server);
        let said = error_text(&read_until_closed(&mut client).await);
        assert!(said.contains("over the limit"), "{said}");
        // A header announcing the largest frame costs nothing until its
        // bytes come; then the buffer grows with them, never past it.
        let patient = Deadlines {
            handshake: Duration::from_secs(20),
            frame: Duration::from_secs(20),
            ..DEADLINES
        };
        let (mut server, mut client) = pair_with(patient).await;
        let mut header = vec![b'w'];
        header.extend_from_slice(&u32::try_from(MAX_FRAME).expect("fits").to_le_bytes());
        header.extend_from_slice(&[0; 100]);
        client.write_all(&header).await.expect("send");
        let waiting = quire_io::timeout(Duration::from_millis(100), server.receive()).await;
        assert!(waiting.is_err(), "a whole frame cannot have come");
        assert_eq!(server.buffer_bytes(), READ_BUF_BYTES);
        let done = Rc::new(std::cell::Cell::new(false));
        let written = Rc::clone(&done);
        let writer = quire_io::spawn_local(async move {
            client
                .write_all(&vec![0; 3 << 20])
                .await
                .expect("3 MiB more");
            written.set(true);
            client
        });
        // Read (cancelled and resumed: no byte is lost) until all came.
        while !done.get() {
            let waiting = quire_io::timeout(Duration::from_millis(50), server.receive()).await;
            assert!(waiting.is_err(), "a whole frame cannot have come");
        }
        let waiting = quire_io::timeout(Duration::from_millis(100), server.receive()).await;
        assert!(waiting.is_err(), "a whole frame cannot have come");
        drop(writer.await);
        let held = server.buffer_bytes();
        assert!(
            (3 << 20..=5 + MAX_FRAME).contains(&held),
            "{held} bytes for 3 MiB of a 4 MiB frame"
        );
    });
}

#[test]
fn first_frame_frame_and_idle_waits_are_bounded() {
    on_executor(|| async {
        // Nothing at all: the handshake limit.
        let (mut server, mut client) = pair().await;
        let began = Instant::now();
        let error = server.receive().await.expect_err("no first frame");
        assert!(
            matches!(error, ConnError::Deadline { what, .. } if what.contains("first")),
            "{error}"
        );
        assert!(began.elapsed() < Duration::from_secs(2));
        drop(server);
        let said = error_text(&read_until_closed(&mut client).await);
        assert!(said.contains("first frame"), "{said}");

        // A first frame, then a second one a byte every 100 ms: bytes keep
        // coming within the idle limit, but the frame limit ends it.
        let (mut server, mut client) = pair().await;
        let status = Message::GetStatus { key: KEY }.encode();
        client.write_all(&status).await.expect("send");
        server.receive().await.expect("first frame");
        let slow = quire_io::spawn_local(async move {
            for byte in status {
                if client.write_all(&[byte]).await.is_err() {
                    break;
                }
                quire_io::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let began = Instant::now();
        let error = server.receive().await.expect_err("a slow frame");
        assert!(
            matches!(error, ConnError::Deadline { what, .. } if what.contains("rest")),
            "{error}"
        );
        assert!(began.elapsed() < Duration::from_secs(2));
        drop(server);
        drop(slow.await);

        // A first frame and then silence: the idle limit.
        let (mut server, mut client) = pair().await;
        client
            .write_all(&Message::GetStatus { key: KEY }.encode())
            .await
            .expect("send");
        server.receive().await.expect("first frame");
        let began = Instant::now();
        let error = server.receive().await.expect_err("silence");
        assert!(
            matches!(error, ConnError::Deadline { what, .. } if what.contains("request")),
            "{error}"
        );
        assert!(began.elapsed() >= DEADLINES.idle);
    });
}

#[test]
fn connections_past_the_limit_are_refused_and_idle_ones_reclaimed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let data = dir.path().to_owned();
    on_executor(move || async move {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let listen = probe.local_addr().expect("address").to_string();
        drop(probe);
        let config = Config {
            id: 1,
            listen: listen.clone(),
            data,
            peers: Vec::new(),
            pg_user: "postgres".into(),
            auth: quire_safekeeper::server::auth::Auth::default(),
            peer_token: None,
            limits: Limits {
                max_connections: 4,
                max_timelines: 1,
                deadlines: DEADLINES,
            },
        };
        let server = Server::open(config).await.expect("open");
        let serving = quire_io::spawn_local(Rc::clone(&server).serve());
        quire_io::sleep(Duration::from_millis(50)).await;

        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(&listen).await.expect("connect"));
        }
        quire_io::sleep(Duration::from_millis(50)).await;
        let mut extra = TcpStream::connect(&listen).await.expect("connect");
        let said = error_text(&read_until_closed(&mut extra).await);
        assert_eq!(said, "too many connections (4)");

        // The handshake limit closes the four that never spoke.
        for conn in &mut idle {
            let said = error_text(&read_until_closed(conn).await);
            assert!(said.contains("first frame"), "{said}");
        }
        quire_io::sleep(Duration::from_millis(50)).await;
        let mut conn = FramedConn::connect(&listen).await.expect("connect");
        let answer = conn
            .call(&Message::GetStatus { key: KEY })
            .await
            .expect("an answer");
        assert!(
            matches!(&answer, Message::Error { message } if message.contains("no timeline")),
            "{answer:?}"
        );

        // One timeline at most; a second is refused.
        let create = |key| Message::CreateTimeline {
            key,
            wal_start: Lsn(16 << 20),
            segment_size: 16 << 20,
            system_id: 1,
            members: Vec::new(),
        };
        assert_eq!(conn.call(&create(KEY)).await.expect("create"), Message::Ok);
        let other = TimelineKey {
            tenant: [9; 16],
            timeline: [9; 16],
        };
        let answer = conn.call(&create(other)).await.expect("an answer");
        assert!(
            matches!(&answer, Message::Error { message } if message.contains("too many timelines (1)")),
            "{answer:?}"
        );
        // A reply kind is not a request; the answer names only its kind.
        let wal = Message::Wal {
            begin: Lsn(0),
            bytes: vec![0; 1 << 20],
        };
        let answer = conn.call(&wal).await.expect("an answer");
        assert_eq!(
            answer,
            Message::Error {
                message: "not a request: WAL".into()
            }
        );
        drop(serving);
    });
}

#[test]
fn a_peer_that_stops_reading_fails_the_send_after_the_write_deadline() {
    on_executor(|| async {
        let (mut server, client) = pair().await;
        let frame = Message::Wal {
            begin: Lsn(0),
            bytes: vec![1; 1 << 20],
        };
        let began = Instant::now();
        let mut sent = 0;
        let (failed, took) = loop {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "{sent} MiB went to a peer that never reads"
            );
            let this_send = Instant::now();
            match server.send(&frame).await {
                Ok(()) => sent += 1,
                Err(e) => break (e, this_send.elapsed()),
            }
        };
        assert!(
            matches!(failed, ConnError::Deadline { what, .. } if what.contains("taking a frame")),
            "{failed}"
        );
        // The socket drains a little now and then; the deadline is the
        // frame's, not one wait's.
        assert!(
            took < DEADLINES.write + Duration::from_millis(500),
            "the failing send took {took:?}"
        );
        drop(client);
    });
}
