//! What a safekeeper server bounds, with its defaults
//! (docs/safekeeper-protocol.md, "The server", lists them): connections at
//! once, the time a connection may take for its first frame, for a frame
//! once begun, between requests and to take a frame it is sent, and the
//! timelines it keeps.
//! Also the slot a connection holds while it is open, and the refusal a
//! connection past the limit gets.
//!
//! It does no I/O of its own beyond the refusal's one bounded write.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use quire_io::net::TcpStream;

use crate::server::conn::Deadlines;
use crate::wire::Message;

/// Connections served at once by default (`--max-connections`). Each
/// timeline holds one gossip connection from every other member, so the
/// limit must exceed `(members - 1) x timelines` plus clients.
pub const MAX_CONNECTIONS_DEFAULT: usize = 512;
/// Timelines one safekeeper keeps by default (`--max-timelines`): each has
/// its own gossip and term tasks, files and WAL segments.
pub const MAX_TIMELINES_DEFAULT: usize = 128;
/// Default time from accept to a whole first frame (`--handshake-timeout-ms`).
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default time from a frame's first byte to its last (`--frame-timeout-ms`).
pub const FRAME_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default wait for the next request (`--idle-timeout-ms`); WAL streams
/// are exempt (they only send).
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Default time to send one frame whole (`--write-timeout-ms`): a peer
/// that stops reading, or reads a trickle, is dropped.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long the refusal of a connection past the limit may take to send.
pub const REFUSAL_TIMEOUT: Duration = Duration::from_millis(100);
/// The pause after a failed `accept` (out of descriptors, say) before the
/// next one.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A safekeeper's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are refused with an `Error` frame.
    pub max_connections: usize,
    /// Timelines kept; more `CreateTimeline`s are refused.
    pub max_timelines: usize,
    /// The time limits of each accepted connection.
    pub deadlines: Deadlines,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_timelines: MAX_TIMELINES_DEFAULT,
            deadlines: Deadlines {
                handshake: HANDSHAKE_TIMEOUT_DEFAULT,
                frame: FRAME_TIMEOUT_DEFAULT,
                idle: IDLE_TIMEOUT_DEFAULT,
                write: WRITE_TIMEOUT_DEFAULT,
            },
        }
    }
}

/// Counts open connections against a limit.
#[derive(Debug)]
pub struct Slots {
    open: Rc<Cell<usize>>,
    max: usize,
}

/// One open connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    open: Rc<Cell<usize>>,
}

impl Slots {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Slots {
        Slots {
            open: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// A place, if one is free.
    pub fn take(&self) -> Option<Slot> {
        let open = self.open.get();
        if open >= self.max {
            return None;
        }
        self.open.set(open + 1);
        Some(Slot {
            open: Rc::clone(&self.open),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.get()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.set(self.open.get().saturating_sub(1));
    }
}

/// What a connection past the limit is told.
pub fn refusal(max: usize) -> Message {
    Message::Error {
        message: format!("too many connections ({max})"),
    }
}

/// Tells a connection past the limit why, then closes it; never waits
/// longer than [`REFUSAL_TIMEOUT`] (the accept loop runs it inline).
pub async fn refuse(mut stream: TcpStream, max: usize) {
    let frame = refusal(max).encode();
    let _ = quire_io::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(&frame).await?;
        stream.shutdown(std::net::Shutdown::Write).await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_count_open_connections_and_free_on_drop() {
        let slots = Slots::new(2);
        let a = slots.take().expect("first");
        let b = slots.take().expect("second");
        assert!(slots.take().is_none(), "a third past the limit of 2");
        drop(a);
        assert_eq!(slots.open(), 1);
        let c = slots.take().expect("a freed place");
        assert_eq!(slots.open(), 2);
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }
}
