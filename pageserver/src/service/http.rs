//! The admin API over HTTP (docs/admin-api.md): JSON in and out, served by
//! a few threads of its own (never a core's executor). Each request that
//! touches a shard becomes an [`AdminCommand`] on the owning core's bounded
//! queue (a full queue answers 503 at once) and waits for the core's reply,
//! bounded. `/metrics` is read straight from the shared registry.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use quire_net::id::{ShardIdentity, TenantId, TimelineId};
use quire_net::token::{Scope, TokenVerifier};
use quire_postgres::Lsn;
use quire_postgres::timestamp::TimestampTz;
use serde::Deserialize;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response, Server};

use super::admin::{AdminCommand, AdminError, Reply, TimelineOrigin};
use super::core::{ShardPlace, Shared};
use super::settings::{ShardSettings, WalSourceSettings};

/// The largest request body taken.
const BODY_BYTES_MAX: u64 = 64 * 1024;
/// How long a request waits for a core's answer (an import can be long).
const REPLY_TIMEOUT: Duration = Duration::from_secs(3600);
/// The stripe when a tenant is created without one: 256 MiB of pages.
pub const STRIPE_BLOCKS_DEFAULT: u32 = 32_768;

/// What the HTTP threads hold.
pub struct AdminApi {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Each core's queue.
    pub cores: Vec<mpsc::Sender<AdminCommand>>,
}

/// Serves `server` on `threads` threads; returns once they are started.
pub fn start(server: Server, api: AdminApi, threads: usize) -> std::io::Result<()> {
    let server = Arc::new(server);
    let api = Arc::new(api);
    for n in 0..threads.max(1) {
        let server = Arc::clone(&server);
        let api = Arc::clone(&api);
        std::thread::Builder::new()
            .name(format!("quire-admin-{n}"))
            .spawn(move || {
                for request in server.incoming_requests() {
                    api.serve(request);
                }
            })?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    shard_count: Option<u32>,
    #[serde(default)]
    stripe_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachTenant {
    #[serde(default)]
    shard_count: Option<u32>,
    #[serde(default)]
    stripe_size: Option<u32>,
    #[serde(default)]
    wal_source: Option<WalSourceSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTimeline {
    #[serde(default)]
    timeline_id: Option<String>,
    #[serde(default)]
    import_pgdata: Option<String>,
    #[serde(default)]
    ancestor_timeline_id: Option<String>,
    #[serde(default)]
    ancestor_lsn: Option<String>,
    #[serde(default)]
    ancestor_timestamp: Option<String>,
    #[serde(default)]
    wal_source: Option<WalSourceSettings>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcRequest {
    #[serde(default)]
    cutoff_lsn: Option<String>,
}

fn bad(message: impl Into<String>) -> AdminError {
    AdminError::new(400, message)
}

fn parse_tenant(text: &str) -> Result<TenantId, AdminError> {
    text.parse().map_err(|e| bad(format!("{e}")))
}

fn parse_timeline(text: &str) -> Result<TimelineId, AdminError> {
    text.parse().map_err(|e| bad(format!("{e}")))
}

fn parse_lsn(text: &str) -> Result<Lsn, AdminError> {
    text.parse()
        .map_err(|_| bad(format!("{text:?} is not an LSN (X/Y in hex)")))
}

/// A time to branch at or look up: RFC 3339 or Postgres' output, with an
/// offset, and not in the future (what happens then is not known yet).
fn parse_time(text: &str) -> Result<TimestampTz, AdminError> {
    let time = TimestampTz::parse(text).map_err(|e| bad(e.to_string()))?;
    let now = TimestampTz::from_system_time(std::time::SystemTime::now())
        .ok_or_else(|| AdminError::new(500, "the clock is outside Postgres' range"))?;
    if time > now {
        return Err(bad(format!(
            "{time} is in the future (now is {now}): its commits are not known yet"
        )));
    }
    Ok(time)
}

/// The value of `name` in a query string, `%XX` escapes decoded (a `+`
/// stays a plus: it is the offset sign of a timestamp far more often than
/// a form's space).
fn query_value(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(key, _)| *key == name))?
        .1;
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(value) = escaped {
            decoded.push(value);
            at += 3;
        } else {
            decoded.push(byte);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// A fresh random id (from the kernel's random source).
fn random_id() -> Result<[u8; 16], AdminError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| AdminError::new(500, format!("read /dev/urandom: {e}")))?;
    Ok(bytes)
}

impl AdminApi {
    fn serve(&self, mut request: Request) {
        let answer = self.route(&mut request);
        let (status, body) = match answer {
            Ok((status, Body::Tar(reader, lsn))) => {
                let mut response = Response::new(status.into(), Vec::new(), reader, None, None);
                for (name, value) in [("Content-Type", "application/x-tar"), ("Quire-Lsn", &lsn)] {
                    if let Ok(header) = Header::from_bytes(name, value) {
                        response = response.with_header(header);
                    }
                }
                let _ = request.respond(response);
                return;
            }
            Ok((status, Body::Json(value))) => (status, value.to_string()),
            Ok((status, Body::Text(text))) => (status, text),
            Err(error) => (error.status, json!({"error": error.message}).to_string()),
        };
        let content_type = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "text/plain; version=0.0.4"
        };
        let mut response = Response::from_string(body).with_status_code(status);
        if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
            response = response.with_header(header);
        }
        let _ = request.respond(response);
    }

    fn route(&self, request: &mut Request) -> Result<(u16, Body), AdminError> {
        let method = request.method().clone();
        let url = request.url().to_owned();
        let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts == ["metrics"] && method == Method::Get {
            let text = self.shared.metrics.render()?;
            return Ok((200, Body::Text(text)));
        }
        self.authorize(request)?;
        let body = read_body(request)?;
        match (method, parts.as_slice()) {
            (Method::Get, ["v1", "status"]) => Ok((
                200,
                Body::Json(
                    json!({"cores": self.shared.cores, "tenants": self.shared.tenants().len()}),
                ),
            )),
            (Method::Get, ["v1", "tenant"]) => Ok((200, Body::Json(self.list_tenants()))),
            (Method::Post, ["v1", "tenant"]) => {
                let request: CreateTenant = json_body(&body)?;
                Ok((201, Body::Json(self.create_tenant(&request)?)))
            }
            (Method::Delete, ["v1", "tenant", tenant]) => {
                let tenant = parse_tenant(tenant)?;
                Ok((200, Body::Json(self.delete_tenant(tenant, true)?)))
            }
            (Method::Post, ["v1", "tenant", tenant, "detach"]) => {
                let tenant = parse_tenant(tenant)?;
                Ok((200, Body::Json(self.delete_tenant(tenant, false)?)))
            }
            (Method::Post, ["v1", "tenant", tenant, "attach"]) => {
                let tenant = parse_tenant(tenant)?;
                let request: AttachTenant = json_body(&body)?;
                Ok((201, Body::Json(self.attach_tenant(tenant, &request)?)))
            }
            (Method::Post, ["v1", "tenant", tenant, "timeline"]) => {
                let tenant = parse_tenant(tenant)?;
                let request: CreateTimeline = json_body(&body)?;
                Ok((201, Body::Json(self.create_timeline(tenant, &request)?)))
            }
            (Method::Get, ["v1", "tenant", tenant, "timeline"]) => {
                let tenant = parse_tenant(tenant)?;
                let (place, _) = self.shard_zero(tenant)?;
                let value = self.ask(place.core, |reply| AdminCommand::Status {
                    tenant,
                    number: 0,
                    timeline: None,
                    reply,
                })?;
                Ok((200, Body::Json(value)))
            }
            (method, ["v1", "tenant", tenant, "timeline", timeline, rest @ ..]) => {
                let (tenant, timeline) = (parse_tenant(tenant)?, parse_timeline(timeline)?);
                self.route_timeline(&method, (tenant, timeline), rest, query, &body)
            }
            _ => Err(AdminError::new(404, format!("no such endpoint: {path}"))),
        }
    }

    fn route_timeline(
        &self,
        method: &Method,
        (tenant, timeline): (TenantId, TimelineId),
        rest: &[&str],
        query: &str,
        body: &str,
    ) -> Result<(u16, Body), AdminError> {
        match (method, rest) {
            (&Method::Get, ["lsn_by_timestamp"]) => {
                let text = query_value(query, "timestamp")
                    .ok_or_else(|| bad("give ?timestamp=<RFC 3339 time with an offset>"))?;
                let time = parse_time(&text)?;
                Ok((
                    200,
                    Body::Json(self.commit_at_or_before(tenant, timeline, time)?),
                ))
            }
            (&Method::Get, []) => {
                let mut shards = Vec::new();
                for place in self.places(tenant)? {
                    shards.push(self.ask(place.core, |reply| AdminCommand::Status {
                        tenant,
                        number: place.identity.number(),
                        timeline: Some(timeline),
                        reply,
                    })?);
                }
                let mut value = shards.first().cloned().unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("shards".into(), Value::Array(shards));
                }
                Ok((200, Body::Json(value)))
            }
            (&Method::Get, ["basebackup"]) => self.basebackup(tenant, timeline, query),
            (&Method::Get, ["relations"]) => {
                let (place, _) = self.shard_zero(tenant)?;
                let value = self.ask(place.core, |reply| AdminCommand::Relations {
                    tenant,
                    number: 0,
                    timeline,
                    reply,
                })?;
                Ok((200, Body::Json(value)))
            }
            (&Method::Post, ["compact"]) => {
                let mut shards = Vec::new();
                for place in self.places(tenant)? {
                    shards.push(self.ask(place.core, |reply| AdminCommand::Compact {
                        tenant,
                        number: place.identity.number(),
                        timeline,
                        reply,
                    })?);
                }
                Ok((200, Body::Json(json!({"shards": shards}))))
            }
            (&Method::Post, ["evict"]) => {
                let mut shards = Vec::new();
                for place in self.places(tenant)? {
                    shards.push(self.ask(place.core, |reply| AdminCommand::Evict {
                        tenant,
                        number: place.identity.number(),
                        timeline,
                        reply,
                    })?);
                }
                Ok((200, Body::Json(json!({"shards": shards}))))
            }
            (&Method::Post, ["gc"]) => {
                let request: GcRequest = if body.trim().is_empty() {
                    GcRequest::default()
                } else {
                    json_body(body)?
                };
                let cutoff = request.cutoff_lsn.as_deref().map(parse_lsn).transpose()?;
                let mut shards = Vec::new();
                for place in self.places(tenant)? {
                    shards.push(self.ask(place.core, |reply| AdminCommand::Gc {
                        tenant,
                        number: place.identity.number(),
                        timeline,
                        cutoff,
                        reply,
                    })?);
                }
                Ok((200, Body::Json(json!({"shards": shards}))))
            }
            _ => Err(AdminError::new(404, "no such timeline endpoint")),
        }
    }

    /// Starts a basebackup on shard 0's core; the tar streams from it.
    fn basebackup(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        query: &str,
    ) -> Result<(u16, Body), AdminError> {
        let lsn = query_value(query, "lsn")
            .map(|t| parse_lsn(&t))
            .transpose()?;
        let full = match query_value(query, "full").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => return Err(bad(format!("full={other}: give true or false"))),
        };
        let prev_record = query_value(query, "prev")
            .map(|t| parse_lsn(&t))
            .transpose()?
            .unwrap_or(Lsn::INVALID);
        if let Some(lsn) = lsn
            && prev_record >= lsn
        {
            return Err(bad(format!(
                "prev={prev_record} is not below lsn={lsn}: it names the record before it"
            )));
        }
        let (place, _) = self.shard_zero(tenant)?;
        let (chunks, tar) = std::sync::mpsc::sync_channel(super::basebackup::CHUNKS_IN_FLIGHT);
        let started = self.ask(place.core, |reply| AdminCommand::Basebackup {
            request: super::basebackup::BasebackupRequest {
                tenant,
                timeline,
                lsn,
                options: crate::basebackup::BasebackupOptions { full, prev_record },
                chunks,
            },
            reply,
        })?;
        let lsn = started
            .get("lsn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok((
            200,
            Body::Tar(super::basebackup::ChunkReader::new(tar), lsn),
        ))
    }

    /// With a public key, only `admin` tokens may use the API.
    fn authorize(&self, request: &Request) -> Result<(), AdminError> {
        let Some(verifier) = &self.shared.verifier else {
            return Ok(());
        };
        authorize_with(verifier, request)
    }

    fn places(&self, tenant: TenantId) -> Result<Vec<ShardPlace>, AdminError> {
        self.shared
            .tenants()
            .into_iter()
            .find(|(t, _)| *t == tenant)
            .map(|(_, places)| places)
            .ok_or_else(|| AdminError::new(404, format!("no tenant {tenant}")))
    }

    fn shard_zero(&self, tenant: TenantId) -> Result<(ShardPlace, Vec<ShardPlace>), AdminError> {
        let places = self.places(tenant)?;
        let zero = places
            .iter()
            .find(|p| p.identity.number() == 0)
            .copied()
            .ok_or_else(|| AdminError::new(500, format!("tenant {tenant} has no shard 0")))?;
        Ok((zero, places))
    }

    /// The last commit of `timeline` at or before `time`, from shard 0.
    fn commit_at_or_before(
        &self,
        tenant: TenantId,
        timeline: TimelineId,
        time: TimestampTz,
    ) -> Result<Value, AdminError> {
        let (place, _) = self.shard_zero(tenant)?;
        self.ask(place.core, |reply| AdminCommand::CommitAtOrBefore {
            tenant,
            number: 0,
            timeline,
            time,
            reply,
        })
    }

    /// Sends a command to `core` and waits for its answer.
    fn ask(
        &self,
        core: usize,
        command: impl FnOnce(Reply) -> AdminCommand,
    ) -> Result<Value, AdminError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let mut queue = self
            .cores
            .get(core)
            .cloned()
            .ok_or_else(|| AdminError::new(500, format!("no core {core}")))?;
        queue.try_send(command(reply)).map_err(|e| {
            if e.is_full() {
                AdminError::new(503, format!("core {core}'s admin queue is full; retry"))
            } else {
                AdminError::new(503, format!("core {core} is not running"))
            }
        })?;
        match answer.recv_timeout(REPLY_TIMEOUT) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(AdminError::new(
                504,
                format!("core {core} did not answer in time"),
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(AdminError::new(
                500,
                format!("core {core} dropped the request"),
            )),
        }
    }

    fn list_tenants(&self) -> Value {
        Value::Array(
            self.shared
                .tenants()
                .into_iter()
                .map(|(tenant, places)| {
                    let first = places.first().map(|p| p.identity);
                    json!({
                        "tenant_id": tenant.to_string(),
                        "shard_count": first.map_or(1, ShardIdentity::count),
                        "stripe_size": first.map_or(0, ShardIdentity::stripe_blocks),
                        "shards": places.iter().map(|p| json!({"number": p.identity.number(), "core": p.core})).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    fn create_tenant(&self, request: &CreateTenant) -> Result<Value, AdminError> {
        let tenant = match &request.tenant_id {
            Some(text) => parse_tenant(text)?,
            None => TenantId(random_id()?),
        };
        if self.places(tenant).is_ok() {
            return Err(AdminError::new(409, format!("tenant {tenant} exists")));
        }
        let count = request.shard_count.unwrap_or(1);
        let stripe = request.stripe_size.unwrap_or(STRIPE_BLOCKS_DEFAULT);
        let places: Vec<ShardPlace> = self
            .make_shards(tenant, count, stripe, |settings, reply| {
                AdminCommand::CreateShard { settings, reply }
            })?
            .into_iter()
            .map(|(place, _)| place)
            .collect();
        Ok(json!({
            "tenant_id": tenant.to_string(),
            "shard_count": count,
            "stripe_size": stripe,
            "shards": places.iter().map(|p| json!({"number": p.identity.number(), "core": p.core})).collect::<Vec<_>>(),
        }))
    }

    /// Attaches every shard of `tenant` from object storage, each to the
    /// least loaded core.
    fn attach_tenant(&self, tenant: TenantId, request: &AttachTenant) -> Result<Value, AdminError> {
        if self.places(tenant).is_ok() {
            return Err(AdminError::new(
                409,
                format!("tenant {tenant} is here already"),
            ));
        }
        let count = request.shard_count.unwrap_or(1);
        let stripe = request.stripe_size.unwrap_or(STRIPE_BLOCKS_DEFAULT);
        let places = self.make_shards(tenant, count, stripe, |settings, reply| {
            AdminCommand::AttachShard {
                settings,
                wal_source: request.wal_source.clone(),
                reply,
            }
        })?;
        Ok(json!({
            "tenant_id": tenant.to_string(),
            "shard_count": count,
            "stripe_size": stripe,
            "shards": places.iter().map(|(p, answer)| json!({"number": p.identity.number(), "core": p.core, "attached": answer})).collect::<Vec<_>>(),
        }))
    }

    /// Makes each of the `count` shards of `tenant` on the least loaded
    /// core with `command` (undoing the ones made when one fails) and
    /// places them; where they are, with each core's answer.
    fn make_shards(
        &self,
        tenant: TenantId,
        count: u32,
        stripe: u32,
        command: impl Fn(ShardSettings, Reply) -> AdminCommand,
    ) -> Result<Vec<(ShardPlace, Value)>, AdminError> {
        let mut places: Vec<(ShardPlace, Value)> = Vec::new();
        // Spread shards over the cores, starting with the least loaded.
        let mut load = vec![0usize; self.shared.cores];
        for (_, existing) in self.shared.tenants() {
            for place in existing {
                if let Some(n) = load.get_mut(place.core) {
                    *n += 1;
                }
            }
        }
        for number in 0..count {
            let identity =
                ShardIdentity::new(number, count, stripe).map_err(|e| bad(e.to_string()))?;
            let core = (0..load.len()).min_by_key(|&c| (load[c], c)).unwrap_or(0);
            load[core] += 1;
            let settings = ShardSettings {
                tenant: tenant.to_string(),
                shard_number: number,
                shard_count: count,
                stripe_blocks: stripe,
                core,
                generation: None,
            };
            let created = self.ask(core, |reply| command(settings, reply));
            let answer = match created {
                Ok(answer) => answer,
                Err(error) => {
                    for (place, _) in &places {
                        let _ = self.ask(place.core, |reply| AdminCommand::DeleteShard {
                            tenant,
                            number: place.identity.number(),
                            remote_too: false,
                            reply,
                        });
                    }
                    return Err(error);
                }
            };
            places.push((ShardPlace { identity, core }, answer));
        }
        self.shared
            .place(tenant, places.iter().map(|(place, _)| *place).collect());
        Ok(places)
    }

    /// Deletes `tenant` here, and with `remote_too` its objects in object
    /// storage (a detach keeps them for an attach elsewhere).
    fn delete_tenant(&self, tenant: TenantId, remote_too: bool) -> Result<Value, AdminError> {
        let places = self.places(tenant)?;
        self.shared.unplace(tenant);
        let mut remote = Vec::new();
        for place in places {
            remote.push(self.ask(place.core, |reply| AdminCommand::DeleteShard {
                tenant,
                number: place.identity.number(),
                remote_too,
                reply,
            })?);
        }
        Ok(json!({"tenant_id": tenant.to_string(), "deleted": true, "remote": remote}))
    }

    fn create_timeline(
        &self,
        tenant: TenantId,
        request: &CreateTimeline,
    ) -> Result<Value, AdminError> {
        let places = self.places(tenant)?;
        let timeline = match &request.timeline_id {
            Some(text) => parse_timeline(text)?,
            None => TimelineId(random_id()?),
        };
        let mut branch_commit = None;
        let origin = match (&request.import_pgdata, &request.ancestor_timeline_id) {
            (Some(pgdata), None) => TimelineOrigin::Import {
                pgdata: pgdata.into(),
            },
            (None, Some(ancestor)) => {
                let ancestor = parse_timeline(ancestor)?;
                let lsn = match (&request.ancestor_lsn, &request.ancestor_timestamp) {
                    (Some(lsn), None) => parse_lsn(lsn)?,
                    (None, Some(time)) => {
                        let commit =
                            self.commit_at_or_before(tenant, ancestor, parse_time(time)?)?;
                        let lsn = commit
                            .get("lsn")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        let lsn = parse_lsn(lsn)?;
                        branch_commit = Some(commit);
                        lsn
                    }
                    _ => {
                        return Err(bad(
                            "a branch needs exactly one of ancestor_lsn and ancestor_timestamp",
                        ));
                    }
                };
                TimelineOrigin::Branch { ancestor, lsn }
            }
            _ => {
                return Err(bad(
                    "give exactly one of import_pgdata and ancestor_timeline_id",
                ));
            }
        };
        let mut shards = Vec::new();
        for place in places {
            let origin = origin.clone();
            let wal_source = request.wal_source.clone();
            shards.push(self.ask(place.core, |reply| AdminCommand::CreateTimeline {
                tenant,
                number: place.identity.number(),
                timeline,
                origin,
                wal_source,
                reply,
            })?);
        }
        let lsn = shards
            .first()
            .and_then(|s| s.get("lsn").cloned())
            .unwrap_or(Value::Null);
        let mut created = json!({"tenant_id": tenant.to_string(), "timeline_id": timeline.to_string(), "lsn": lsn});
        if let Some(commit) = branch_commit {
            created["ancestor_commit"] = commit;
        }
        Ok(created)
    }
}

enum Body {
    Json(Value),
    Text(String),
    /// A tar streamed from a core, and the LSN it holds.
    Tar(super::basebackup::ChunkReader, String),
}

fn read_body(request: &mut Request) -> Result<String, AdminError> {
    if request
        .body_length()
        .is_some_and(|n| n as u64 > BODY_BYTES_MAX)
    {
        return Err(AdminError::new(413, "request body too large"));
    }
    let mut body = String::new();
    request
        .as_reader()
        .take(BODY_BYTES_MAX + 1)
        .read_to_string(&mut body)
        .map_err(|e| bad(format!("request body: {e}")))?;
    if body.len() as u64 > BODY_BYTES_MAX {
        return Err(AdminError::new(413, "request body too large"));
    }
    Ok(body)
}

fn json_body<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, AdminError> {
    let body = if body.trim().is_empty() { "{}" } else { body };
    serde_json::from_str(body).map_err(|e| bad(format!("request body: {e}")))
}

fn authorize_with(verifier: &TokenVerifier, request: &Request) -> Result<(), AdminError> {
    let header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_owned());
    let Some(token) = header.as_deref().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err(AdminError::new(
            401,
            "this API takes only signed tokens: send Authorization: Bearer <token>",
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = verifier
        .verify(token.trim(), now)
        .map_err(|e| AdminError::new(401, format!("token: {e}")))?;
    if claims.scope != Scope::Admin {
        return Err(AdminError::new(
            403,
            format!(
                "a token of scope {:?} cannot use the admin API",
                claims.scope
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_time, query_value};

    #[test]
    fn query_values_are_unescaped_and_a_plus_stays() {
        let query = "x=1&timestamp=2026-12-01%2019:57:31.5+00&y=";
        assert_eq!(
            query_value(query, "timestamp").as_deref(),
            Some("2026-12-01 19:57:31.5+00")
        );
        assert_eq!(query_value(query, "y").as_deref(), Some(""));
        assert_eq!(query_value(query, "z"), None);
        assert_eq!(query_value("t=%zz%4", "t").as_deref(), Some("%zz%4"));
        assert_eq!(query_value("t=%ff", "t"), None);
        assert_eq!(query_value("t=%+5", "t").as_deref(), Some("%+5"));
    }

    #[test]
    fn times_in_the_future_or_without_a_zone_are_refused() {
        assert!(parse_time("2026-01-01T00:00:00Z").is_ok());
        let future = parse_time("2999-01-01T00:00:00Z").unwrap_err();
        assert!(
            future.message.contains("in the future"),
            "{}",
            future.message
        );
        assert_eq!(parse_time("2026-01-01 00:00:00").unwrap_err().status, 400);
    }
}
