//! Frame bytes of the safekeeper protocol: `Message::encode` and
//! `Message::decode`, with the reader and writer of the body's fields.
//! Layout as in the parent module's doc and docs/safekeeper-protocol.md.

use quire_postgres::Lsn;
use quire_postgres::types::is_valid_wal_segment_size;

use super::{MAX_FRAME, Message, StorageHealth, TimelineKey};
use crate::history::{TermEntry, TermHistory};
use crate::membership::{ADDRESS_BYTES_MAX, MEMBERS_MAX, Member, NodeId};

/// A frame that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An unknown kind byte.
    #[error("unknown frame kind 0x{0:02X}")]
    UnknownKind(u8),
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    /// A body shorter or longer than its layout.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// A WAL segment size Postgres does not accept (a power of two from
    /// 1 MiB to 1 GiB).
    #[error("invalid WAL segment size {0}")]
    InvalidSegmentSize(u32),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn key(&mut self, key: &TimelineKey) {
        self.0.extend_from_slice(&key.tenant);
        self.0.extend_from_slice(&key.timeline);
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    fn history(&mut self, history: &TermHistory) {
        self.u32(u32::try_from(history.0.len()).unwrap_or(u32::MAX));
        for entry in &history.0 {
            self.u64(entry.term);
            self.u64(entry.start.0);
        }
    }
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    what: &'static str,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(FrameError::Malformed(self.what))?;
        let bytes = self
            .body
            .get(self.at..end)
            .ok_or(FrameError::Malformed(self.what))?;
        self.at = end;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut raw = [0u8; N];
        raw.copy_from_slice(self.take(N)?);
        Ok(raw)
    }
    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(FrameError::Malformed(self.what)),
        }
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_le_bytes)
    }
    fn segment_size(&mut self) -> Result<u32, FrameError> {
        let size = self.u32()?;
        if is_valid_wal_segment_size(size) {
            Ok(size)
        } else {
            Err(FrameError::InvalidSegmentSize(size))
        }
    }
    fn health(&mut self) -> Result<StorageHealth, FrameError> {
        Ok(StorageHealth {
            damaged_from: self.lsn()?,
            damaged_until: self.lsn()?,
            wal_repairs: self.u64()?,
            wal_repaired_bytes: self.u64()?,
            wal_repair_refusals: self.u64()?,
            control_repairs: self.u64()?,
        })
    }

    fn lsn(&mut self) -> Result<Lsn, FrameError> {
        self.u64().map(Lsn)
    }
    fn key(&mut self) -> Result<TimelineKey, FrameError> {
        Ok(TimelineKey {
            tenant: self.array()?,
            timeline: self.array()?,
        })
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FrameError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
    fn string(&mut self) -> Result<String, FrameError> {
        String::from_utf8(self.bytes()?).map_err(|_| FrameError::Malformed(self.what))
    }
    /// A member list: `count: u32` (at most `MEMBERS_MAX`), then per member
    /// `id: u32` and its address (a string of at most `ADDRESS_BYTES_MAX`
    /// bytes). Whether the set is valid is the server's to say.
    fn members(&mut self) -> Result<Vec<Member>, FrameError> {
        let count = self.u32()? as usize;
        if count > MEMBERS_MAX {
            return Err(FrameError::Malformed(self.what));
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let id = NodeId(self.u32()?);
            let address = self.string()?;
            if address.len() > ADDRESS_BYTES_MAX {
                return Err(FrameError::Malformed(self.what));
            }
            members.push(Member { id, address });
        }
        Ok(members)
    }
    fn history(&mut self) -> Result<TermHistory, FrameError> {
        let count = self.u32()? as usize;
        if count > self.body.len().saturating_sub(self.at) / 16 {
            return Err(FrameError::Malformed(self.what));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(TermEntry {
                term: self.u64()?,
                start: self.lsn()?,
            });
        }
        let history = TermHistory(entries);
        history
            .validate()
            .map_err(|_| FrameError::Malformed(self.what))?;
        Ok(history)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.at == self.body.len() {
            Ok(())
        } else {
            Err(FrameError::Malformed(self.what))
        }
    }
}

impl Message {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        let kind = self
            .encode_request(&mut w)
            .unwrap_or_else(|| self.encode_reply(&mut w));
        let body = w.0;
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(kind);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// A request's body into `w`, and its kind; `None` for a reply.
    fn encode_request(&self, w: &mut Writer) -> Option<u8> {
        Some(match self {
            Message::Hello { token } => {
                w.bytes(token.as_bytes());
                b'H'
            }
            Message::CreateTimeline {
                key,
                wal_start,
                segment_size,
                system_id,
                members,
            } => {
                w.key(key);
                w.u64(wal_start.0);
                w.u32(*segment_size);
                w.u64(*system_id);
                w.u32(u32::try_from(members.len()).unwrap_or(u32::MAX));
                for member in members {
                    w.u32(member.id.0);
                    w.bytes(member.address.as_bytes());
                }
                b'C'
            }
            Message::Vote { key, term } => {
                w.key(key);
                w.u64(*term);
                b'V'
            }
            Message::Elected {
                key,
                term,
                history,
                compute,
            } => {
                w.key(key);
                w.u64(*term);
                w.history(history);
                w.bytes(compute.as_bytes());
                b'E'
            }
            Message::Fetch {
                key,
                term,
                history,
                from,
                to,
            } => {
                w.key(key);
                w.u64(*term);
                w.history(history);
                w.u64(from.0);
                w.u64(to.0);
                b'F'
            }
            Message::PeerFlush {
                key,
                peer,
                term,
                flush,
            } => {
                w.key(key);
                w.u32(*peer);
                w.u64(*term);
                w.u64(flush.0);
                b'P'
            }
            Message::GetStatus { key } => {
                w.key(key);
                b'S'
            }
            Message::StreamWal { key, from } => {
                w.key(key);
                w.u64(from.0);
                b'R'
            }
            Message::ReportPersisted { key, lsn } => {
                w.key(key);
                w.u64(lsn.0);
                b'D'
            }
            _ => return None,
        })
    }

    /// A reply's body into `w`, and its kind.
    fn encode_reply(&self, w: &mut Writer) -> u8 {
        match self {
            Message::VoteReply {
                term,
                granted,
                flush,
                history,
            } => {
                w.u64(*term);
                w.u8(u8::from(*granted));
                w.u64(flush.0);
                w.history(history);
                b'v'
            }
            Message::Flushed {
                term,
                flush,
                commit,
            } => {
                w.u64(*term);
                w.u64(flush.0);
                w.u64(commit.0);
                b'f'
            }
            Message::Refused { term, why } => {
                w.u64(*term);
                w.bytes(why.as_bytes());
                b'x'
            }
            Message::Wal { begin, bytes } => {
                w.u64(begin.0);
                w.0.extend_from_slice(bytes);
                b'w'
            }
            Message::Commit { lsn } => {
                w.u64(lsn.0);
                b'c'
            }
            Message::Persisted { lsn } => {
                w.u64(lsn.0);
                b'p'
            }
            Message::Status {
                term,
                flush,
                commit,
                history,
                health,
            } => {
                w.u64(*term);
                w.u64(flush.0);
                w.u64(commit.0);
                w.history(history);
                for value in [
                    health.damaged_from.0,
                    health.damaged_until.0,
                    health.wal_repairs,
                    health.wal_repaired_bytes,
                    health.wal_repair_refusals,
                    health.control_repairs,
                ] {
                    w.u64(value);
                }
                b's'
            }
            Message::Ok => b'k',
            Message::Error { message } => {
                w.bytes(message.as_bytes());
                b'e'
            }
            _ => unreachable!("requests are encoded by encode_request"),
        }
    }

    /// Splits one frame off the front of `buf`: `Ok(None)` until it is
    /// whole; otherwise the message and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
        let Some(&[kind, l0, l1, l2, l3]) = buf.first_chunk::<5>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        let Some(body) = buf.get(5..5 + len) else {
            return Ok(None);
        };
        let mut r = Reader {
            body,
            at: 0,
            what: kind_name(kind).ok_or(FrameError::UnknownKind(kind))?,
        };
        let message = match kind {
            b'H' => Message::Hello { token: r.string()? },
            b'C' => Message::CreateTimeline {
                key: r.key()?,
                wal_start: r.lsn()?,
                segment_size: r.segment_size()?,
                system_id: r.u64()?,
                members: r.members()?,
            },
            b'V' => Message::Vote {
                key: r.key()?,
                term: r.u64()?,
            },
            b'E' => Message::Elected {
                key: r.key()?,
                term: r.u64()?,
                history: r.history()?,
                compute: r.string()?,
            },
            b'F' => Message::Fetch {
                key: r.key()?,
                term: r.u64()?,
                history: r.history()?,
                from: r.lsn()?,
                to: r.lsn()?,
            },
            b'P' => Message::PeerFlush {
                key: r.key()?,
                peer: r.u32()?,
                term: r.u64()?,
                flush: r.lsn()?,
            },
            b'S' => Message::GetStatus { key: r.key()? },
            b'R' => Message::StreamWal {
                key: r.key()?,
                from: r.lsn()?,
            },
            b'D' => Message::ReportPersisted {
                key: r.key()?,
                lsn: r.lsn()?,
            },
            b'v' => Message::VoteReply {
                term: r.u64()?,
                granted: r.bool()?,
                flush: r.lsn()?,
                history: r.history()?,
            },
            b'f' => Message::Flushed {
                term: r.u64()?,
                flush: r.lsn()?,
                commit: r.lsn()?,
            },
            b'x' => Message::Refused {
                term: r.u64()?,
                why: r.string()?,
            },
            b'w' => {
                let begin = r.lsn()?;
                let rest = r.body.len().saturating_sub(r.at);
                Message::Wal {
                    begin,
                    bytes: r.take(rest)?.to_vec(),
                }
            }
            b'c' => Message::Commit { lsn: r.lsn()? },
            b'p' => Message::Persisted { lsn: r.lsn()? },
            b's' => Message::Status {
                term: r.u64()?,
                flush: r.lsn()?,
                commit: r.lsn()?,
                history: r.history()?,
                health: r.health()?,
            },
            b'k' => Message::Ok,
            _ => Message::Error {
                message: r.string()?,
            },
        };
        r.end()?;
        Ok(Some((message, 5 + len)))
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        b'H' => "hello",
        b'C' => "create timeline",
        b'V' => "vote",
        b'E' => "elected",
        b'F' => "fetch",
        b'P' => "peer flush",
        b'S' => "get status",
        b'R' => "stream WAL",
        b'D' => "report persisted",
        b'v' => "vote reply",
        b'f' => "flushed",
        b'x' => "refused",
        b'w' => "WAL",
        b'c' => "commit",
        b'p' => "persisted",
        b's' => "status",
        b'k' => "ok",
        b'e' => "error",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{history, key};
    use super::*;

    fn every_message() -> Vec<Message> {
        vec![
            Message::Hello {
                token: "eyJhbGciOiJFZERTQSJ9.e30.c2ln".into(),
            },
            Message::CreateTimeline {
                key: key(),
                wal_start: Lsn(1 << 24),
                segment_size: 1 << 24,
                system_id: 77,
                members: (1..=3)
                    .map(|id| Member {
                        id: NodeId(id),
                        address: format!("10.0.0.{id}:5454"),
                    })
                    .collect(),
            },
            Message::Vote {
                key: key(),
                term: 9,
            },
            Message::Elected {
                key: key(),
                term: 4,
                history: history(),
                compute: "127.0.0.1:5432".into(),
            },
            Message::Fetch {
                key: key(),
                term: 4,
                history: history(),
                from: Lsn(0x100),
                to: Lsn(0x900),
            },
            Message::PeerFlush {
                key: key(),
                peer: 2,
                term: 4,
                flush: Lsn(0x950),
            },
            Message::GetStatus { key: key() },
            Message::StreamWal {
                key: key(),
                from: Lsn(0x100),
            },
            Message::VoteReply {
                term: 9,
                granted: true,
                flush: Lsn(0x950),
                history: history(),
            },
            Message::Flushed {
                term: 4,
                flush: Lsn(0x950),
                commit: Lsn(0x940),
            },
            Message::Refused {
                term: 9,
                why: "older term".into(),
            },
            Message::Wal {
                begin: Lsn(0x900),
                bytes: vec![1, 2, 3],
            },
            Message::Commit { lsn: Lsn(0x940) },
            Message::Persisted { lsn: Lsn(0x800) },
            Message::Status {
                term: 4,
                flush: Lsn(0x950),
                commit: Lsn(0x940),
                history: history(),
                health: StorageHealth {
                    damaged_from: Lsn(0x900),
                    damaged_until: Lsn(0x960),
                    wal_repairs: 2,
                    wal_repaired_bytes: 4096,
                    wal_repair_refusals: 1,
                    control_repairs: 3,
                },
            },
            Message::Ok,
            Message::Error {
                message: "no such timeline".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_waits_when_partial() {
        for message in every_message() {
            let bytes = message.encode();
            for cut in 0..bytes.len() {
                assert_eq!(
                    Message::decode(&bytes[..cut]),
                    Ok(None),
                    "{message:?} cut at {cut}"
                );
            }
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            assert_eq!(
                Message::decode(&two),
                Ok(Some((message.clone(), bytes.len())))
            );
        }
    }

    #[test]
    fn damaged_frames_are_errors_never_panics() {
        for message in every_message() {
            let bytes = message.encode();
            for at in 0..bytes.len() {
                for flip in [0x01, 0x80, 0xFF] {
                    let mut damaged = bytes.clone();
                    damaged[at] ^= flip;
                    let _ = Message::decode(&damaged);
                }
            }
        }
        assert_eq!(
            Message::decode(&[b'?', 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(b'?'))
        );
        assert!(matches!(
            Message::decode(&[b'w', 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(FrameError::TooLong(_))
        ));
        // A history whose count claims more entries than the body holds.
        let mut lying = Message::VoteReply {
            term: 1,
            granted: true,
            flush: Lsn(1),
            history: history(),
        }
        .encode();
        lying[5 + 17] = 0xFF;
        assert!(Message::decode(&lying).is_err());
    }

    /// Found by fuzzing: `granted` 0xC5 decoded as true and re-encoded as
    /// 1, so two frames meant one message. Only 0 and 1 are booleans.
    #[test]
    fn booleans_are_zero_or_one() {
        let reply = Message::VoteReply {
            term: 9,
            granted: true,
            flush: Lsn(0x950),
            history: history(),
        };
        let mut bytes = reply.encode();
        assert_eq!(bytes[5 + 8], 1);
        bytes[5 + 8] = 0xC5;
        assert_eq!(
            Message::decode(&bytes),
            Err(FrameError::Malformed("vote reply"))
        );
    }

    #[test]
    fn create_timeline_refuses_segment_sizes_postgres_refuses() {
        let create = |segment_size| Message::CreateTimeline {
            key: key(),
            wal_start: Lsn(1 << 24),
            segment_size,
            system_id: 77,
            members: Vec::new(),
        };
        for size in [
            0,
            1,
            4096,
            (1 << 20) - 1,
            3 << 20,
            1 << 19,
            2 << 30,
            u32::MAX,
        ] {
            assert_eq!(
                Message::decode(&create(size).encode()),
                Err(FrameError::InvalidSegmentSize(size)),
                "segment size {size}"
            );
        }
        for size in [1 << 20, 16 << 20, 1 << 30] {
            let bytes = create(size).encode();
            assert_eq!(
                Message::decode(&bytes),
                Ok(Some((create(size), bytes.len())))
            );
        }
    }

    #[test]
    fn create_timeline_member_lists_are_bounded() {
        let create = |members: Vec<Member>| Message::CreateTimeline {
            key: key(),
            wal_start: Lsn(1 << 24),
            segment_size: 16 << 20,
            system_id: 77,
            members,
        };
        let member = |id: u32, len: usize| Member {
            id: NodeId(id),
            address: "h".repeat(len),
        };
        let too_many = create((0..8).map(|id| member(id, 6)).collect());
        assert_eq!(
            Message::decode(&too_many.encode()),
            Err(FrameError::Malformed("create timeline"))
        );
        let too_long = create(vec![member(1, ADDRESS_BYTES_MAX + 1)]);
        assert_eq!(
            Message::decode(&too_long.encode()),
            Err(FrameError::Malformed("create timeline"))
        );
        let fine = create(vec![member(1, ADDRESS_BYTES_MAX)]);
        let bytes = fine.encode();
        assert_eq!(Message::decode(&bytes), Ok(Some((fine, bytes.len()))));
    }
}
