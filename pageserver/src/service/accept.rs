//! Connections in: every core listens on the page port (`SO_REUSEPORT`, so
//! the kernel spreads accepts), reads the `Hello` of what it accepted,
//! checks what it can alone (version, token), looks the shard up in the
//! placement, and serves the connection itself or hands it, detached, to
//! the owning core's inbox. The owner checks the tenant, timeline and shard
//! against what it holds, answers `HelloOk`, and runs the request loop:
//! from there on the connection never leaves its core.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use quire_io::handoff::{Inbox, Outbox};
use quire_io::net::{DetachedTcpStream, TcpListener, TcpStream};
use quire_net::page_protocol::{ErrorResponse, ServiceError, kind};
use quire_net::page_service::connection::Ended;
use quire_net::page_service::handshake::{answer_hello, check_token, hello_ok};
use quire_net::page_service::{Handshake, HandshakeError, check_version, read_hello, serve};

use super::core::Core;
use super::session::TimelineSession;

/// A connection on its way to the core owning its shard.
pub struct Handed {
    /// The socket.
    pub stream: DetachedTcpStream,
    /// Its handshake, read.
    pub handshake: Handshake,
    /// The version agreed.
    pub version: u16,
}

/// Accepts page connections on this core until the listener fails.
pub async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    outboxes: Rc<Vec<Option<Outbox<Handed>>>>,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("pageserver: core {}: accept failed: {error}", core.index);
                quire_io::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if core.handshakes.get() >= core.shared.max_handshakes_per_core {
            // Too many connections not yet placed: refuse without reading.
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        core.handshakes.set(core.handshakes.get() + 1);
        let core = Rc::clone(&core);
        let outboxes = Rc::clone(&outboxes);
        quire_io::spawn_local(async move {
            let routed = route(&core, stream, &outboxes).await;
            core.handshakes.set(core.handshakes.get() - 1);
            if let Some((stream, handshake, version)) = routed {
                adopt(core, stream, handshake, version).await;
            }
        })
        .detach();
    }
}

/// Receives connections other cores hand over.
pub async fn inbox_loop(core: Rc<Core>, inbox: Inbox<Handed>) {
    while let Some(handed) = inbox.recv().await {
        let core = Rc::clone(&core);
        quire_io::spawn_local(async move {
            adopt(
                core,
                handed.stream.attach(),
                handed.handshake,
                handed.version,
            )
            .await;
        })
        .detach();
    }
}

/// Reads and checks the handshake; returns the connection if this core
/// owns it (else it was handed over or refused).
async fn route(
    core: &Core,
    mut stream: TcpStream,
    outboxes: &[Option<Outbox<Handed>>],
) -> Option<(TcpStream, Handshake, u16)> {
    let limits = core.shared.limits;
    let handshake = match read_hello(&mut stream, limits.handshake_timeout).await {
        Ok(handshake) => handshake,
        Err(HandshakeError::Io(_)) => return None,
        Err(HandshakeError::Refused { request_id, error }) => {
            refuse(core, &mut stream, request_id, error).await;
            return None;
        }
    };
    let request_id = handshake.request_id;
    let checked = check_version(&handshake.hello).and_then(|version| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        check_token(&handshake.hello, core.shared.verifier.as_ref(), now)?;
        Ok(version)
    });
    let version = match checked {
        Ok(version) => version,
        Err(error) => {
            refuse(core, &mut stream, request_id, error).await;
            return None;
        }
    };
    let hello = &handshake.hello;
    let place = match core.shared.place_of(hello.tenant, hello.shard.number()) {
        Ok(place) => place,
        Err(known) => {
            let (error, message) = if known {
                (
                    ServiceError::ShardNotHere,
                    format!(
                        "tenant {} has no shard {} here",
                        hello.tenant,
                        hello.shard.number()
                    ),
                )
            } else {
                (
                    ServiceError::UnknownTenant,
                    format!("no tenant {} on this pageserver", hello.tenant),
                )
            };
            let error = ErrorResponse::new(kind::HELLO, error, &message);
            refuse(core, &mut stream, request_id, error).await;
            return None;
        }
    };
    if place.core == core.index {
        return Some((stream, handshake, version));
    }
    let Some(Some(outbox)) = outboxes.get(place.core) else {
        let error = ErrorResponse::new(
            kind::HELLO,
            ServiceError::Internal,
            &format!("no path to core {}", place.core),
        );
        refuse(core, &mut stream, request_id, error).await;
        return None;
    };
    let detached = match stream.detach() {
        Ok(detached) => detached,
        Err(error) => {
            eprintln!(
                "pageserver: core {}: detaching a connection: {error}",
                core.index
            );
            return None;
        }
    };
    let handed = Handed {
        stream: detached,
        handshake,
        version,
    };
    if let Err(full) = outbox.try_send(handed) {
        let handed = full.into_inner();
        let mut stream = handed.stream.attach();
        let error = ErrorResponse::new(
            kind::HELLO,
            ServiceError::Overloaded {
                retry_after_ms: 100,
            },
            &format!("core {} has too many connections waiting", place.core),
        );
        refuse(core, &mut stream, request_id, error).await;
    }
    None
}

/// On the owning core: the rest of the checks, `HelloOk`, the request loop.
async fn adopt(core: Rc<Core>, mut stream: TcpStream, handshake: Handshake, version: u16) {
    let hello = &handshake.hello;
    let request_id = handshake.request_id;
    let refusal = |error, message: String| ErrorResponse::new(kind::HELLO, error, &message);
    let Some(shard) = core.shard(hello.tenant, hello.shard.number()) else {
        let error = refusal(
            ServiceError::ShardNotHere,
            format!(
                "tenant {} shard {} is not on this core",
                hello.tenant,
                hello.shard.number()
            ),
        );
        refuse(&core, &mut stream, request_id, error).await;
        return;
    };
    // An unsharded tenant has no stripe to agree on.
    let same = shard.identity.count() == hello.shard.count()
        && (shard.identity.count() == 1
            || shard.identity.stripe_blocks() == hello.shard.stripe_blocks());
    if !same {
        let error = refusal(
            ServiceError::ShardNotHere,
            format!(
                "tenant {} is {} shards of stripe {}, the handshake says {} of stripe {}",
                hello.tenant,
                shard.identity.count(),
                shard.identity.stripe_blocks(),
                hello.shard.count(),
                hello.shard.stripe_blocks()
            ),
        );
        refuse(&core, &mut stream, request_id, error).await;
        return;
    }
    let Some(timeline) = shard.timeline(hello.timeline) else {
        let error = refusal(
            ServiceError::UnknownTimeline,
            format!("tenant {} has no timeline {}", hello.tenant, hello.timeline),
        );
        refuse(&core, &mut stream, request_id, error).await;
        return;
    };
    if core.connections.get() >= core.shared.max_connections_per_core {
        let error = refusal(
            ServiceError::Overloaded {
                retry_after_ms: 1000,
            },
            format!(
                "core {} serves {} page connections already",
                core.index,
                core.connections.get()
            ),
        );
        refuse(&core, &mut stream, request_id, error).await;
        return;
    }
    let limits = core.shared.limits;
    if answer_hello(
        &mut stream,
        request_id,
        Ok(hello_ok(version, &limits)),
        limits.write_timeout,
    )
    .await
    .is_err()
    {
        return;
    }
    stream.set_busy_poll(core.shared.busy_poll);
    core.connections.set(core.connections.get() + 1);
    core.metrics.connections.inc();
    let session = TimelineSession {
        core: Rc::clone(&core),
        shard,
        timeline,
    };
    let ended = serve(&mut stream, handshake.decoder, &session, &limits).await;
    core.connections.set(core.connections.get() - 1);
    core.metrics.connections.dec();
    if let Ended::Refused(reason) = ended {
        eprintln!(
            "pageserver: core {}: closed a page connection: {reason}",
            core.index
        );
    }
}

async fn refuse(core: &Core, stream: &mut TcpStream, request_id: u64, error: ErrorResponse) {
    core.metrics
        .errors
        .with_label_values(&[core.metrics.core(), super::session::error_name(error.error)])
        .inc();
    let _ = answer_hello(
        stream,
        request_id,
        Err(error),
        core.shared.limits.write_timeout,
    )
    .await;
}
