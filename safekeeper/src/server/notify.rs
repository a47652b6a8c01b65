//! A per-timeline change signal on one executor: a version number that
//! [`Changes::notify`] bumps and [`Changes::changed`] waits on, so WAL
//! streams and the term driver wake when the flush or commit LSN, the
//! term's compute or the timeline's health moves, instead of polling.
//!
//! It is `!Send` (`Cell`, `RefCell`): waiters and notifiers run on the
//! executor that owns the timeline. Each waiting future holds one entry in
//! the waker list and takes it out when it completes or is dropped, so the
//! list never holds more entries than there are live waiters.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A version number to wait on.
#[derive(Debug, Default)]
pub struct Changes {
    version: Cell<u64>,
    next_waiter: Cell<u64>,
    // Invariant: one entry per pending `Changed` future (keyed by its id).
    waiters: RefCell<Vec<(u64, Waker)>>,
}

impl Changes {
    /// A signal at version 0 with no waiters.
    pub fn new() -> Changes {
        Changes::default()
    }

    /// The current version; pass it to [`changed`](Self::changed) to wait
    /// for the next change after it.
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Moves to the next version and wakes every waiter.
    pub fn notify(&self) {
        self.version.set(self.version.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Completes once the version is no longer `seen` (at once if it has
    /// moved already).
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        let id = self.next_waiter.get();
        self.next_waiter.set(id.wrapping_add(1));
        Changed {
            changes: self,
            seen,
            id,
        }
    }

    /// Waiters registered now (for tests).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }

    fn forget(&self, id: u64) {
        self.waiters
            .borrow_mut()
            .retain(|(waiter, _)| *waiter != id);
    }
}

/// The future of [`Changes::changed`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Changed<'a> {
    changes: &'a Changes,
    seen: u64,
    id: u64,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.changes.version.get() != self.seen {
            self.changes.forget(self.id);
            return Poll::Ready(());
        }
        let mut waiters = self.changes.waiters.borrow_mut();
        match waiters.iter_mut().find(|(waiter, _)| *waiter == self.id) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => waiters.push((self.id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        self.changes.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::Changes;

    #[test]
    fn a_waiter_wakes_on_the_next_change_and_leaves_no_entry() {
        let changes = Changes::new();
        let mut cx = Context::from_waker(Waker::noop());
        let seen = changes.version();
        {
            let mut waiting = pin!(changes.changed(seen));
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Pending);
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Pending);
            assert_eq!(changes.waiting(), 1, "a second poll adds no entry");
            changes.notify();
            assert_eq!(changes.waiting(), 0);
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(()));
        }
        // A change before the wait began is seen at once.
        let mut late = pin!(changes.changed(seen));
        assert_eq!(late.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_dropped_waiter_takes_its_entry_out() {
        let changes = Changes::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            let mut waiting = pin!(changes.changed(changes.version()));
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Pending);
        }
        assert_eq!(changes.waiting(), 0);
    }
}
