//! Sockets on a real executor: accept gives the stream and its peer's
//! address, bytes cross both ways, connects fail or time out as they
//! should, and reads bounded by a timeout or a deadline time out without
//! losing the bytes that come later.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use quire_io::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use quire_io::{LocalConfig, run_local, spawn_local};

fn on_executor<F, Fut>(task: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let config = LocalConfig {
        io_memory_bytes: 1 << 20,
        ..LocalConfig::default()
    };
    run_local(&config, task).unwrap();
}

#[test]
fn accept_gives_the_stream_and_its_peer_address() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = spawn_local(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.set_nodelay(true).unwrap();
            assert_eq!(stream.peer_addr().unwrap(), address);
            stream.write_all(b"ping").await.unwrap();
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"pong");
            stream.shutdown(Shutdown::Write).await.unwrap();
            stream.local_addr().unwrap()
        });
        let (mut stream, peer) = listener.accept().await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), peer);
        let mut request = [0u8; 4];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping");
        stream.write_all(b"pong").await.unwrap();
        // The client shut its side: end of stream, then a short read_exact.
        let mut rest = [0u8; 1];
        assert_eq!(stream.read(&mut rest).await.unwrap(), 0);
        assert_eq!(
            stream.read_exact(&mut rest).await.unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
        assert_eq!(client.await, peer);
    });
}

#[test]
fn connecting_to_a_closed_port_is_refused_and_a_hostless_address_is_an_error() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    on_executor(move || async move {
        let refused = TcpStream::connect(closed).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        let refused = TcpStream::connect_timeout(closed, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        // No port: resolving fails, as an error rather than a panic.
        assert!(TcpStream::connect("127.0.0.1").await.is_err());
        assert!(TcpListener::bind("127.0.0.1").is_err());
    });
}

/// A listener whose accept queue holds one connection and is full, so the
/// kernel drops every further SYN: a connect to it can only time out.
fn full_listener() -> (
    std::os::fd::OwnedFd,
    std::net::SocketAddr,
    std::net::TcpStream,
) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain socket calls on a descriptor created here and owned by
    // the returned `OwnedFd`; the address structure outlives the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let size = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).unwrap();
        assert_eq!(
            libc::bind(owned.as_raw_fd(), (&raw const addr).cast(), size),
            0
        );
        assert_eq!(libc::listen(owned.as_raw_fd(), 0), 0);
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut len = size;
        assert_eq!(
            libc::getsockname(owned.as_raw_fd(), (&raw mut bound).cast(), &raw mut len),
            0
        );
        let port = u16::from_be(bound.sin_port);
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let queued = std::net::TcpStream::connect(address).unwrap();
        (owned, address, queued)
    }
}

#[test]
fn a_connect_that_gets_no_answer_times_out() {
    let (_listener, address, _queued) = full_listener();
    on_executor(move || async move {
        let began = Instant::now();
        let error = TcpStream::connect_timeout(address, Duration::from_millis(300))
            .await
            .unwrap_err();
        let took = began.elapsed();
        assert_eq!(error.kind(), ErrorKind::TimedOut, "{error}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
    });
}

#[test]
fn reads_past_their_deadline_time_out_and_lose_nothing_that_comes_later() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (go, wait) = futures::channel::oneshot::channel::<()>();
        let client = spawn_local(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            wait.await.unwrap();
            stream.write_all(b"late").await.unwrap();
            // Keep the connection open until the server has read.
            let mut end = [0u8; 1];
            stream.read(&mut end).await.unwrap()
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 16];

        let began = Instant::now();
        let error = stream
            .read_with_timeout(&mut buf, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);
        assert!(began.elapsed() >= Duration::from_millis(90));
        // The stream's own timeout is back.
        assert_eq!(stream.read_timeout(), Some(Duration::from_secs(30)));
        // A deadline already past fails at once.
        let error = stream
            .read_with_deadline(&mut buf, Instant::now())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);

        // The stream's timeout bounds a plain read too.
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let error = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);
        assert!(stream.set_read_timeout(Some(Duration::ZERO)).is_err());
        stream.set_read_timeout(None).unwrap();

        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = stream.read_with_deadline(&mut buf, deadline).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"late");
        drop(stream);
        assert_eq!(client.await, 0);
    });
}

#[test]
fn unix_sockets_carry_bytes_and_bound_reads() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("socket");
    on_executor(move || async move {
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(&*path));
        let client = spawn_local(async move {
            let mut stream = UnixStream::connect(&path).await.unwrap();
            stream.write_all(b"hello").await.unwrap();
            let mut reply = [0u8; 2];
            stream.read_exact(&mut reply).await.unwrap();
            stream.shutdown(Shutdown::Both).await.unwrap();
            reply
        });
        let mut stream = listener.accept().await.unwrap();
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"hello");
        let mut buf = [0u8; 4];
        let deadline = Instant::now() + Duration::from_millis(50);
        let error = stream
            .read_with_deadline(&mut buf, deadline)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TimedOut);
        stream.write_all(b"ok").await.unwrap();
        assert_eq!(&client.await, b"ok");
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    });
}

#[test]
fn busy_polling_reads_take_bytes_during_and_after_the_spin_and_see_the_end() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let client = spawn_local(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.set_nodelay(true).unwrap();
            // Within the reader's spin, then well after it, then a close.
            stream.write_all(b"early").await.unwrap();
            quire_io::sleep(Duration::from_millis(50)).await;
            stream.write_all(b"late!").await.unwrap();
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"done");
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_busy_poll(Some(Duration::from_millis(5)));
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"early");
        let started = Instant::now();
        let mut second = [0u8; 5];
        stream.read_exact(&mut second).await.unwrap();
        assert_eq!(&second, b"late!");
        assert!(started.elapsed() >= Duration::from_millis(20));
        stream.write_all(b"done").await.unwrap();
        client.await;
        let mut rest = [0u8; 8];
        assert_eq!(stream.read(&mut rest).await.unwrap(), 0);
        assert_eq!(stream.read(&mut []).await.unwrap(), 0);
    });
}

#[test]
fn busy_polling_writes_fill_a_slow_reader_in_order_and_wait_past_the_spin() {
    on_executor(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // 8 MiB: far more than the socket buffers hold, so the write meets a
        // full socket, spins, and (the reader pausing 20 ms, past the
        // write's 2 ms spin) waits through the ring too.
        let bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        let expected = bytes.clone();
        let reader = spawn_local(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let mut got = Vec::with_capacity(expected.len());
            let mut buf = vec![0u8; 64 << 10];
            let mut reads = 0;
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                reads += 1;
                if reads % 16 == 0 {
                    quire_io::sleep(Duration::from_millis(20)).await;
                }
            }
            assert!(got == expected, "the bytes arrived changed or out of order");
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_busy_poll(Some(Duration::from_micros(50)));
        stream.write_all(&bytes).await.unwrap();
        stream.shutdown(Shutdown::Write).await.unwrap();
        reader.await;
    });
}
