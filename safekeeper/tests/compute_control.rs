//! The compute control against safekeepers that answer with values at the
//! edge of what the protocol can say: a typed error, never a panic.
//!
//! The safekeeper here is a plain thread on a loopback port that answers
//! every frame with one fixed reply.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

use quire_postgres::Lsn;
use quire_safekeeper::compute_control::{ControlError, elect};
use quire_safekeeper::history::TermHistory;
use quire_safekeeper::wire::{Message, StorageHealth, TimelineKey};

const KEY: TimelineKey = TimelineKey {
    tenant: [1; 16],
    timeline: [2; 16],
};

/// Serves `connections` connections on loopback, answering each whole
/// frame with `reply`; returns the address.
fn fake_safekeeper(reply: Message, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Ok(Some((_, used))) = Message::decode(&buf) {
                    buf.drain(..used);
                    if stream.write_all(&reply.encode()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    address
}

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    quire_io::run_local(&quire_io::LocalConfig::default(), f).expect("the test task");
}

/// A safekeeper in the last term there is: the election cannot bump it.
#[test]
fn a_safekeeper_in_the_last_term_is_an_error() {
    let status = Message::Status {
        term: u64::MAX,
        flush: Lsn(0x100_0028),
        commit: Lsn(0x100_0028),
        history: TermHistory::default(),
        health: StorageHealth::default(),
    };
    let address = fake_safekeeper(status, 4);
    on_executor(move || async move {
        let outcome = elect(&[address], None, KEY, "127.0.0.1:1", 16 << 20).await;
        assert!(
            matches!(outcome, Err(ControlError::NoTermLeft(u64::MAX))),
            "{outcome:?}"
        );
    });
}

#[test]
fn an_invalid_segment_size_is_an_error() {
    on_executor(|| async {
        for size in [0, 3 << 20] {
            let outcome = elect(&[], None, KEY, "127.0.0.1:1", size).await;
            assert!(
                matches!(outcome, Err(ControlError::InvalidSegmentSize(s)) if s == size),
                "{outcome:?}"
            );
        }
    });
}
