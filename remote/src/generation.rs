//! Generations (`docs/format/remote-storage.md`, "The generation object"):
//! the generation object's codec, [`ClaimGeneration`] (the next number,
//! taken with a create-if-absent put, so that exactly one claimer wins it)
//! and [`CheckGeneration`] (has a newer one been claimed?).

use std::sync::Arc;

use bytes::Bytes;

use crate::error::RemoteError;
use crate::names::{Generation, TenantShard};
use crate::ops::{List, PutBytes, WriteMode};
use crate::service::{Context, Operation};

/// `b"QRGENER1"`.
const MAGIC: [u8; 8] = *b"QRGENER1";
/// The format version written and accepted.
const VERSION: u32 = 1;
/// The longest holder name.
pub const HOLDER_MAX: usize = 255;
/// Claims lost to other claimers before a claim gives up.
pub const CLAIM_CONFLICTS_MAX: u32 = 64;

/// What a generation object holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationRecord {
    /// The generation (the object's name says the same).
    pub generation: Generation,
    /// Who claimed it, for operators.
    pub holder: String,
}

impl GenerationRecord {
    /// The object's bytes; `None` if the holder is longer than
    /// [`HOLDER_MAX`].
    pub fn encode(&self) -> Option<Vec<u8>> {
        let holder = self.holder.as_bytes();
        let length = u16::try_from(holder.len())
            .ok()
            .filter(|&n| usize::from(n) <= HOLDER_MAX)?;
        let mut bytes = Vec::with_capacity(22 + holder.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.generation.get().to_le_bytes());
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(holder);
        let crc = quire_checksum::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Some(bytes)
    }

    /// Parses and checks a generation object's bytes.
    pub fn decode(bytes: &[u8]) -> Result<GenerationRecord, &'static str> {
        let (body, crc) = bytes.split_last_chunk::<4>().ok_or("short")?;
        if quire_checksum::crc32c(body) != u32::from_le_bytes(*crc) {
            return Err("checksum mismatch");
        }
        let (magic, rest) = body.split_first_chunk::<8>().ok_or("short")?;
        if *magic != MAGIC {
            return Err("bad magic");
        }
        let (version, rest) = rest.split_first_chunk::<4>().ok_or("short")?;
        if u32::from_le_bytes(*version) != VERSION {
            return Err("unknown version");
        }
        let (generation, rest) = rest.split_first_chunk::<4>().ok_or("short")?;
        let generation = Generation::new(u32::from_le_bytes(*generation)).ok_or("generation 0")?;
        let (length, holder) = rest.split_first_chunk::<2>().ok_or("short")?;
        let length = usize::from(u16::from_le_bytes(*length));
        if length > HOLDER_MAX || length != holder.len() {
            return Err("holder length does not match");
        }
        let holder = std::str::from_utf8(holder).map_err(|_| "holder not UTF-8")?;
        Ok(GenerationRecord {
            generation,
            holder: holder.to_owned(),
        })
    }
}

/// The generations claimed for `shard`, from a listing of its generation
/// folder. A name that is not a generation is refused: it could be a
/// higher one spelled otherwise, and ignoring it could hand out a number
/// twice.
async fn claimed(ctx: &Arc<Context>, shard: &TenantShard) -> Result<Vec<Generation>, RemoteError> {
    let folder = shard.generations_prefix();
    let listed = List {
        prefix: folder.clone(),
    }
    .run(ctx.clone())
    .await?;
    listed
        .iter()
        .map(|object| {
            let name = object.key.strip_prefix(&folder).unwrap_or(&object.key);
            Generation::parse_hex(name).ok_or_else(|| RemoteError::Corrupt {
                key: object.key.clone(),
                what: "not a generation object's name".to_owned(),
            })
        })
        .collect()
}

/// Claims the next generation of a tenant shard: one past the highest
/// claimed (or the first), created with a create-if-absent put; a number
/// another claimer took first is skipped. Answers the generation won.
pub struct ClaimGeneration {
    /// The tenant shard.
    pub shard: TenantShard,
    /// Who claims (a pageserver's name), at most [`HOLDER_MAX`] bytes.
    pub holder: String,
}

impl Operation for ClaimGeneration {
    type Output = Generation;
    const NAME: &'static str = "claim_generation";

    async fn run(self, ctx: Arc<Context>) -> Result<Generation, RemoteError> {
        let claim_error = |what: String| RemoteError::Claim {
            shard: self.shard.prefix(),
            what,
        };
        for _ in 0..CLAIM_CONFLICTS_MAX {
            let highest = claimed(&ctx, &self.shard).await?.into_iter().max();
            let next = match highest {
                None => Generation::FIRST,
                Some(highest) => highest
                    .next()
                    .ok_or_else(|| claim_error("every generation number is taken".to_owned()))?,
            };
            let record = GenerationRecord {
                generation: next,
                holder: self.holder.clone(),
            };
            let bytes = record
                .encode()
                .ok_or_else(|| claim_error(format!("holder longer than {HOLDER_MAX} bytes")))?;
            let put = PutBytes {
                key: self.shard.generation_key(next),
                bytes: Bytes::from(bytes),
                mode: WriteMode::CreateIfAbsent,
            };
            match put.run(ctx.clone()).await {
                Ok(()) => return Ok(next),
                Err(RemoteError::AlreadyExists { .. }) => {
                    ctx.metrics.retries.with_label_values(&[Self::NAME]).inc();
                }
                Err(error) => return Err(error),
            }
        }
        Err(claim_error(format!(
            "lost {CLAIM_CONFLICTS_MAX} claims in a row to other claimers"
        )))
    }
}

/// Whether a generation is still the newest of its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerationStatus {
    /// No newer generation has been claimed.
    Current,
    /// This newer one (the highest) has.
    Superseded(Generation),
}

/// Checks whether `generation` is still current: no higher generation
/// object of the shard exists.
pub struct CheckGeneration {
    /// The tenant shard.
    pub shard: TenantShard,
    /// The generation held.
    pub generation: Generation,
}

impl Operation for CheckGeneration {
    type Output = GenerationStatus;
    const NAME: &'static str = "check_generation";

    async fn run(self, ctx: Arc<Context>) -> Result<GenerationStatus, RemoteError> {
        let highest = claimed(&ctx, &self.shard).await?.into_iter().max();
        Ok(match highest {
            Some(highest) if highest > self.generation => GenerationStatus::Superseded(highest),
            _ => GenerationStatus::Current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let record = GenerationRecord {
            generation: Generation::new(7).unwrap(),
            holder: "pageserver-1".to_owned(),
        };
        let bytes = record.encode().unwrap();
        assert_eq!(GenerationRecord::decode(&bytes).unwrap(), record);
        for len in 0..bytes.len() {
            assert!(
                GenerationRecord::decode(&bytes[..len]).is_err(),
                "cut at {len}"
            );
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            assert!(GenerationRecord::decode(&flipped).is_err(), "flip at {at}");
        }
        let long = GenerationRecord {
            holder: "x".repeat(HOLDER_MAX + 1),
            ..record
        };
        assert_eq!(long.encode(), None);
    }
}
