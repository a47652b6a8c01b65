//! The per-core pool of redo processes, and redo of a key's chain.
//!
//! One process per tenant (a tenant's records never reach another tenant's
//! process), taken from pre-spawned spares, reused for every rebuild of that
//! tenant on this core, replaced after a crash, an error reply or a
//! timeout, and stopped when idle ([`RedoPool::maintain`]). A rebuild whose
//! process died or timed out is retried once on a fresh process; a record
//! the process rejects fails that page alone.
//!
//! A key's chain is split by who applies each record: runs of Postgres WAL
//! records go to the process (many pages per round trip), Rust records
//! ([`crate::rust_redo`]) are applied here. The pool counts both.
//!
//! The pool belongs to one core (`RefCell`, not `Sync`). Exchanges are
//! synchronous: a rebuild occupies its core for the round trip.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use quire_postgres::key::KeyKind;
use quire_postgres::types::{BLCKSZ, BlockNo, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{ReconstructInputs, Redo, RedoError, Value};

use crate::process::{RedoConfig, RedoProcess, RedoProcessError};
use crate::protocol::{self, PageRequest, Reply};
use crate::record::RedoRecord;
use crate::rust_redo;

/// Which tenant a rebuild is for.
pub type TenantKey = u128;

/// What the pool has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedoStats {
    /// Records replayed by Postgres processes.
    pub postgres_records: u64,
    /// Records applied in Rust.
    pub rust_records: u64,
    /// Pages rebuilt by a process.
    pub process_pages: u64,
    /// Round trips to processes.
    pub round_trips: u64,
    /// Processes started.
    pub spawned: u64,
    /// Processes that died, timed out or replied with an error.
    pub failed: u64,
}

struct Assigned {
    process: RedoProcess,
    last_used: Instant,
}

struct PoolState {
    by_tenant: HashMap<TenantKey, Assigned>,
    spares: Vec<RedoProcess>,
    free_slots: Vec<usize>,
    next_slot: usize,
}

/// Pages per `R` message of a batch (see `rebuild_pages`).
const PAGES_PER_MESSAGE: usize = 8;

/// A core's redo processes.
pub struct RedoPool {
    config: RedoConfig,
    spares_wanted: usize,
    idle_after: Duration,
    state: RefCell<PoolState>,
    stats: Cell<RedoStats>,
}

impl RedoPool {
    /// A pool that keeps `spares` processes started ahead of need and stops
    /// a tenant's process after `idle_after` without work.
    pub fn new(
        config: RedoConfig,
        spares: usize,
        idle_after: Duration,
    ) -> Result<Rc<RedoPool>, RedoProcessError> {
        let pool = Rc::new(RedoPool {
            config,
            spares_wanted: spares,
            idle_after,
            state: RefCell::new(PoolState {
                by_tenant: HashMap::new(),
                spares: Vec::new(),
                free_slots: Vec::new(),
                next_slot: 0,
            }),
            stats: Cell::new(RedoStats::default()),
        });
        pool.refill_spares()?;
        Ok(pool)
    }

    /// The counters.
    pub fn stats(&self) -> RedoStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut RedoStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    fn spawn(&self) -> Result<RedoProcess, RedoProcessError> {
        let slot = {
            let mut state = self.state.borrow_mut();
            state.free_slots.pop().unwrap_or_else(|| {
                state.next_slot += 1;
                state.next_slot - 1
            })
        };
        let process = RedoProcess::spawn(&self.config, slot).inspect_err(|_| {
            self.state.borrow_mut().free_slots.push(slot);
        })?;
        self.count(|s| s.spawned += 1);
        Ok(process)
    }

    fn refill_spares(&self) -> Result<(), RedoProcessError> {
        while self.state.borrow().spares.len() < self.spares_wanted {
            let process = self.spawn()?;
            self.state.borrow_mut().spares.push(process);
        }
        Ok(())
    }

    /// Stops tenants' processes idle for longer than the pool's limit and
    /// starts spares up to the wanted number. Call it off the request path.
    pub fn maintain(&self) -> Result<(), RedoProcessError> {
        let idle: Vec<Assigned> = {
            let mut state = self.state.borrow_mut();
            let idle_tenants: Vec<TenantKey> = state
                .by_tenant
                .iter()
                .filter(|(_, a)| a.last_used.elapsed() >= self.idle_after)
                .map(|(&t, _)| t)
                .collect();
            idle_tenants
                .into_iter()
                .filter_map(|t| state.by_tenant.remove(&t))
                .collect()
        };
        for assigned in idle {
            self.retire(assigned.process);
        }
        self.refill_spares()
    }

    /// How many processes are running (assigned and spare).
    pub fn running(&self) -> usize {
        let state = self.state.borrow();
        state.by_tenant.len() + state.spares.len()
    }

    /// The pid of the tenant's process, if it has one (tests kill it).
    pub fn tenant_pid(&self, tenant: TenantKey) -> Option<u32> {
        self.state
            .borrow()
            .by_tenant
            .get(&tenant)
            .map(|a| a.process.pid())
    }

    fn retire(&self, process: RedoProcess) {
        let slot = process.slot();
        process.stop();
        self.state.borrow_mut().free_slots.push(slot);
    }

    fn take(&self, tenant: TenantKey) -> Result<RedoProcess, RedoProcessError> {
        let reused = {
            let mut state = self.state.borrow_mut();
            match state.by_tenant.remove(&tenant) {
                Some(assigned) => Some(assigned.process),
                None => state.spares.pop(),
            }
        };
        match reused {
            Some(process) => Ok(process),
            None => self.spawn(),
        }
    }

    fn give_back(&self, tenant: TenantKey, process: RedoProcess) {
        if process.is_alive() {
            self.state.borrow_mut().by_tenant.insert(
                tenant,
                Assigned {
                    process,
                    last_used: Instant::now(),
                },
            );
        } else {
            self.count(|s| s.failed += 1);
            self.retire(process);
        }
    }

    /// Sends `request` to the tenant's process and returns `expected` replies.
    fn exchange(
        &self,
        tenant: TenantKey,
        request: &[u8],
        expected: usize,
    ) -> Result<Vec<Reply>, (Vec<Reply>, RedoProcessError)> {
        let mut process = self.take(tenant).map_err(|e| (Vec::new(), e))?;
        self.count(|s| s.round_trips += 1);
        let result = process.exchange(request, expected);
        self.give_back(tenant, process);
        result
    }

    /// Rebuilds pages with Postgres' redo, many per round trip; one result
    /// per page, in order.
    pub fn rebuild_pages(
        &self,
        tenant: TenantKey,
        pages: &[PageRequest<'_>],
    ) -> Vec<Result<Box<[u8; BLCKSZ]>, String>> {
        let mut results = Vec::with_capacity(pages.len());
        let mut todo = pages;
        let mut retried = false;
        let mut request = Vec::new();
        while !todo.is_empty() {
            request.clear();
            // Several small `R` messages rather than one: the process
            // starts on the first while the rest are still being written,
            // and its replies flow back while it works on the next.
            for group in todo.chunks(PAGES_PER_MESSAGE) {
                protocol::rebuild(&mut request, group);
            }
            let (replies, failure) = match self.exchange(tenant, &request, todo.len()) {
                Ok(replies) => (replies, None),
                Err((replies, error)) => (replies, Some(error)),
            };
            let done = replies.len();
            for (reply, page) in replies.into_iter().zip(todo) {
                results.push(page_from_reply(reply));
                self.count(|s| {
                    s.process_pages += 1;
                    s.postgres_records += page.records.len() as u64;
                });
            }
            todo = &todo[done..];
            match failure {
                None => break,
                Some(error) if error.is_retryable() && !retried => retried = true,
                Some(error) => {
                    results.push(Err(error.to_string()));
                    todo = &todo[1.min(todo.len())..];
                    retried = false;
                }
            }
        }
        results
    }

    /// The page after resource manager `rmid`'s own masking
    /// (`wal_consistency_checking`'s rules).
    pub fn mask(
        &self,
        tenant: TenantKey,
        rmid: u8,
        block: BlockNo,
        page: &[u8; BLCKSZ],
    ) -> Result<Box<[u8; BLCKSZ]>, String> {
        let mut request = Vec::with_capacity(BLCKSZ + 16);
        protocol::mask(&mut request, rmid, block, page);
        match self.exchange(tenant, &request, 1) {
            Ok(mut replies) => page_from_reply(replies.remove(0)),
            Err((_, error)) => Err(error.to_string()),
        }
    }

    /// [`RedoPool::mask`] for many pages in one round trip.
    pub fn mask_many(
        &self,
        tenant: TenantKey,
        pages: &[(u8, BlockNo, &[u8; BLCKSZ])],
    ) -> Result<Vec<Box<[u8; BLCKSZ]>>, String> {
        let mut request = Vec::with_capacity(pages.len() * (BLCKSZ + 16));
        for (rmid, block, page) in pages {
            protocol::mask(&mut request, *rmid, *block, page);
        }
        match self.exchange(tenant, &request, pages.len()) {
            Ok(replies) => replies.into_iter().map(page_from_reply).collect(),
            Err((_, error)) => Err(error.to_string()),
        }
    }

    /// One empty round trip.
    pub fn ping(&self, tenant: TenantKey) -> Result<(), String> {
        let mut request = Vec::new();
        protocol::ping(&mut request);
        self.exchange(tenant, &request, 1)
            .map(drop)
            .map_err(|(_, e)| e.to_string())
    }

    /// Sends raw bytes (tests: malformed requests) and returns the replies.
    pub fn exchange_raw(
        &self,
        tenant: TenantKey,
        request: &[u8],
        expected: usize,
    ) -> Result<Vec<Reply>, String> {
        self.exchange(tenant, request, expected)
            .map_err(|(_, e)| e.to_string())
    }

    /// Rebuilds many keys' values at once: chains made only of Postgres
    /// records share round trips; the others go one by one.
    pub fn materialize_many(
        &self,
        tenant: TenantKey,
        items: &[(Key, Lsn, &ReconstructInputs)],
    ) -> Vec<Result<Vec<u8>, RedoError>> {
        let mut results: Vec<Option<Result<Vec<u8>, RedoError>>> = vec![None; items.len()];
        let mut batch: Vec<(usize, PageRequest<'_>)> = Vec::new();
        for (i, (key, lsn, inputs)) in items.iter().enumerate() {
            let fail = |what: String| RedoError {
                key: *key,
                lsn: *lsn,
                what,
            };
            match plan(*key, inputs) {
                Err(what) => results[i] = Some(Err(fail(what))),
                Ok(Plan::Batch(request)) => batch.push((i, request)),
                Ok(Plan::Steps { page, steps }) => {
                    results[i] = Some(self.run_steps(tenant, *key, page, &steps).map_err(fail));
                }
            }
        }
        if !batch.is_empty() {
            let requests: Vec<PageRequest<'_>> = batch.iter().map(|(_, r)| r.clone()).collect();
            let pages = self.rebuild_pages(tenant, &requests);
            for ((i, _), page) in batch.iter().zip(pages) {
                let (key, lsn, _) = items[*i];
                results[*i] =
                    Some(
                        page.map(|p| p.to_vec())
                            .map_err(|what| RedoError { key, lsn, what }),
                    );
            }
        }
        results
            .into_iter()
            .zip(items)
            .map(|(r, (key, lsn, _))| {
                r.unwrap_or_else(|| {
                    Err(RedoError {
                        key: *key,
                        lsn: *lsn,
                        what: "not rebuilt".into(),
                    })
                })
            })
            .collect()
    }

    fn run_steps(
        &self,
        tenant: TenantKey,
        key: Key,
        page: Option<Box<[u8; BLCKSZ]>>,
        steps: &[(bool, RedoRecord<'_>)],
    ) -> Result<Vec<u8>, String> {
        let mut page = page;
        let mut i = 0;
        while i < steps.len() {
            if steps[i].1.is_postgres() {
                let run_end = steps[i..]
                    .iter()
                    .position(|(_, r)| !r.is_postgres())
                    .map_or(steps.len(), |n| i + n);
                let Ok(KeyKind::RelBlock(rel, block)) = key.describe() else {
                    return Err(format!("{key} is not a relation block: no Postgres redo"));
                };
                let request = PageRequest {
                    rel,
                    block,
                    image: page.as_deref().map(|p| &p[..]),
                    records: steps[i..run_end]
                        .iter()
                        .filter_map(|(_, r)| match r {
                            RedoRecord::Postgres { start, end, record } => {
                                Some((*start, *end, *record))
                            }
                            _ => None,
                        })
                        .collect(),
                };
                let rebuilt = self.rebuild_pages(tenant, std::slice::from_ref(&request));
                page = Some(
                    rebuilt
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| Err("no reply".into()))?,
                );
                i = run_end;
            } else {
                let target = page.get_or_insert_with(|| Box::new([0u8; BLCKSZ]));
                rust_redo::apply(target, &steps[i].1).map_err(|e| e.to_string())?;
                self.count(|s| s.rust_records += 1);
                i += 1;
            }
        }
        page.map(|p| p.to_vec())
            .ok_or_else(|| "nothing to rebuild".into())
    }

    /// The `Redo` of one tenant, for the storage engine.
    pub fn for_tenant(self: &Rc<RedoPool>, tenant: TenantKey) -> TenantRedo {
        TenantRedo {
            pool: Rc::clone(self),
            tenant,
        }
    }
}

fn page_from_reply(reply: Reply) -> Result<Box<[u8; BLCKSZ]>, String> {
    match reply {
        Reply::Ok(body) => Box::<[u8; BLCKSZ]>::try_from(body.into_boxed_slice())
            .map_err(|b| format!("a page reply of {} bytes", b.len())),
        Reply::Error(message) => Err(message),
    }
}

/// How one key's value is rebuilt.
enum Plan<'a> {
    /// Only Postgres records, on a relation page: joins a batch.
    Batch(PageRequest<'a>),
    /// Anything else: applied step by step (`bool` = will-init).
    Steps {
        page: Option<Box<[u8; BLCKSZ]>>,
        steps: Vec<(bool, RedoRecord<'a>)>,
    },
}

fn plan(key: Key, inputs: &ReconstructInputs) -> Result<Plan<'_>, String> {
    let mut steps = Vec::with_capacity(inputs.records.len());
    for (_, value) in &inputs.records {
        let Value::Record { will_init, bytes } = value else {
            return Err("an image among the records to apply".into());
        };
        steps.push((
            *will_init,
            RedoRecord::decode(bytes).map_err(|e| e.to_string())?,
        ));
    }
    let image = match &inputs.image {
        Some((_, image)) if image.len() == BLCKSZ => Some(&image[..]),
        Some((_, image)) => return Err(format!("a base image of {} bytes", image.len())),
        None => None,
    };
    // A chain without an image starts from a page of zeros, as a block
    // zero-extended without WAL reads; Postgres' redo itself refuses (PANIC)
    // a record that needs an existing page there.
    if let Ok(KeyKind::RelBlock(rel, block)) = key.describe()
        && steps.iter().all(|(_, r)| r.is_postgres())
    {
        return Ok(Plan::Batch(batch_request(rel, block, image, &steps)));
    }
    let page = image.map(|i| {
        let mut page = Box::new([0u8; BLCKSZ]);
        page.copy_from_slice(i);
        page
    });
    Ok(Plan::Steps { page, steps })
}

fn batch_request<'a>(
    rel: RelTag,
    block: BlockNo,
    image: Option<&'a [u8]>,
    steps: &[(bool, RedoRecord<'a>)],
) -> PageRequest<'a> {
    PageRequest {
        rel,
        block,
        image,
        records: steps
            .iter()
            .filter_map(|(_, r)| match r {
                RedoRecord::Postgres { start, end, record } => Some((*start, *end, *record)),
                _ => None,
            })
            .collect(),
    }
}

/// A pool seen as one tenant's [`Redo`].
pub struct TenantRedo {
    pool: Rc<RedoPool>,
    tenant: TenantKey,
}

impl Redo for TenantRedo {
    async fn apply(
        &self,
        key: Key,
        lsn: Lsn,
        inputs: &ReconstructInputs,
    ) -> Result<Vec<u8>, RedoError> {
        self.pool
            .materialize_many(self.tenant, &[(key, lsn, inputs)])
            .pop()
            .unwrap_or_else(|| {
                Err(RedoError {
                    key,
                    lsn,
                    what: "no result".into(),
                })
            })
    }
}
