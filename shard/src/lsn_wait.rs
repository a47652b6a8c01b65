//! Waiting for a timeline's last record LSN to reach a point:
//! [`Timeline::wait_for_lsn`], woken by [`Timeline::advance`].
//!
//! Waiters are kept in a map ordered by (LSN, id) holding each one's
//! waker; `advance` takes out every waiter at or below the new LSN and
//! wakes it after every borrow is released. A waiter that is dropped before
//! it resolves (a caller's timeout) removes its own entry, so the map holds
//! exactly the live, unresolved waiters. Nothing here is `Send`: the map
//! belongs to the timeline's core.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use quire_postgres::Lsn;

use crate::timeline::Timeline;

/// The unresolved waiters of one timeline.
#[derive(Debug, Default)]
pub(crate) struct LsnWaiters {
    next_id: Cell<u64>,
    /// Invariant: one entry per live [`WaitForLsn`] that has registered and
    /// not resolved, keyed by the LSN it waits for and its id.
    waiting: RefCell<BTreeMap<(Lsn, u64), Waker>>,
}

impl LsnWaiters {
    /// Registers (or refreshes) the waker of waiter `id` for `lsn`;
    /// returns its id.
    fn register(&self, lsn: Lsn, id: Option<u64>, waker: &Waker) -> u64 {
        let id = id.unwrap_or_else(|| {
            let id = self.next_id.get();
            self.next_id.set(id.wrapping_add(1));
            id
        });
        let mut waiting = self.waiting.borrow_mut();
        match waiting.get_mut(&(lsn, id)) {
            Some(known) if known.will_wake(waker) => {}
            Some(known) => known.clone_from(waker),
            None => {
                waiting.insert((lsn, id), waker.clone());
            }
        }
        id
    }

    fn cancel(&self, lsn: Lsn, id: u64) {
        self.waiting.borrow_mut().remove(&(lsn, id));
    }

    /// Wakes (and forgets) every waiter for an LSN at or below `reached`.
    pub(crate) fn wake_reached(&self, reached: Lsn) {
        let woken = {
            let mut waiting = self.waiting.borrow_mut();
            let above = match reached.0.checked_add(1) {
                Some(next) => waiting.split_off(&(Lsn(next), 0)),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut *waiting, above)
        };
        // No borrow is held while wakers run.
        for waker in woken.into_values() {
            waker.wake();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// The future of [`Timeline::wait_for_lsn`]: the last record LSN once it
/// is at or past the LSN waited for. Cancel-safe: dropping it unregisters it.
#[derive(Debug)]
#[must_use = "a future does nothing unless awaited"]
pub struct WaitForLsn<'a> {
    timeline: &'a Timeline,
    lsn: Lsn,
    /// Set while registered in the timeline's waiters.
    id: Option<u64>,
}

impl Future for WaitForLsn<'_> {
    type Output = Lsn;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Lsn> {
        let this = self.get_mut();
        let last = this.timeline.ingested_lsn();
        if last >= this.lsn {
            if let Some(id) = this.id.take() {
                this.timeline.lsn_waiters.cancel(this.lsn, id);
            }
            return Poll::Ready(last);
        }
        this.id = Some(
            this.timeline
                .lsn_waiters
                .register(this.lsn, this.id, cx.waker()),
        );
        Poll::Pending
    }
}

impl Drop for WaitForLsn<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.timeline.lsn_waiters.cancel(self.lsn, id);
        }
    }
}

impl Timeline {
    /// Resolves with the last record LSN as soon as it is at or past `lsn`
    /// (at once if it already is), woken by [`Timeline::advance`]. It holds
    /// no borrow while pending; bound it with a timeout (dropping it
    /// unregisters it).
    ///
    /// `put` moves the last record LSN too, but only `advance` (which
    /// ingest calls once a whole record is stored) wakes waiters.
    pub fn wait_for_lsn(&self, lsn: Lsn) -> WaitForLsn<'_> {
        WaitForLsn {
            timeline: self,
            lsn,
            id: None,
        }
    }

    /// How many [`Timeline::wait_for_lsn`] futures are pending (for
    /// metrics and tests).
    pub fn lsn_waiters(&self) -> usize {
        self.lsn_waiters.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use quire_io::{LocalConfig, run_local, spawn_local, timeout, yield_now};
    use quire_postgres::Lsn;

    use crate::{CoreContext, Timeline};

    /// Runs `test` on a fresh timeline starting at LSN 100.
    fn with_timeline<F, Fut>(test: F)
    where
        F: FnOnce(Rc<Timeline>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline");
        run_local(
            &LocalConfig {
                io_memory_bytes: 1 << 20,
                ..LocalConfig::default()
            },
            move || async move {
                let core = CoreContext::new(1 << 20);
                let timeline = Timeline::create(&path, [1; 16], [2; 16], Lsn(100), core)
                    .await
                    .unwrap();
                test(Rc::new(timeline)).await;
            },
        )
        .unwrap();
    }

    #[test]
    fn resolves_at_once_when_reached() {
        with_timeline(|timeline| async move {
            assert_eq!(timeline.wait_for_lsn(Lsn(50)).await, Lsn(100));
            assert_eq!(timeline.wait_for_lsn(Lsn(100)).await, Lsn(100));
            assert_eq!(timeline.lsn_waiters(), 0);
        });
    }

    #[test]
    fn resolves_when_advanced_later() {
        with_timeline(|timeline| async move {
            let waiter = {
                let timeline = Rc::clone(&timeline);
                spawn_local(async move { timeline.wait_for_lsn(Lsn(200)).await })
            };
            yield_now().await;
            assert_eq!(timeline.lsn_waiters(), 1);
            timeline.advance(Lsn(150));
            yield_now().await;
            assert_eq!(timeline.lsn_waiters(), 1, "150 is below 200");
            timeline.advance(Lsn(208));
            let got = timeout(Duration::from_secs(5), waiter).await.unwrap();
            assert_eq!(got, Lsn(208));
            assert_eq!(timeline.lsn_waiters(), 0);
        });
    }

    #[test]
    fn a_timed_out_waiter_leaves_nothing_behind() {
        with_timeline(|timeline| async move {
            for round in 0..100u64 {
                let waited = timeout(
                    Duration::from_millis(1),
                    timeline.wait_for_lsn(Lsn(1_000 + round)),
                )
                .await;
                assert!(waited.is_err(), "nothing advanced the timeline");
            }
            assert_eq!(timeline.lsn_waiters(), 0);
            // A waiter dropped after a poll but before the timer fires too.
            let mut pending = Box::pin(timeline.wait_for_lsn(Lsn(5_000)));
            assert!(futures::poll!(pending.as_mut()).is_pending());
            assert_eq!(timeline.lsn_waiters(), 1);
            drop(pending);
            assert_eq!(timeline.lsn_waiters(), 0);
            timeline.advance(Lsn(6_000));
        });
    }

    #[test]
    fn each_waiter_wakes_at_its_own_advance() {
        with_timeline(|timeline| async move {
            let woken: Rc<RefCell<Vec<(u64, Lsn)>>> = Rc::default();
            let mut tasks = Vec::new();
            // Several waiters per LSN, registered out of order.
            for i in 0..30u64 {
                let target = 100 + 10 * ((i * 7) % 10 + 1);
                let timeline = Rc::clone(&timeline);
                let woken = Rc::clone(&woken);
                tasks.push(spawn_local(async move {
                    let got = timeline.wait_for_lsn(Lsn(target)).await;
                    woken.borrow_mut().push((target, got));
                }));
            }
            yield_now().await;
            assert_eq!(timeline.lsn_waiters(), 30);
            for step in 1..=10u64 {
                let at = Lsn(100 + 10 * step);
                timeline.advance(at);
                yield_now().await;
                yield_now().await;
                let woken = woken.borrow();
                assert_eq!(woken.len() as u64, 3 * step, "after advancing to {at}");
                assert!(
                    woken.iter().all(|&(target, got)| target <= got.0),
                    "woken early: {woken:?}"
                );
                assert!(woken.iter().filter(|(_, got)| *got == at).count() == 3);
                assert_eq!(timeline.lsn_waiters() as u64, 30 - 3 * step);
            }
            for task in tasks {
                timeout(Duration::from_secs(5), task).await.unwrap();
            }
        });
    }
}
