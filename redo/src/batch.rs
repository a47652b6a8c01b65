//! A tenant's lane: its queue of redo work, its process, and the batches
//! that carry the work to it.
//!
//! Every request for a tenant on this core becomes jobs in its lane: one
//! per page to rebuild (with a oneshot channel for that page's result), or
//! one raw exchange (mask, ping, a test's bytes). One task at a time, the
//! lane's runner, drains the queue (at most [`LANE_QUEUE_MAX`] jobs): it
//! takes the pages at the front, up to
//! [`BATCH_PAGES_MAX`], as one batch (one round trip), so the `GetPage`s of a
//! tenant that arrive while a batch is in progress merge into the next one.
//! Results go back to each requester in order; a page whose batch failed
//! because the process died is queued again once (at the front), on a fresh
//! process; a record the process rejects fails that page alone.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use futures::channel::oneshot;
use quire_postgres::types::BLCKSZ;

use crate::pool::RedoPool;
use crate::process::{RedoProcess, RedoProcessError};
use crate::protocol::{self, Reply};

/// The most pages one batch (one round trip) carries. 64 pages' images and
/// replies (512 KiB each way) fit the 1 MiB pipes, so a batch crosses in
/// one write and a few reads when the process keeps up.
pub const BATCH_PAGES_MAX: usize = 64;

/// The most jobs a tenant's lane holds (pages waiting for a round trip,
/// and raw exchanges): about 256 MiB of page images. Requests past it fail
/// at once with [`RedoProcessError::QueueFull`].
pub const LANE_QUEUE_MAX: usize = 32 * 1024;

/// Pages per `R` message of a batch: the process starts on the first while
/// the rest are still being written, and its replies flow back while it
/// works on the next.
const PAGES_PER_MESSAGE: usize = 8;

/// A page's result.
pub type PageResult = Result<Box<[u8; BLCKSZ]>, RedoProcessError>;

/// One page to rebuild, encoded as it travels in an `R` message.
pub(crate) struct PageJob {
    body: Vec<u8>,
    records: u64,
    /// Whether it has already been sent again after its process died.
    retried: bool,
    reply: oneshot::Sender<PageResult>,
}

/// A raw exchange: sent alone, its replies returned as they are.
pub(crate) struct RawJob {
    request: Vec<u8>,
    expected: usize,
    reply: oneshot::Sender<Result<Vec<Reply>, RedoProcessError>>,
}

enum Job {
    Page(PageJob),
    Raw(RawJob),
}

/// What the runner sends in one round trip.
enum Batch {
    Pages(Vec<PageJob>),
    Raw(RawJob),
}

/// A tenant's queue and process on this core.
pub(crate) struct Lane {
    queue: RefCell<VecDeque<Job>>,
    /// Invariant: true while a runner task drains the queue (at most one).
    running: Cell<bool>,
    /// The tenant's process between batches (the runner holds it during
    /// one).
    process: RefCell<Option<RedoProcess>>,
    /// The pid of the tenant's process, idle or busy.
    pid: Cell<Option<u32>>,
    last_used: Cell<Instant>,
}

impl Lane {
    pub(crate) fn new() -> Lane {
        Lane {
            queue: RefCell::new(VecDeque::new()),
            running: Cell::new(false),
            process: RefCell::new(None),
            pid: Cell::new(None),
            last_used: Cell::new(Instant::now()),
        }
    }

    /// Queues one page; its result comes on the receiver.
    pub(crate) fn push_page(
        &self,
        page: &protocol::PageRequest<'_>,
    ) -> Result<oneshot::Receiver<PageResult>, RedoProcessError> {
        let mut queue = self.queue.borrow_mut();
        make_room(&mut queue)?;
        let mut body = Vec::with_capacity(protocol::rebuild_page_len(page));
        protocol::rebuild_page(&mut body, page);
        let (reply, receiver) = oneshot::channel();
        queue.push_back(Job::Page(PageJob {
            body,
            records: page.records.len() as u64,
            retried: false,
            reply,
        }));
        Ok(receiver)
    }

    /// Queues a raw exchange.
    pub(crate) fn push_raw(
        &self,
        request: Vec<u8>,
        expected: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<Reply>, RedoProcessError>>, RedoProcessError> {
        let mut queue = self.queue.borrow_mut();
        make_room(&mut queue)?;
        let (reply, receiver) = oneshot::channel();
        queue.push_back(Job::Raw(RawJob {
            request,
            expected,
            reply,
        }));
        Ok(receiver)
    }

    /// Marks the lane as drained by a runner; false if one already is.
    pub(crate) fn claim_runner(&self) -> bool {
        !self.running.replace(true)
    }

    /// Whether the lane has neither work nor a runner.
    pub(crate) fn is_quiet(&self) -> bool {
        !self.running.get() && self.queue.borrow().is_empty()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid.get()
    }

    pub(crate) fn has_process(&self) -> bool {
        self.pid.get().is_some()
    }

    /// The idle process, if the lane is quiet and it has been idle since
    /// before `idle_since`.
    pub(crate) fn take_idle_process(&self, idle_since: Instant) -> Option<RedoProcess> {
        if !self.is_quiet() || self.last_used.get() > idle_since {
            return None;
        }
        self.take_process_any()
    }

    /// The idle process, whatever its idle time.
    pub(crate) fn take_process_any(&self) -> Option<RedoProcess> {
        let process = self.process.borrow_mut().take();
        if process.is_some() {
            self.pid.set(None);
        }
        process
    }

    /// The pages at the front, up to [`BATCH_PAGES_MAX`], or the raw
    /// exchange at the front; jobs whose requester stopped waiting are
    /// dropped.
    fn next_batch(&self) -> Option<Batch> {
        let mut queue = self.queue.borrow_mut();
        let mut pages = Vec::new();
        while pages.len() < BATCH_PAGES_MAX {
            match queue.front() {
                Some(Job::Page(_)) => {
                    if let Some(Job::Page(page)) = queue.pop_front()
                        && !page.reply.is_canceled()
                    {
                        pages.push(page);
                    }
                }
                Some(Job::Raw(_)) if pages.is_empty() => {
                    if let Some(Job::Raw(raw)) = queue.pop_front()
                        && !raw.reply.is_canceled()
                    {
                        return Some(Batch::Raw(raw));
                    }
                }
                Some(Job::Raw(_)) | None => break,
            }
        }
        (!pages.is_empty()).then_some(Batch::Pages(pages))
    }

    /// Puts pages back at the front, in their order.
    fn requeue(&self, pages: Vec<PageJob>) {
        let mut queue = self.queue.borrow_mut();
        for page in pages.into_iter().rev() {
            queue.push_front(Job::Page(page));
        }
    }

    /// Fails everything queued (no process could be had).
    fn fail_all(&self, error: &RedoProcessError) {
        let jobs: Vec<Job> = self.queue.borrow_mut().drain(..).collect();
        for job in jobs {
            match job {
                Job::Page(page) => {
                    let _ = page.reply.send(Err(error.clone()));
                }
                Job::Raw(raw) => {
                    let _ = raw.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

impl Job {
    fn is_abandoned(&self) -> bool {
        match self {
            Job::Page(page) => page.reply.is_canceled(),
            Job::Raw(raw) => raw.reply.is_canceled(),
        }
    }
}

/// Room for one more job: a full queue first forgets the jobs whose
/// requester stopped waiting.
fn make_room(queue: &mut VecDeque<Job>) -> Result<(), RedoProcessError> {
    if queue.len() >= LANE_QUEUE_MAX {
        queue.retain(|job| !job.is_abandoned());
    }
    if queue.len() >= LANE_QUEUE_MAX {
        return Err(RedoProcessError::QueueFull(LANE_QUEUE_MAX));
    }
    Ok(())
}

impl Batch {
    fn fail(self, error: &RedoProcessError) {
        match self {
            Batch::Pages(pages) => {
                for page in pages {
                    let _ = page.reply.send(Err(error.clone()));
                }
            }
            Batch::Raw(raw) => {
                let _ = raw.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Drains `lane`'s queue, one batch per round trip, until it is empty. The
/// lane's process is taken for each batch and given back after it (or
/// retired, if it died, and a fresh one acquired for the next batch).
pub(crate) async fn run_lane(pool: Rc<RedoPool>, lane: Rc<Lane>) {
    // The runtime starts this task inside the first requester's call: the
    // other requesters already ready to run get to queue their pages first
    // and share the first round trip.
    quire_io::yield_now().await;
    while let Some(batch) = lane.next_batch() {
        // The idle process may have died since its last batch (killed
        // while idle): found out now, it costs no retry.
        let idle = lane.take_process_any().and_then(|mut process| {
            if process.has_exited() {
                pool.count(|s| s.failed += 1);
                pool.retire(process);
                None
            } else {
                Some(process)
            }
        });
        let process = match idle {
            Some(process) => process,
            None => match pool.acquire().await {
                Ok(process) => {
                    pool.count(|s| s.assigned += 1);
                    process
                }
                Err(error) => {
                    batch.fail(&error);
                    lane.fail_all(&error);
                    continue;
                }
            },
        };
        let mut process = process;
        lane.pid.set(Some(process.pid()));
        pool.count(|s| s.round_trips += 1);
        match batch {
            Batch::Pages(pages) => {
                let again = run_pages(&pool, &mut process, pages).await;
                lane.requeue(again);
            }
            Batch::Raw(raw) => {
                let result = process
                    .exchange(&[&raw.request], raw.expected)
                    .await
                    .map_err(|(_, e)| e);
                let _ = raw.reply.send(result);
            }
        }
        lane.last_used.set(Instant::now());
        if process.is_alive() && !pool.is_shut_down() {
            *lane.process.borrow_mut() = Some(process);
        } else {
            lane.pid.set(None);
            if !process.is_alive() {
                pool.count(|s| s.failed += 1);
            }
            pool.retire(process);
        }
    }
    lane.running.set(false);
}

/// Sends `pages` in one round trip and hands each its result; returns the
/// pages to send again (after their process died, or behind a page that
/// failed).
async fn run_pages(
    pool: &RedoPool,
    process: &mut RedoProcess,
    pages: Vec<PageJob>,
) -> Vec<PageJob> {
    let headers: Vec<[u8; protocol::REBUILD_HEADER_LEN]> = pages
        .chunks(PAGES_PER_MESSAGE)
        .map(|group| {
            protocol::rebuild_header(group.len(), group.iter().map(|p| p.body.len()).sum())
        })
        .collect();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(pages.len() + headers.len());
    for (header, group) in headers.iter().zip(pages.chunks(PAGES_PER_MESSAGE)) {
        parts.push(header);
        parts.extend(group.iter().map(|p| &p.body[..]));
    }
    let (replies, failure) = match process.exchange(&parts, pages.len()).await {
        Ok(replies) => (replies, None),
        Err((replies, error)) => (replies, Some(error)),
    };
    drop(parts);
    let mut pages = pages.into_iter();
    for reply in replies {
        let Some(page) = pages.next() else { break };
        pool.count(|s| {
            s.process_pages += 1;
            s.postgres_records += page.records;
        });
        let _ = page.reply.send(page_from_reply(reply));
    }
    let mut rest: Vec<PageJob> = pages.collect();
    match failure {
        None => {
            let missing = RedoProcessError::Protocol("fewer replies than pages".into());
            for page in rest {
                let _ = page.reply.send(Err(missing.clone()));
            }
            Vec::new()
        }
        // The process died (or hung): the pages it did not answer go once
        // more, to a fresh process.
        Some(error) if error.is_retryable() && rest.first().is_some_and(|p| !p.retried) => {
            for page in &mut rest {
                page.retried = true;
            }
            rest
        }
        // The page it was on fails; the ones after it go again.
        Some(error) => {
            if !rest.is_empty() {
                let head = rest.remove(0);
                let _ = head.reply.send(Err(error));
            }
            for page in &mut rest {
                page.retried = false;
            }
            rest
        }
    }
}

/// A page from its reply.
pub(crate) fn page_from_reply(reply: Reply) -> PageResult {
    match reply {
        Reply::Ok(body) => Box::<[u8; BLCKSZ]>::try_from(body.into_boxed_slice())
            .map_err(|b| RedoProcessError::Protocol(format!("a page reply of {} bytes", b.len()))),
        Reply::Error(message) => Err(RedoProcessError::Replied(message)),
    }
}
