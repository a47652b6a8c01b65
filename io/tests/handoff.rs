//! Hand-off across two executors: a connection accepted and greeted on one
//! core is served by another with no byte lost; a full queue refuses the
//! next item and gives it back; a queue whose receiver is gone says so.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::sync::mpsc;

use quire_io::handoff::{self, HandoffError};
use quire_io::net::{DetachedTcpStream, TcpListener};
use quire_io::{HANDOFF_QUEUE_MAX, LocalConfig, spawn_executor};

fn config(name: &str) -> LocalConfig {
    LocalConfig {
        io_memory_bytes: 1 << 20,
        name: name.into(),
        ..LocalConfig::default()
    }
}

#[test]
fn a_connection_accepted_on_one_core_is_served_on_another() {
    let (sender, receiver) = handoff::channel::<(DetachedTcpStream, Vec<u8>)>(4);
    let (address_tx, address_rx) = mpsc::channel();
    let acceptor = spawn_executor(&config("acceptor"), move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        address_tx.send(listener.local_addr().unwrap()).unwrap();
        let outbox = sender.connect().await;
        let (mut stream, peer) = listener.accept().await.unwrap();
        // The handshake is read here; what follows it is served there.
        let mut handshake = [0u8; 6];
        stream.read_exact(&mut handshake).await.unwrap();
        let detached = stream.detach().unwrap();
        assert_eq!(detached.peer_addr().unwrap(), peer);
        outbox.try_send((detached, handshake.to_vec())).unwrap();
        peer
    })
    .unwrap();
    let server = spawn_executor(&config("shard-core"), move || async move {
        let inbox = receiver.connect().await;
        let (detached, handshake) = inbox.recv().await.unwrap();
        let mut stream = detached.attach();
        let mut request = [0u8; 7];
        stream.read_exact(&mut request).await.unwrap();
        let thread = std::thread::current().name().unwrap().to_owned();
        let reply = format!(
            "{} {} on {thread}\n",
            String::from_utf8(handshake).unwrap(),
            String::from_utf8(request.to_vec()).unwrap()
        );
        stream.write_all(reply.as_bytes()).await.unwrap();
        let peer = stream.peer_addr().unwrap();
        // The only sender is gone once it has handed off its connection.
        assert!(inbox.recv().await.is_none());
        peer
    })
    .unwrap();

    let address = address_rx.recv().unwrap();
    let mut client = std::net::TcpStream::connect(address).unwrap();
    client.write_all(b"hello!request").unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    // The runtime names an executor's thread after it, with a number.
    assert!(
        reply.starts_with("hello! request on shard-core") && reply.ends_with('\n'),
        "{reply}"
    );
    let local = client.local_addr().unwrap();
    assert_eq!(acceptor.join().unwrap(), local);
    assert_eq!(server.join().unwrap(), local);
}

#[test]
fn a_full_queue_refuses_the_next_item_and_gives_it_back() {
    let (sender, receiver) = handoff::channel::<u32>(3);
    let (filled_tx, filled_rx) = mpsc::channel::<()>();
    let (took_tx, took_rx) = mpsc::channel::<()>();
    let (refilled_tx, refilled_rx) = mpsc::channel::<()>();
    let producer = spawn_executor(&config("producer"), move || async move {
        let outbox = sender.connect().await;
        assert_eq!(outbox.capacity(), 3);
        for item in 1..=3 {
            outbox.try_send(item).unwrap();
        }
        let error = outbox.try_send(4).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the receiving core's hand-off queue is full (3 waiting)"
        );
        assert!(matches!(
            error,
            HandoffError::Full {
                item: 4,
                capacity: 3
            }
        ));
        assert_eq!(error.into_inner(), 4);
        assert_eq!(outbox.queued(), 3);
        filled_tx.send(()).unwrap();
        // One received frees one place, and no more.
        took_rx.recv().unwrap();
        outbox.try_send(4).unwrap();
        assert!(matches!(
            outbox.try_send(5),
            Err(HandoffError::Full { item: 5, .. })
        ));
        refilled_tx.send(()).unwrap();
    })
    .unwrap();
    let consumer = spawn_executor(&config("consumer"), move || async move {
        let inbox = receiver.connect().await;
        filled_rx.recv().unwrap();
        let mut got = vec![inbox.recv().await.unwrap()];
        took_tx.send(()).unwrap();
        refilled_rx.recv().unwrap();
        while let Some(item) = inbox.recv().await {
            got.push(item);
        }
        got
    })
    .unwrap();
    producer.join().unwrap();
    assert_eq!(consumer.join().unwrap(), vec![1, 2, 3, 4]);
}

#[test]
fn a_queue_whose_receiver_is_gone_is_closed() {
    let (sender, receiver) = handoff::channel::<u32>(1);
    drop(receiver);
    let sent = spawn_executor(&config("orphan"), move || async move {
        let outbox = sender.connect().await;
        match outbox.try_send(9) {
            Err(HandoffError::Closed(item)) => item,
            other => panic!("{other:?}"),
        }
    })
    .unwrap();
    assert_eq!(sent.join().unwrap(), 9);
}

#[test]
#[should_panic(expected = "outside 1..=")]
fn a_queue_beyond_the_maximum_cannot_be_made() {
    let _ = handoff::channel::<u32>(HANDOFF_QUEUE_MAX + 1);
}
