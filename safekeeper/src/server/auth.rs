//! Who a connection to the safekeeper speaks for, and what it may ask.
//!
//! With a public key configured, a connection's first frame must be
//! `Hello { token }` with a token signed by the matching private key
//! (`quire_net::token`); its claims decide every later request: compute
//! controls create timelines, run elections and read a donor's WAL,
//! safekeeper peers (by the node id the token names) report flushes and
//! fetch WAL, pageservers
//! stream committed WAL and report what they persisted, anyone
//! authenticated may ask for status, and a token limited to a tenant
//! reaches only that tenant's timelines. Without a key every connection is
//! open and a flush report's sender is the id it claims (the member-set
//! rule still refuses ids outside the timeline's set). Pure: the caller
//! passes the clock.

use quire_net::token::{Claims, Scope, TokenVerifier};

use crate::membership::{NodeId, Sender};
use crate::wire::{Message, TimelineKey};

/// What a connection has proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: requests are taken as they claim.
    Open,
    /// A token was required and none was shown yet.
    Unauthenticated,
    /// A checked token's claims.
    Token(Claims),
}

/// The server's authentication setting.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    verifier: Option<TokenVerifier>,
}

impl Auth {
    /// Tokens are checked with `verifier` (`None`: authentication off).
    pub fn new(verifier: Option<TokenVerifier>) -> Auth {
        Auth { verifier }
    }

    /// Whether tokens are required.
    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// A new connection's identity before any frame.
    pub fn initial(&self) -> Identity {
        if self.required() {
            Identity::Unauthenticated
        } else {
            Identity::Open
        }
    }

    /// A `Hello` at time `now` (seconds since the Unix epoch).
    pub fn hello(&self, token: &str, now: u64) -> Result<Identity, String> {
        match &self.verifier {
            None => Ok(Identity::Open),
            Some(verifier) => verifier
                .verify(token, now)
                .map(Identity::Token)
                .map_err(|e| format!("authentication failed: {e}")),
        }
    }
}

/// How a permitted request reaches the acceptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// As coming from this sender.
    As(Sender),
    /// Not an acceptor request (status, streaming, fetches, reports).
    Plain,
}

fn scope_allows(claims: &Claims, allowed: &[Scope]) -> bool {
    claims.scope == Scope::Admin || allowed.contains(&claims.scope)
}

fn tenant_allows(claims: &Claims, key: &TimelineKey) -> bool {
    claims.tenant.as_deref().is_none_or(|tenant| {
        // `TENANT/TIMELINE`, each in hex.
        let name = key.to_string();
        name.split_once('/')
            .is_some_and(|(hex, _)| tenant.eq_ignore_ascii_case(hex))
    })
}

/// Whether `identity` may send `request`, and as whom.
pub fn permit(identity: &Identity, request: &Message) -> Result<Permit, String> {
    let (key, allowed, permit): (Option<&TimelineKey>, &[Scope], Permit) = match request {
        Message::CreateTimeline { key, .. } => (Some(key), &[Scope::ComputeControl], Permit::Plain),
        Message::Vote { key, .. } | Message::Elected { key, .. } => (
            Some(key),
            &[Scope::ComputeControl],
            Permit::As(Sender::Proposer),
        ),
        Message::PeerFlush { key, peer, .. } => {
            let sender = match identity {
                Identity::Token(Claims {
                    node: Some(node), ..
                }) => Sender::Peer(NodeId(*node)),
                // Open: the claim; a token without a node cannot speak
                // for a safekeeper.
                _ => Sender::Peer(NodeId(*peer)),
            };
            if let Identity::Token(Claims { node: None, .. }) = identity {
                return Err("a flush report needs a token naming its safekeeper".into());
            }
            (Some(key), &[Scope::SafekeeperPeer], Permit::As(sender))
        }
        // Peers recover from each other; a compute control reads the
        // donor's last record at an election.
        Message::Fetch { key, .. } => (
            Some(key),
            &[Scope::SafekeeperPeer, Scope::ComputeControl],
            Permit::Plain,
        ),
        Message::StreamWal { key, .. } | Message::ReportPersisted { key, .. } => {
            (Some(key), &[Scope::Pageserver], Permit::Plain)
        }
        Message::GetStatus { key } => (
            Some(key),
            &[
                Scope::ComputeControl,
                Scope::SafekeeperPeer,
                Scope::Pageserver,
                Scope::Compute,
            ],
            Permit::Plain,
        ),
        Message::Hello { .. } => (None, &[], Permit::Plain),
        other => {
            return Err(format!(
                "not a request: {}",
                crate::server::conn::kind(other)
            ));
        }
    };
    match identity {
        Identity::Open => Ok(permit),
        Identity::Unauthenticated => {
            Err("authentication required: the first frame must be Hello with a token".into())
        }
        Identity::Token(claims) => {
            if !scope_allows(claims, allowed) {
                return Err(format!(
                    "a {:?} token may not send {}",
                    claims.scope,
                    crate::server::conn::kind(request)
                ));
            }
            if let Some(key) = key
                && !tenant_allows(claims, key)
            {
                return Err("the token is for another tenant".into());
            }
            Ok(permit)
        }
    }
}

/// The safekeeper that a fetch comes from, when a token names one.
pub fn peer_of(identity: &Identity) -> Option<NodeId> {
    match identity {
        Identity::Token(Claims {
            node: Some(node), ..
        }) => Some(NodeId(*node)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_net::token::TokenSigner;
    use quire_postgres::Lsn;

    const KEY: TimelineKey = TimelineKey {
        tenant: [0xab; 16],
        timeline: [1; 16],
    };

    fn claims(scope: Scope, node: Option<u32>, tenant: Option<&str>) -> Identity {
        Identity::Token(Claims {
            scope,
            tenant: tenant.map(Into::into),
            node,
            exp: None,
        })
    }

    fn flush(peer: u32) -> Message {
        Message::PeerFlush {
            key: KEY,
            peer,
            term: 3,
            flush: Lsn(100),
        }
    }

    #[test]
    fn each_scope_sends_only_its_requests() {
        let vote = Message::Vote { key: KEY, term: 9 };
        let stream = Message::StreamWal {
            key: KEY,
            from: Lsn(0),
        };
        let status = Message::GetStatus { key: KEY };
        let control = claims(Scope::ComputeControl, None, None);
        let peer2 = claims(Scope::SafekeeperPeer, Some(2), None);
        let pageserver = claims(Scope::Pageserver, None, None);
        let compute = claims(Scope::Compute, None, None);
        assert_eq!(permit(&control, &vote), Ok(Permit::As(Sender::Proposer)));
        assert!(permit(&peer2, &vote).is_err());
        assert!(permit(&pageserver, &vote).is_err());
        assert!(permit(&control, &stream).is_err());
        assert_eq!(permit(&pageserver, &stream), Ok(Permit::Plain));
        for who in [&control, &peer2, &pageserver, &compute] {
            assert_eq!(permit(who, &status), Ok(Permit::Plain));
        }
        // A peer's flush report speaks for the token's node, whatever it
        // claims: the acceptor then refuses a mismatch.
        assert_eq!(
            permit(&peer2, &flush(3)),
            Ok(Permit::As(Sender::Peer(NodeId(2))))
        );
        assert!(permit(&claims(Scope::Admin, None, None), &flush(2)).is_err());
        assert!(permit(&Identity::Unauthenticated, &status).is_err());
        assert_eq!(
            permit(&Identity::Open, &flush(3)),
            Ok(Permit::As(Sender::Peer(NodeId(3))))
        );
        assert!(permit(&Identity::Open, &Message::Ok).is_err());
    }

    #[test]
    fn a_tenant_token_reaches_only_its_tenant() {
        let status = Message::GetStatus { key: KEY };
        let mine = claims(Scope::Pageserver, None, Some(&"AB".repeat(16)));
        let other = claims(Scope::Pageserver, None, Some(&"cd".repeat(16)));
        assert!(permit(&mine, &status).is_ok());
        assert!(permit(&other, &status).is_err());
    }

    #[test]
    fn hello_checks_the_token_when_a_key_is_set() {
        let signer = TokenSigner::from_seed(&[5; 32]);
        let verifier = TokenVerifier::from_pem(&signer.public_pem().expect("pem")).expect("key");
        let auth = Auth::new(Some(verifier));
        assert_eq!(auth.initial(), Identity::Unauthenticated);
        let token = signer.mint(&Claims {
            scope: Scope::Pageserver,
            tenant: None,
            node: None,
            exp: Some(100),
        });
        assert!(matches!(auth.hello(&token, 50), Ok(Identity::Token(_))));
        assert!(auth.hello(&token, 100).is_err(), "expired");
        assert!(auth.hello("garbage", 50).is_err());
        let open = Auth::default();
        assert_eq!(open.initial(), Identity::Open);
        assert_eq!(open.hello("anything", 0), Ok(Identity::Open));
    }
}
