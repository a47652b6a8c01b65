//! Bounded hand-off between two cores: how a connection accepted on one
//! core reaches the core that owns its shard, once, at handshake.
//!
//! [`channel`] makes a single-producer, single-consumer queue of at most
//! `capacity` items (never more than [`HANDOFF_QUEUE_MAX`]). Its two
//! halves are `Send` and are moved to their cores before use, where each
//! is connected ([`HandoffSender::connect`], [`HandoffReceiver::connect`]):
//! connecting waits until the other half has connected too (or has been
//! dropped). A core that hands connections to N cores holds N senders.
//!
//! [`Outbox::try_send`] never waits and never grows the queue: a full queue
//! (the receiving core is not keeping up) is [`HandoffError::Full`] with the
//! item given back, so the caller can refuse the connection cleanly. Items
//! are any `Send` value: a [`DetachedTcpStream`](crate::net::DetachedTcpStream)
//! with whatever the handshake decided and the bytes read past it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// The most items one hand-off queue may hold.
pub const HANDOFF_QUEUE_MAX: usize = 1024;

/// Makes a hand-off queue of `capacity` items (1 to [`HANDOFF_QUEUE_MAX`]).
pub fn channel<T: Send + 'static>(capacity: usize) -> (HandoffSender<T>, HandoffReceiver<T>) {
    assert!(
        (1..=HANDOFF_QUEUE_MAX).contains(&capacity),
        "hand-off capacity {capacity} outside 1..={HANDOFF_QUEUE_MAX}"
    );
    // The runtime's queue rounds its size up to a power of two; the count
    // keeps the bound exact.
    let (sender, receiver) = glommio::channels::shared_channel::new_bounded(capacity);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        HandoffSender {
            inner: sender,
            queued: Arc::clone(&queued),
            capacity,
        },
        HandoffReceiver {
            inner: receiver,
            queued,
        },
    )
}

/// Why an item was not handed off; the item comes back.
pub enum HandoffError<T> {
    /// The queue holds `capacity` items already.
    Full {
        /// The item.
        item: T,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The receiving half is gone.
    Closed(T),
}

impl<T> HandoffError<T> {
    /// The item that was not handed off.
    pub fn into_inner(self) -> T {
        match self {
            HandoffError::Full { item, .. } | HandoffError::Closed(item) => item,
        }
    }
}

impl<T> fmt::Display for HandoffError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Full { capacity, .. } => write!(
                f,
                "the receiving core's hand-off queue is full ({capacity} waiting)"
            ),
            HandoffError::Closed(_) => f.write_str("the receiving core's hand-off queue is closed"),
        }
    }
}

impl<T> fmt::Debug for HandoffError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Full { capacity, .. } => write!(f, "Full {{ capacity: {capacity} }}"),
            HandoffError::Closed(_) => f.write_str("Closed"),
        }
    }
}

impl<T> std::error::Error for HandoffError<T> {}

/// The sending half, before it is connected on its core.
pub struct HandoffSender<T: Send> {
    inner: SharedSender<T>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T: Send> fmt::Debug for HandoffSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandoffSender(capacity {})", self.capacity)
    }
}

impl<T: Send + 'static> HandoffSender<T> {
    /// Connects it on the current core; waits for the receiver to connect
    /// (or be dropped, after which every send is [`HandoffError::Closed`]).
    pub async fn connect(self) -> Outbox<T> {
        Outbox {
            inner: self.inner.connect().await,
            queued: self.queued,
            capacity: self.capacity,
        }
    }
}

/// The connected sending half (`!Send`: it stays on its core).
pub struct Outbox<T: Send> {
    inner: ConnectedSender<T>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T: Send> fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Outbox({} of {} queued)",
            self.queued.load(Ordering::Relaxed),
            self.capacity
        )
    }
}

impl<T: Send> Outbox<T> {
    /// Queues `item` for the receiving core without waiting.
    pub fn try_send(&self, item: T) -> Result<(), HandoffError<T>> {
        let capacity = self.capacity;
        if self.queued.fetch_add(1, Ordering::AcqRel) >= capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(HandoffError::Full { item, capacity });
        }
        match self.inner.try_send(item) {
            Ok(()) => Ok(()),
            Err(error) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                Err(match error {
                    glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(item)) => {
                        HandoffError::Full { item, capacity }
                    }
                    glommio::GlommioError::Closed(glommio::ResourceType::Channel(item)) => {
                        HandoffError::Closed(item)
                    }
                    other => panic!("a hand-off queue failed unexpectedly: {other}"),
                })
            }
        }
    }

    /// Items queued and not yet received.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The receiving half, before it is connected on its core.
pub struct HandoffReceiver<T: Send> {
    inner: SharedReceiver<T>,
    queued: Arc<AtomicUsize>,
}

impl<T: Send> fmt::Debug for HandoffReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandoffReceiver")
    }
}

impl<T: Send + 'static> HandoffReceiver<T> {
    /// Connects it on the current core; waits for the sender to connect
    /// (or be dropped).
    pub async fn connect(self) -> Inbox<T> {
        Inbox {
            inner: self.inner.connect().await,
            queued: self.queued,
        }
    }
}

/// The connected receiving half (`!Send`: it stays on its core).
pub struct Inbox<T: Send> {
    inner: ConnectedReceiver<T>,
    queued: Arc<AtomicUsize>,
}

impl<T: Send> fmt::Debug for Inbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Inbox")
    }
}

impl<T: Send> Inbox<T> {
    /// The next item, waiting for it; `None` once the sender is gone and
    /// everything it queued has been received.
    pub async fn recv(&self) -> Option<T> {
        let item = self.inner.recv().await;
        if item.is_some() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        item
    }
}
