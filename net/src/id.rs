//! The identities a connection names: which tenant, which timeline, which
//! shard of the tenant.
//!
//! Tenant and timeline ids are 16 opaque bytes, written as 32 lower-case hex
//! digits (parsed in either case). A [`ShardIdentity`] is a shard's number
//! among its tenant's shards and the stripe rule they share
//! (`docs/format/keys.md`, "Sharding"); it can only be built valid, so code
//! holding one never rechecks it.

use std::fmt;
use std::str::FromStr;

use quire_postgres::Key;
use quire_postgres::types::{BlockNo, RelTag};

/// The most shards a tenant may have.
pub const SHARD_COUNT_MAX: u32 = 256;

/// The stripe, in pages, of a tenant created without one: 16 MiB runs of a
/// relation, long enough that a sequential scan reads whole stripes from one
/// shard and short enough that a large relation spreads over every shard.
pub const STRIPE_BLOCKS_DEFAULT: u32 = 2048;

/// Why text is not a tenant or timeline id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} id {text:?}: expected 32 hexadecimal digits")]
pub struct ParseIdError {
    what: &'static str,
    text: String,
}

fn parse_hex16(text: &str, what: &'static str) -> Result<[u8; 16], ParseIdError> {
    let error = || ParseIdError {
        what,
        text: text.chars().take(64).collect(),
    };
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return Err(error());
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let nibble = |c: u8| char::from(c).to_digit(16).ok_or_else(error);
        let (high, low) = match pair {
            [high, low] => (nibble(*high)?, nibble(*low)?),
            _ => return Err(error()),
        };
        // Both digits are below 16, so the byte fits.
        *byte = u8::try_from(high * 16 + low).map_err(|_| error())?;
    }
    Ok(out)
}

fn write_hex16(bytes: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $what:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The raw 16 bytes, as the wire and the files carry them.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            /// 32 lower-case hex digits.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex16(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            /// 32 hex digits, either case.
            fn from_str(text: &str) -> Result<$name, ParseIdError> {
                parse_hex16(text, $what).map($name)
            }
        }
    };
}

id_type!(
    TenantId,
    "tenant",
    "A tenant: one Postgres cluster's storage and its branches."
);
id_type!(
    TimelineId,
    "timeline",
    "A timeline of a tenant: one branch of its history."
);

/// Why shard fields do not make a shard identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardIdentityError {
    /// A shard count of 0 or above [`SHARD_COUNT_MAX`].
    #[error("shard count {0}: expected 1 to {SHARD_COUNT_MAX}")]
    Count(u32),
    /// A shard number not below the count.
    #[error("shard number {number} of {count} shards: expected below the count")]
    Number {
        /// The number given.
        number: u32,
        /// The count given.
        count: u32,
    },
    /// A stripe of zero pages.
    #[error("stripe of 0 pages: expected at least 1")]
    Stripe,
}

/// One shard of a tenant: its number, how many shards the tenant has, and
/// the stripe (in pages) by which relation blocks are dealt out to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardIdentity {
    // Invariant: 1 <= count <= SHARD_COUNT_MAX, number < count, stripe_blocks >= 1.
    number: u32,
    count: u32,
    stripe_blocks: u32,
}

impl ShardIdentity {
    /// Shard `number` of `count`, striped by `stripe_blocks` pages.
    pub fn new(
        number: u32,
        count: u32,
        stripe_blocks: u32,
    ) -> Result<ShardIdentity, ShardIdentityError> {
        if count == 0 || count > SHARD_COUNT_MAX {
            return Err(ShardIdentityError::Count(count));
        }
        if number >= count {
            return Err(ShardIdentityError::Number { number, count });
        }
        if stripe_blocks == 0 {
            return Err(ShardIdentityError::Stripe);
        }
        Ok(ShardIdentity {
            number,
            count,
            stripe_blocks,
        })
    }

    /// The only shard of an unsharded tenant.
    pub fn unsharded() -> ShardIdentity {
        ShardIdentity {
            number: 0,
            count: 1,
            stripe_blocks: STRIPE_BLOCKS_DEFAULT,
        }
    }

    /// This shard's number, below [`ShardIdentity::count`].
    pub fn number(self) -> u32 {
        self.number
    }

    /// How many shards the tenant has.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The stripe, in pages.
    pub fn stripe_blocks(self) -> u32 {
        self.stripe_blocks
    }

    /// The shard number that owns `key` under this tenant's stripe rule.
    pub fn owner_of(self, key: &Key) -> u32 {
        key.shard(self.count, self.stripe_blocks)
    }

    /// The shard number that owns block `block` of `rel`.
    pub fn owner_of_block(self, rel: RelTag, block: BlockNo) -> u32 {
        self.owner_of(&Key::rel_block(rel, block))
    }

    /// Whether this shard owns `key`.
    pub fn owns(self, key: &Key) -> bool {
        self.owner_of(key) == self.number
    }
}

impl fmt::Display for ShardIdentity {
    /// `NUMBER/COUNT` and the stripe, as logs print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {}/{} (stripe {} pages)",
            self.number, self.count, self.stripe_blocks
        )
    }
}

#[cfg(test)]
mod tests {
    use quire_postgres::types::ForkNumber;

    use super::*;

    fn check_parse(text: &str, expected: Option<[u8; 16]>) {
        let tenant = text.parse::<TenantId>();
        let timeline = text.parse::<TimelineId>();
        assert_eq!(tenant.as_ref().ok().map(|id| id.0), expected, "{text:?}");
        assert_eq!(timeline.as_ref().ok().map(|id| id.0), expected, "{text:?}");
        if let Ok(id) = tenant {
            assert_eq!(
                id.to_string(),
                text.to_ascii_lowercase(),
                "Display of {text:?}"
            );
        }
    }

    #[test]
    fn ids_parse_32_hex_digits_and_print_lower_case() {
        let mut ascending = [0u8; 16];
        for (i, b) in ascending.iter_mut().enumerate() {
            *b = u8::try_from(i * 17).unwrap();
        }
        check_parse("00112233445566778899aabbccddeeff", Some(ascending));
        check_parse("00112233445566778899AABBCCDDEEFF", Some(ascending));
        check_parse("00000000000000000000000000000000", Some([0; 16]));
        check_parse("", None);
        check_parse("00112233445566778899aabbccddeef", None);
        check_parse("00112233445566778899aabbccddeeff0", None);
        check_parse("0011223344556677 899aabbccddeeff", None);
        check_parse("+0112233445566778899aabbccddeeff", None);
        check_parse("g0112233445566778899aabbccddeeff", None);
        // 32 bytes, but not 32 characters: never sliced inside a character.
        check_parse("ééééééééééééééee", None);
    }

    #[test]
    fn a_parse_error_names_what_was_refused() {
        let error = "xyz".parse::<TimelineId>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid timeline id \"xyz\": expected 32 hexadecimal digits"
        );
    }

    fn check_shard(number: u32, count: u32, stripe: u32, expected: Result<(), ShardIdentityError>) {
        let got = ShardIdentity::new(number, count, stripe);
        assert_eq!(
            got.map(|_| ()),
            expected,
            "shard {number}/{count} stripe {stripe}"
        );
        if let Ok(shard) = got {
            assert_eq!(
                (shard.number(), shard.count(), shard.stripe_blocks()),
                (number, count, stripe)
            );
        }
    }

    #[test]
    fn shard_identities_are_built_only_valid() {
        check_shard(0, 1, 1, Ok(()));
        check_shard(3, 4, 2048, Ok(()));
        check_shard(255, 256, u32::MAX, Ok(()));
        check_shard(0, 0, 8, Err(ShardIdentityError::Count(0)));
        check_shard(0, 257, 8, Err(ShardIdentityError::Count(257)));
        check_shard(
            4,
            4,
            8,
            Err(ShardIdentityError::Number {
                number: 4,
                count: 4,
            }),
        );
        check_shard(0, 2, 0, Err(ShardIdentityError::Stripe));
        assert_eq!(
            ShardIdentity::unsharded(),
            ShardIdentity::new(0, 1, STRIPE_BLOCKS_DEFAULT).unwrap()
        );
    }

    #[test]
    fn ownership_follows_the_key_space_stripe_rule() {
        let rel = RelTag {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16_384,
            fork: ForkNumber::Main,
        };
        let shards: Vec<ShardIdentity> = (0..4)
            .map(|n| ShardIdentity::new(n, 4, 256).unwrap())
            .collect();
        for block in [0, 1, 255, 256, 1000, 70_000] {
            let key = Key::rel_block(rel, BlockNo(block));
            let owners: Vec<bool> = shards.iter().map(|s| s.owns(&key)).collect();
            assert_eq!(
                owners.iter().filter(|o| **o).count(),
                1,
                "block {block}: one owner"
            );
            assert_eq!(
                shards[0].owner_of_block(rel, BlockNo(block)),
                key.shard(4, 256)
            );
        }
        assert!(
            shards[0].owns(&Key::rel_size(rel)),
            "non-block keys are shard 0's"
        );
        assert!(!shards[1].owns(&Key::rel_size(rel)));
        assert!(ShardIdentity::unsharded().owns(&Key::rel_block(rel, BlockNo(12_345))));
    }
}
