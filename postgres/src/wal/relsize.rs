//! The compute's relation-size message: a logical message (`RM_LOGICALMSG`,
//! `XLOG_LOGICAL_MESSAGE`) whose prefix is `quire.relsize`, written by
//! `quire_smgr` before it forgets the size of a fork it extended locally
//! (Postgres extends with zero pages before any record names them), as
//! [`Effect::RelSizeAtLeast`]. Layout in `docs/format/keys.md`.
//!
//! The record's main data is `xl_logical_message` (64-bit layout: `dbId`
//! u32 at 0, `transactional` u8 at 4, `prefix_size` u64 at 8,
//! `message_size` u64 at 16), then the NUL-terminated prefix, then the
//! payload. The payload is 20 bytes, little-endian: `spcOid`, `dbOid`,
//! `relNumber` (u32 each), the fork (u8, 0..=3), 3 zero bytes, `nblocks`
//! (u32). Any other logical message (and main data too short to hold a
//! prefix) yields nothing; one with this prefix that breaks the layout
//! yields [`Effect::RelSizeMessageMalformed`], which storage counts and
//! ignores.

use crate::types::{ForkNumber, RelFileLocator, RelTag};
use crate::wal::effects::Effect;

/// `XLOG_LOGICAL_MESSAGE`.
pub const XLOG_LOGICAL_MESSAGE: u8 = 0x00;

/// The prefix, as the record holds it (NUL included).
pub const RELSIZE_PREFIX: &[u8] = b"quire.relsize\0";

/// `SizeOfLogicalMessage`: the header before the prefix.
pub const LOGICAL_MESSAGE_HEADER_BYTES: usize = 24;

/// The payload's length.
pub const RELSIZE_PAYLOAD_BYTES: usize = 20;

/// How a `quire.relsize` message breaks the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelSizeMalformed {
    /// The message is transactional (the compute writes it outside any).
    #[error("a transactional message")]
    Transactional,
    /// The payload is not 20 bytes (as declared, as present).
    #[error("a payload of {declared} bytes declared, {present} present, not 20")]
    Length {
        /// `message_size`.
        declared: u64,
        /// Bytes after the prefix.
        present: usize,
    },
    /// The fork number is above 3.
    #[error("fork number {0}")]
    Fork(u8),
    /// The 3 bytes after the fork are not zero.
    #[error("padding {0:02X?} after the fork, not zero")]
    Padding([u8; 3]),
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The effects of a logical message record (`info` is the rmgr's part of
/// `xl_info`, `data` the main data): none unless it is `quire.relsize`.
pub fn logical_message_effects(info: u8, data: &[u8]) -> Vec<Effect> {
    if info != XLOG_LOGICAL_MESSAGE {
        return Vec::new();
    }
    let prefix_end = LOGICAL_MESSAGE_HEADER_BYTES + RELSIZE_PREFIX.len();
    let ours = u64_at(data, 8) == Some(RELSIZE_PREFIX.len() as u64)
        && data.get(LOGICAL_MESSAGE_HEADER_BYTES..prefix_end) == Some(RELSIZE_PREFIX);
    if !ours {
        return Vec::new();
    }
    let effect = match relsize(data, prefix_end) {
        Ok((rel, blocks)) => Effect::RelSizeAtLeast { rel, blocks },
        Err(why) => Effect::RelSizeMessageMalformed(why),
    };
    vec![effect]
}

/// The fork and size a `quire.relsize` message (its prefix checked, the
/// payload from `payload_at`) states.
fn relsize(data: &[u8], payload_at: usize) -> Result<(RelTag, u32), RelSizeMalformed> {
    if data.get(4).is_some_and(|&t| t != 0) {
        return Err(RelSizeMalformed::Transactional);
    }
    let declared = u64_at(data, 16).unwrap_or(0);
    let payload = data.get(payload_at..).unwrap_or_default();
    let length = RelSizeMalformed::Length {
        declared,
        present: payload.len(),
    };
    if declared != RELSIZE_PAYLOAD_BYTES as u64 || payload.len() != RELSIZE_PAYLOAD_BYTES {
        return Err(length);
    }
    let (Some(spc_oid), Some(db_oid), Some(rel_number), Some(blocks)) = (
        u32_at(payload, 0),
        u32_at(payload, 4),
        u32_at(payload, 8),
        u32_at(payload, 16),
    ) else {
        return Err(length);
    };
    let fork_number = payload.get(12).copied().unwrap_or(u8::MAX);
    let fork = ForkNumber::from_u8(fork_number).ok_or(RelSizeMalformed::Fork(fork_number))?;
    let padding = [
        payload.get(13).copied().unwrap_or(0),
        payload.get(14).copied().unwrap_or(0),
        payload.get(15).copied().unwrap_or(0),
    ];
    if padding != [0; 3] {
        return Err(RelSizeMalformed::Padding(padding));
    }
    let rel = RelFileLocator {
        spc_oid,
        db_oid,
        rel_number,
    };
    Ok((RelTag::new(rel, fork), blocks))
}

/// The payload a compute writes for `rel` of at least `blocks` blocks.
pub fn relsize_payload(rel: RelTag, blocks: u32) -> [u8; RELSIZE_PAYLOAD_BYTES] {
    let mut payload = [0u8; RELSIZE_PAYLOAD_BYTES];
    payload[0..4].copy_from_slice(&rel.spc_oid.to_le_bytes());
    payload[4..8].copy_from_slice(&rel.db_oid.to_le_bytes());
    payload[8..12].copy_from_slice(&rel.rel_number.to_le_bytes());
    payload[12] = rel.fork as u8;
    payload[16..20].copy_from_slice(&blocks.to_le_bytes());
    payload
}

/// A logical message's main data as `LogLogicalMessage` lays it out
/// (`prefix` without its NUL), for tests and tools.
pub fn logical_message_main_data(
    db_oid: u32,
    transactional: bool,
    prefix: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut data =
        Vec::with_capacity(LOGICAL_MESSAGE_HEADER_BYTES + prefix.len() + 1 + payload.len());
    data.extend_from_slice(&db_oid.to_le_bytes());
    data.push(u8::from(transactional));
    data.extend_from_slice(&[0; 3]);
    data.extend_from_slice(&(prefix.len() as u64 + 1).to_le_bytes());
    data.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    data.extend_from_slice(prefix);
    data.push(0);
    data.extend_from_slice(payload);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    const REL: RelTag = RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16_390,
        fork: ForkNumber::VisibilityMap,
    };

    fn check(data: &[u8], expected: &[Effect]) {
        assert_eq!(
            logical_message_effects(XLOG_LOGICAL_MESSAGE, data),
            expected
        );
    }

    fn message(transactional: bool, payload: &[u8]) -> Vec<u8> {
        logical_message_main_data(5, transactional, b"quire.relsize", payload)
    }

    #[test]
    fn a_relsize_message_states_its_fork_and_size() {
        let payload = relsize_payload(REL, 1_234_567);
        assert_eq!(
            payload,
            [
                0x7F, 0x06, 0, 0, 5, 0, 0, 0, 0x06, 0x40, 0, 0, 2, 0, 0, 0, 0x87, 0xD6, 0x12, 0
            ]
        );
        check(
            &message(false, &payload),
            &[Effect::RelSizeAtLeast {
                rel: REL,
                blocks: 1_234_567,
            }],
        );
        // Every fork, and the largest size.
        for fork in 0..4 {
            let rel = RelTag {
                fork: ForkNumber::from_u8(fork).unwrap_or(ForkNumber::Main),
                ..REL
            };
            check(
                &message(false, &relsize_payload(rel, u32::MAX)),
                &[Effect::RelSizeAtLeast {
                    rel,
                    blocks: u32::MAX,
                }],
            );
        }
    }

    #[test]
    fn a_relsize_message_off_the_layout_is_malformed() {
        let good = relsize_payload(REL, 10);
        check(
            &message(true, &good),
            &[Effect::RelSizeMessageMalformed(
                RelSizeMalformed::Transactional,
            )],
        );
        for len in [0, 19, 21, 40] {
            let mut payload = good.to_vec();
            payload.resize(len, 0);
            check(
                &message(false, &payload),
                &[Effect::RelSizeMessageMalformed(RelSizeMalformed::Length {
                    declared: len as u64,
                    present: len,
                })],
            );
        }
        // message_size disagrees with the bytes present.
        let mut data = message(false, &good);
        data[16] = 21;
        check(
            &data,
            &[Effect::RelSizeMessageMalformed(RelSizeMalformed::Length {
                declared: 21,
                present: 20,
            })],
        );
        let mut payload = good;
        payload[12] = 4;
        check(
            &message(false, &payload),
            &[Effect::RelSizeMessageMalformed(RelSizeMalformed::Fork(4))],
        );
        for at in 13..16 {
            let mut payload = good;
            payload[at] = 1;
            let mut padding = [0; 3];
            padding[at - 13] = 1;
            check(
                &message(false, &payload),
                &[Effect::RelSizeMessageMalformed(RelSizeMalformed::Padding(
                    padding,
                ))],
            );
        }
    }

    #[test]
    fn other_logical_messages_and_other_records_yield_nothing() {
        let payload = relsize_payload(REL, 10);
        for prefix in [
            &b"quire"[..],
            b"quire.relsiz",
            b"quire.relsize2",
            b"Quire.relsize",
            b"",
        ] {
            check(&logical_message_main_data(5, false, prefix, &payload), &[]);
        }
        // Main data too short for a header or the prefix.
        let whole = message(false, &payload);
        for len in [0, 8, 23, 24, 37] {
            check(&whole[..len], &[]);
        }
        // A prefix size that is not the prefix's.
        let mut data = whole.clone();
        data[8] = 15;
        check(&data, &[]);
        // Another record type of the resource manager.
        assert_eq!(logical_message_effects(0x10, &whole), Vec::new());
    }
}
