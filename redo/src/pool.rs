//! The per-core pool of redo processes.
//!
//! One process per tenant (a tenant's records never reach another tenant's
//! process), reused for every rebuild of that tenant on this core, through
//! the tenant's lane ([`crate::batch`]: concurrent requests merge into one
//! round trip). Nothing on the request path starts, stops or waits for a
//! process to end:
//!
//! - spares are started ahead of need by background tasks, each fork on a
//!   thread of its own ([`RedoProcess::start`]); a spare taken by a tenant,
//!   or a start that failed, is made up for in the background;
//! - a request that finds no process ready awaits one, at most the
//!   configured timeout, then fails with [`RedoProcessError::NoProcess`];
//! - a process that died, timed out or replied with an error, and one idle
//!   for longer than the pool's limit ([`RedoPool::maintain`], run by a
//!   background task), is stopped and reaped by a task of its own (stdin
//!   closed, killed after a grace period, timers only).
//!
//! The pool belongs to one core (`RefCell`, `Rc`, not `Send`).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use quire_postgres::types::{BLCKSZ, BlockNo};

use crate::batch::{Lane, PageResult, page_from_reply, run_lane};
use crate::process::{RedoConfig, RedoProcess, RedoProcessError};
use crate::protocol::{self, PageRequest, Reply};

/// Which tenant a rebuild is for.
pub type TenantKey = u128;

/// How long after a failed start the pool waits before starting spares
/// again (a tenant that needs a process tries at once).
const START_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The most often the background task looks for idle processes, and the
/// least often.
const MAINTAIN_PERIOD_MIN: Duration = Duration::from_millis(10);
const MAINTAIN_PERIOD_MAX: Duration = Duration::from_secs(1);

/// What the pool has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedoStats {
    /// Records replayed by Postgres processes.
    pub postgres_records: u64,
    /// Records applied in Rust.
    pub rust_records: u64,
    /// Pages rebuilt by a process.
    pub process_pages: u64,
    /// Round trips to processes (batches and raw exchanges; a start's
    /// first ping is not counted).
    pub round_trips: u64,
    /// Processes started (all in the background, spares included).
    pub spawned: u64,
    /// Starts that failed.
    pub start_failures: u64,
    /// Processes given to a tenant (its first, or one after a failure or an
    /// idle stop).
    pub assigned: u64,
    /// Times a tenant needed a process and none was ready: the request
    /// waited for a start. Zero on a warm pool.
    pub waited: u64,
    /// Processes that died, timed out or replied with an error.
    pub failed: u64,
}

struct PoolState {
    lanes: HashMap<TenantKey, Rc<Lane>>,
    /// Started processes no tenant has yet.
    spares: Vec<RedoProcess>,
    /// Starts in progress.
    starting: usize,
    /// Stops in progress.
    stopping: usize,
    /// Tenants' runners waiting for a process, oldest first.
    waiters: VecDeque<oneshot::Sender<Result<RedoProcess, RedoProcessError>>>,
    last_start_error: Option<RedoProcessError>,
    /// When a start last failed: spares are not tried again for
    /// [`START_RETRY_DELAY`] after it.
    last_start_failure: Option<Instant>,
    free_slots: Vec<usize>,
    next_slot: usize,
    shut_down: bool,
}

impl PoolState {
    fn take_slot(&mut self) -> usize {
        self.free_slots.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }
}

/// A core's redo processes.
pub struct RedoPool {
    config: RedoConfig,
    spares_wanted: usize,
    idle_after: Duration,
    me: Weak<RedoPool>,
    state: RefCell<PoolState>,
    stats: Cell<RedoStats>,
}

impl RedoPool {
    /// A pool that keeps `spares` processes started ahead of need and stops
    /// a tenant's process after `idle_after` without work. The first spares
    /// are started here (a wrong configuration is an error now, not a
    /// failed request later). Must run on the executor that will use it.
    pub async fn new(
        config: RedoConfig,
        spares: usize,
        idle_after: Duration,
    ) -> Result<Rc<RedoPool>, RedoProcessError> {
        let pool = Rc::new_cyclic(|me| RedoPool {
            config,
            spares_wanted: spares,
            idle_after,
            me: me.clone(),
            state: RefCell::new(PoolState {
                lanes: HashMap::new(),
                spares: Vec::new(),
                starting: 0,
                stopping: 0,
                waiters: VecDeque::new(),
                last_start_error: None,
                last_start_failure: None,
                free_slots: Vec::new(),
                next_slot: 0,
                shut_down: false,
            }),
            stats: Cell::new(RedoStats::default()),
        });
        let starts = (0..spares).map(|_| {
            let slot = pool.state.borrow_mut().take_slot();
            RedoProcess::start(&pool.config, slot)
        });
        let mut first_error = None;
        for started in futures::future::join_all(starts).await {
            match started {
                Ok(process) => {
                    pool.count(|s| s.spawned += 1);
                    pool.state.borrow_mut().spares.push(process);
                }
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        if let Some(error) = first_error {
            pool.shutdown().await;
            return Err(error);
        }
        let period = (idle_after / 4).clamp(MAINTAIN_PERIOD_MIN, MAINTAIN_PERIOD_MAX);
        quire_io::spawn_local(maintenance(Rc::downgrade(&pool), period)).detach();
        Ok(pool)
    }

    /// The counters.
    pub fn stats(&self) -> RedoStats {
        self.stats.get()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut RedoStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// How many processes are running (tenants' and spares).
    pub fn running(&self) -> usize {
        let state = self.state.borrow();
        state.lanes.values().filter(|l| l.has_process()).count() + state.spares.len()
    }

    /// How many spares are started and waiting for a tenant.
    pub fn ready_spares(&self) -> usize {
        self.state.borrow().spares.len()
    }

    /// Waits (at most `limit`) until the wanted number of spares is ready;
    /// whether it is.
    pub async fn wait_for_spares(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.ready_spares() >= self.spares_wanted {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            quire_io::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The pid of the tenant's process, if it has one (tests kill it).
    pub fn tenant_pid(&self, tenant: TenantKey) -> Option<u32> {
        self.state.borrow().lanes.get(&tenant).and_then(|l| l.pid())
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.state.borrow().shut_down
    }

    /// Stops tenants' processes idle for longer than the pool's limit,
    /// stops spares that died, forgets quiet lanes without a process, and
    /// starts spares up to the wanted number, all in background tasks. A
    /// background task calls it periodically; it never waits.
    pub fn maintain(&self) {
        let idle_since = Instant::now().checked_sub(self.idle_after);
        let mut retired = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            if let Some(idle_since) = idle_since {
                for lane in state.lanes.values() {
                    retired.extend(lane.take_idle_process(idle_since));
                }
            }
            state
                .lanes
                .retain(|_, lane| lane.has_process() || !lane.is_quiet());
            let spares = std::mem::take(&mut state.spares);
            for mut spare in spares {
                if spare.has_exited() {
                    self.count(|s| s.failed += 1);
                    retired.push(spare);
                } else {
                    state.spares.push(spare);
                }
            }
        }
        for process in retired {
            self.retire(process);
        }
        self.replenish();
    }

    /// Stops every process the pool holds and waits until they have ended
    /// (and starts in progress, whose processes are stopped too). Requests
    /// after it fail with [`RedoProcessError::NoProcess`]; call it when no
    /// request is in flight.
    pub async fn shutdown(&self) {
        let processes: Vec<RedoProcess> = {
            let mut state = self.state.borrow_mut();
            state.shut_down = true;
            // Dropped senders tell their waiters the pool is gone.
            state.waiters.clear();
            let mut processes = std::mem::take(&mut state.spares);
            processes.extend(state.lanes.values().filter_map(|l| l.take_process_any()));
            processes
        };
        for process in processes {
            self.retire(process);
        }
        loop {
            {
                let state = self.state.borrow();
                if state.stopping == 0 && state.starting == 0 {
                    return;
                }
            }
            quire_io::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A process for a tenant: a ready spare, or else the next one started
    /// (awaited at most the configured timeout).
    pub(crate) async fn acquire(&self) -> Result<RedoProcess, RedoProcessError> {
        let receiver = {
            let mut state = self.state.borrow_mut();
            if state.shut_down {
                return Err(RedoProcessError::NoProcess("the pool is shut down".into()));
            }
            while let Some(mut spare) = state.spares.pop() {
                if spare.has_exited() {
                    self.count(|s| s.failed += 1);
                    drop(state);
                    self.retire(spare);
                    state = self.state.borrow_mut();
                    continue;
                }
                drop(state);
                self.replenish();
                return Ok(spare);
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            receiver
        };
        self.count(|s| s.waited += 1);
        self.replenish();
        let limit = self.config.timeout;
        match quire_io::timeout(limit, receiver).await {
            Ok(Ok(started)) => started,
            Ok(Err(oneshot::Canceled)) => {
                Err(RedoProcessError::NoProcess("the pool is shut down".into()))
            }
            Err(_) => {
                let last = self.state.borrow().last_start_error.clone();
                Err(RedoProcessError::NoProcess(match last {
                    Some(error) => format!("none was ready within {limit:?} (last start: {error})"),
                    None => format!("none was ready within {limit:?}"),
                }))
            }
        }
    }

    /// Starts processes in the background until spares and starts in
    /// progress cover the wanted spares and the waiting tenants.
    fn replenish(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let slots: Vec<usize> = {
            let mut state = self.state.borrow_mut();
            if state.shut_down {
                return;
            }
            state.waiters.retain(|w| !w.is_canceled());
            // A broken installation must not make the pool spin: after a
            // failed start, spares wait; a tenant waiting for a process
            // tries at once.
            let spares_wanted = match state.last_start_failure {
                Some(at) if at.elapsed() < START_RETRY_DELAY => 0,
                _ => self.spares_wanted,
            };
            let wanted = spares_wanted + state.waiters.len();
            let missing = wanted.saturating_sub(state.spares.len() + state.starting);
            state.starting += missing;
            (0..missing).map(|_| state.take_slot()).collect()
        };
        // Spawned with the state released: the runtime may start the task
        // inside the call.
        for slot in slots {
            let task = start_in_background(Rc::downgrade(&me), self.config.clone(), slot);
            quire_io::spawn_local(task).detach();
        }
    }

    /// A started process: to the oldest waiting tenant, or among the spares.
    fn offer(&self, mut process: RedoProcess) {
        if self.is_shut_down() {
            self.retire(process);
            return;
        }
        let mut state = self.state.borrow_mut();
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(Ok(process)) {
                // That tenant stopped waiting.
                Err(Ok(back)) => process = back,
                Ok(()) | Err(Err(_)) => return,
            }
        }
        state.spares.push(process);
    }

    /// Stops `process` in a task of its own; its slot is free once it has
    /// ended.
    pub(crate) fn retire(&self, process: RedoProcess) {
        let slot = process.slot();
        self.state.borrow_mut().stopping += 1;
        let pool = self.me.clone();
        quire_io::spawn_local(async move {
            process.stop().await;
            if let Some(pool) = pool.upgrade() {
                let mut state = pool.state.borrow_mut();
                state.stopping -= 1;
                state.free_slots.push(slot);
            }
        })
        .detach();
    }

    fn lane(&self, tenant: TenantKey) -> Rc<Lane> {
        Rc::clone(
            self.state
                .borrow_mut()
                .lanes
                .entry(tenant)
                .or_insert_with(|| Rc::new(Lane::new())),
        )
    }

    /// Makes sure a runner drains `lane`.
    fn run(&self, lane: &Rc<Lane>) {
        if let Some(me) = self.me.upgrade()
            && lane.claim_runner()
        {
            quire_io::spawn_local(run_lane(me, Rc::clone(lane))).detach();
        }
    }

    /// Rebuilds pages with Postgres' redo; one result per page, in order.
    /// The pages join the tenant's next batch, with whatever other requests
    /// of the tenant are waiting ([`crate::batch::BATCH_PAGES_MAX`] pages a
    /// round trip).
    pub async fn rebuild_pages(
        &self,
        tenant: TenantKey,
        pages: &[PageRequest<'_>],
    ) -> Vec<PageResult> {
        let lane = self.lane(tenant);
        let queued: Vec<_> = pages.iter().map(|page| lane.push_page(page)).collect();
        self.run(&lane);
        let mut results = Vec::with_capacity(queued.len());
        for receiver in queued {
            results.push(match receiver {
                Ok(receiver) => receiver.await.unwrap_or_else(|_| Err(dropped())),
                Err(full) => Err(full),
            });
        }
        results
    }

    /// Sends raw bytes to the tenant's process (alone, not merged with
    /// pages) and returns `expected` replies.
    async fn exchange(
        &self,
        tenant: TenantKey,
        request: Vec<u8>,
        expected: usize,
    ) -> Result<Vec<Reply>, RedoProcessError> {
        let lane = self.lane(tenant);
        let receiver = lane.push_raw(request, expected)?;
        self.run(&lane);
        receiver.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// The page after resource manager `rmid`'s own masking
    /// (`wal_consistency_checking`'s rules).
    pub async fn mask(
        &self,
        tenant: TenantKey,
        rmid: u8,
        block: BlockNo,
        page: &[u8; BLCKSZ],
    ) -> PageResult {
        let mut request = Vec::with_capacity(BLCKSZ + 16);
        protocol::mask(&mut request, rmid, block, page);
        let mut replies = self.exchange(tenant, request, 1).await?;
        match replies.pop() {
            Some(reply) => page_from_reply(reply),
            None => Err(RedoProcessError::Protocol("no reply".into())),
        }
    }

    /// [`RedoPool::mask`] for many pages in one round trip.
    pub async fn mask_many(
        &self,
        tenant: TenantKey,
        pages: &[(u8, BlockNo, &[u8; BLCKSZ])],
    ) -> Result<Vec<Box<[u8; BLCKSZ]>>, RedoProcessError> {
        let mut request = Vec::with_capacity(pages.len() * (BLCKSZ + 16));
        for (rmid, block, page) in pages {
            protocol::mask(&mut request, *rmid, *block, page);
        }
        let replies = self.exchange(tenant, request, pages.len()).await?;
        replies.into_iter().map(page_from_reply).collect()
    }

    /// One empty round trip.
    pub async fn ping(&self, tenant: TenantKey) -> Result<(), RedoProcessError> {
        let mut request = Vec::new();
        protocol::ping(&mut request);
        self.exchange(tenant, request, 1).await.map(drop)
    }

    /// Sends raw bytes (tests: malformed requests) and returns the replies.
    pub async fn exchange_raw(
        &self,
        tenant: TenantKey,
        request: &[u8],
        expected: usize,
    ) -> Result<Vec<Reply>, RedoProcessError> {
        self.exchange(tenant, request.to_vec(), expected).await
    }
}

fn dropped() -> RedoProcessError {
    RedoProcessError::NoProcess("the pool dropped the request".into())
}

/// Starts one process for the pool; offers it, or records the failure
/// (answering the oldest waiting tenant with it).
async fn start_in_background(pool: Weak<RedoPool>, config: RedoConfig, slot: usize) {
    let started = RedoProcess::start(&config, slot).await;
    let Some(pool) = pool.upgrade() else {
        if let Ok(process) = started {
            process.stop().await;
        }
        return;
    };
    pool.state.borrow_mut().starting -= 1;
    match started {
        Ok(process) => {
            pool.count(|s| s.spawned += 1);
            pool.offer(process);
        }
        Err(error) => {
            pool.count(|s| s.start_failures += 1);
            let waiter = {
                let mut state = pool.state.borrow_mut();
                state.free_slots.push(slot);
                state.last_start_error = Some(error.clone());
                state.last_start_failure = Some(Instant::now());
                state.waiters.pop_front()
            };
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(error));
            }
        }
    }
}

/// Runs [`RedoPool::maintain`] every `period` while the pool exists.
async fn maintenance(pool: Weak<RedoPool>, period: Duration) {
    loop {
        quire_io::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_shut_down() {
            return;
        }
        pool.maintain();
    }
}
