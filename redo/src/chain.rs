//! Redo of a key's chain: what the storage engine asks of the pool.
//!
//! A key's chain is split by who applies each record: runs of Postgres WAL
//! records go to the tenant's process (through its lane, so concurrent
//! requests share round trips), Rust records ([`crate::rust_redo`]) are
//! applied here. Chains made only of Postgres records on a relation page
//! are sent together; the others go step by step. A failed or malformed
//! record fails its key, never yields a value.

use std::rc::Rc;

use quire_postgres::key::KeyKind;
use quire_postgres::types::{BLCKSZ, BlockNo, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{ReconstructInputs, Redo, RedoError, Value};

use crate::pool::{RedoPool, TenantKey};
use crate::protocol::PageRequest;
use crate::record::RedoRecord;
use crate::rust_redo;

impl RedoPool {
    /// Rebuilds many keys' values at once: chains made only of Postgres
    /// records share round trips; the others go one by one.
    pub async fn materialize_many(
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
                    let value = self.run_steps(tenant, *key, page, &steps).await;
                    results[i] = Some(value.map_err(fail));
                }
            }
        }
        if !batch.is_empty() {
            let requests: Vec<PageRequest<'_>> = batch.iter().map(|(_, r)| r.clone()).collect();
            let pages = self.rebuild_pages(tenant, &requests).await;
            for ((i, _), page) in batch.iter().zip(pages) {
                let (key, lsn, _) = items[*i];
                results[*i] = Some(page.map(|p| p.to_vec()).map_err(|e| RedoError {
                    key,
                    lsn,
                    what: e.to_string(),
                }));
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

    async fn run_steps(
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
                let rebuilt = {
                    let image = page.as_deref().map(|p| &p[..]);
                    let request = batch_request(rel, block, image, &steps[i..run_end]);
                    self.rebuild_pages(tenant, std::slice::from_ref(&request))
                        .await
                        .into_iter()
                        .next()
                };
                page = Some(match rebuilt {
                    Some(Ok(rebuilt)) => rebuilt,
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Err("no reply".into()),
                });
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
            .await
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
