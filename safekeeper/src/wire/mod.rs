//! The safekeeper's own protocol (compute control, peers, pageserver), as a
//! pure codec. docs/safekeeper-protocol.md ("Wire encoding") is the spec.
//!
//! A frame is `kind: u8`, `length: u32`, then `length` body bytes; integers
//! are little-endian; a history is `count: u32` then `(term: u64, start:
//! u64)` each; a string is `length: u32` then UTF-8. Requests name their
//! timeline with a 16-byte tenant id and a 16-byte timeline id first.
//!
//! This module owns the message set and the timeline key; `codec` owns the
//! frame bytes (encode, decode and their errors).

mod codec;

pub use codec::FrameError;

use quire_postgres::Lsn;

use crate::acceptor::Response;
use crate::history::{Term, TermHistory};
use crate::membership::Member;

/// The longest frame body accepted (a WAL chunk is at most 1 MiB).
pub const MAX_FRAME: usize = 4 << 20;

/// What a timeline's storage went through since the safekeeper started
/// (part of its status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageHealth {
    /// The damaged WAL range being repaired, `[from, until)`; both zero
    /// when there is none.
    pub damaged_from: Lsn,
    /// See `damaged_from`.
    pub damaged_until: Lsn,
    /// Damaged ranges repaired from peers.
    pub wal_repairs: u64,
    /// Bytes of WAL written by those repairs.
    pub wal_repaired_bytes: u64,
    /// Fetched repair bytes that failed their check and were refused.
    pub wal_repair_refusals: u64,
    /// Control-file copies found damaged, missing or stale and rewritten
    /// from the other copy.
    pub control_repairs: u64,
}

/// Which timeline a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimelineKey {
    /// The tenant.
    pub tenant: [u8; 16],
    /// The timeline.
    pub timeline: [u8; 16],
}

impl std::fmt::Display for TimelineKey {
    /// `TENANT/TIMELINE`, 32 lower-case hex digits each.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.tenant {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("/")?;
        for byte in &self.timeline {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A 16-byte id from its 32 hex digits (either case), the form
/// [`TimelineKey`]'s `Display` writes; `None` for anything else (a sign,
/// another length, a non-ASCII character).
pub fn parse_id(hex: &str) -> Option<[u8; 16]> {
    let digits = hex.as_bytes();
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

impl std::str::FromStr for TimelineKey {
    type Err = String;

    /// Reads `TENANT/TIMELINE` (32 hex digits each).
    fn from_str(text: &str) -> Result<TimelineKey, String> {
        let hex = |part: &str| -> Result<[u8; 16], String> {
            parse_id(part).ok_or_else(|| format!("{part}: expected 32 hex digits"))
        };
        let (tenant, timeline) = text
            .split_once('/')
            .ok_or_else(|| format!("{text}: expected TENANT/TIMELINE"))?;
        Ok(TimelineKey {
            tenant: hex(tenant)?,
            timeline: hex(timeline)?,
        })
    }
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The first frame of a connection to a safekeeper that checks tokens:
    /// a signed token (`quire_net::token`) saying who the client speaks
    /// for. Answer: `Ok`, or `Error` and the connection closes.
    Hello {
        /// The token.
        token: String,
    },
    /// Create a timeline whose WAL begins at `wal_start` (a segment start)
    /// for a cluster with `system_id`, kept by `members` (none: the
    /// safekeeper and its configured peers). Answer: `Ok` or `Error`.
    CreateTimeline {
        /// The timeline.
        key: TimelineKey,
        /// Where its WAL begins.
        wal_start: Lsn,
        /// WAL segment size.
        segment_size: u32,
        /// The Postgres cluster's system identifier.
        system_id: u64,
        /// The timeline's member set (at most `MEMBERS_MAX`).
        members: Vec<Member>,
    },
    /// Vote in `term`. Answer: `VoteReply`.
    Vote {
        /// The timeline.
        key: TimelineKey,
        /// The proposed term.
        term: Term,
    },
    /// `term` was won with `history`; the compute streams from `compute`
    /// (`host:port`). Answer: `Flushed` or `Refused`.
    Elected {
        /// The timeline.
        key: TimelineKey,
        /// The elected term.
        term: Term,
        /// Its history.
        history: TermHistory,
        /// Where the term's compute takes replication connections.
        compute: String,
    },
    /// Peer recovery: `[from, to)` of a log with `history`. Answer: `Wal`
    /// or `Refused`.
    Fetch {
        /// The timeline.
        key: TimelineKey,
        /// The requester's term.
        term: Term,
        /// The requester's history.
        history: TermHistory,
        /// First LSN wanted.
        from: Lsn,
        /// End wanted.
        to: Lsn,
    },
    /// A peer's flush LSN in its term (no answer).
    PeerFlush {
        /// The timeline.
        key: TimelineKey,
        /// The peer's id.
        peer: u32,
        /// Its term.
        term: Term,
        /// Its flush LSN.
        flush: Lsn,
    },
    /// The timeline's state. Answer: `Status`.
    GetStatus {
        /// The timeline.
        key: TimelineKey,
    },
    /// Stream committed WAL from `from` (a record start): answers are
    /// `Wal` and `Commit` frames until the connection closes; the client
    /// sends `Persisted` as it makes WAL durable.
    StreamWal {
        /// The timeline.
        key: TimelineKey,
        /// Where to start.
        from: Lsn,
    },
    /// The pageserver has made the timeline's WAL below `lsn` durable in
    /// its layers: WAL below it may go (once every safekeeper has it).
    /// Answer: `Ok`.
    ReportPersisted {
        /// The timeline.
        key: TimelineKey,
        /// The pageserver's disk-consistent LSN.
        lsn: Lsn,
    },
    /// The answer to a vote.
    VoteReply {
        /// The safekeeper's term.
        term: Term,
        /// Whether the vote was granted.
        granted: bool,
        /// Its flush LSN.
        flush: Lsn,
        /// Its history.
        history: TermHistory,
    },
    /// Flushed WAL in `term`.
    Flushed {
        /// The term.
        term: Term,
        /// Flush LSN.
        flush: Lsn,
        /// Commit LSN.
        commit: Lsn,
    },
    /// A request refused in `term`.
    Refused {
        /// The safekeeper's term.
        term: Term,
        /// Why.
        why: String,
    },
    /// WAL bytes starting at `begin`.
    Wal {
        /// LSN of the first byte.
        begin: Lsn,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The commit LSN moved.
    Commit {
        /// The new commit LSN.
        lsn: Lsn,
    },
    /// The pageserver has made WAL below `lsn` durable in its layers.
    Persisted {
        /// The LSN.
        lsn: Lsn,
    },
    /// A timeline's state.
    Status {
        /// Term.
        term: Term,
        /// Flush LSN.
        flush: Lsn,
        /// Commit LSN.
        commit: Lsn,
        /// History.
        history: TermHistory,
        /// Damage found and repaired.
        health: StorageHealth,
    },
    /// Done.
    Ok,
    /// A request failed.
    Error {
        /// Why.
        message: String,
    },
}

impl From<Response> for Message {
    /// An acceptor's answer as it goes on the wire.
    fn from(response: Response) -> Message {
        match response {
            Response::Vote {
                term,
                granted,
                flush,
                history,
            } => Message::VoteReply {
                term,
                granted,
                flush,
                history,
            },
            Response::Flushed {
                term,
                flush,
                commit,
            } => Message::Flushed {
                term,
                flush,
                commit,
            },
            Response::Refused { term, why } => Message::Refused {
                term,
                why: why.into(),
            },
        }
    }
}

impl Message {
    /// An acceptor's answer read back from the wire (`None` for any other
    /// message); a refusal's reason stays on the wire.
    pub fn into_response(self) -> Option<Response> {
        Some(match self {
            Message::VoteReply {
                term,
                granted,
                flush,
                history,
            } => Response::Vote {
                term,
                granted,
                flush,
                history,
            },
            Message::Flushed {
                term,
                flush,
                commit,
            } => Response::Flushed {
                term,
                flush,
                commit,
            },
            Message::Refused { term, .. } => Response::Refused {
                term,
                why: "refused",
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Also the sample values `codec`'s tests encode.
    use super::*;
    use crate::history::TermEntry;

    pub(super) fn key() -> TimelineKey {
        TimelineKey {
            tenant: [1; 16],
            timeline: [2; 16],
        }
    }

    pub(super) fn history() -> TermHistory {
        TermHistory(vec![
            TermEntry {
                term: 1,
                start: Lsn(0x100),
            },
            TermEntry {
                term: 4,
                start: Lsn(0x900),
            },
        ])
    }

    #[test]
    fn acceptor_answers_cross_the_wire_unchanged() {
        let answers = [
            Response::Vote {
                term: 9,
                granted: true,
                flush: Lsn(0x950),
                history: history(),
            },
            Response::Flushed {
                term: 4,
                flush: Lsn(0x950),
                commit: Lsn(0x940),
            },
            Response::Refused {
                term: 9,
                why: "refused",
            },
        ];
        for answer in answers {
            let bytes = Message::from(answer.clone()).encode();
            let (message, _) = Message::decode(&bytes).unwrap().unwrap();
            assert_eq!(message.into_response(), Some(answer));
        }
        assert_eq!(Message::Ok.into_response(), None);
    }

    #[test]
    fn timeline_keys_print_and_parse() {
        let text = key().to_string();
        assert_eq!(text, format!("{}/{}", "01".repeat(16), "02".repeat(16)));
        assert_eq!(text.parse::<TimelineKey>(), Ok(key()));
        assert!("01/02".parse::<TimelineKey>().is_err());
        assert!(
            format!("{}/{}", "zz".repeat(16), "02".repeat(16))
                .parse::<TimelineKey>()
                .is_err()
        );
        assert!(
            format!("{}/{}", "é".repeat(16), "02".repeat(16))
                .parse::<TimelineKey>()
                .is_err()
        );
        // `from_str_radix` alone takes a sign: "+1" is not two hex digits.
        assert!(
            format!("{}/{}", "+1".repeat(16), "02".repeat(16))
                .parse::<TimelineKey>()
                .is_err()
        );
        assert_eq!(parse_id(&"aB".repeat(16)), Some([0xAB; 16]));
        assert_eq!(parse_id(&"0".repeat(31)), None);
    }
}
