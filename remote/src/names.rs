//! Object names (`docs/format/remote-storage.md`, "Object names"): the
//! tenant shard, generation and timeline parts, and the keys they make.
//!
//! Pure: strings in, strings out. Names read back from a listing are outside
//! bytes; [`Generation::parse_suffix`] and [`Generation::parse_hex`] accept
//! only the exact spelling [`Generation`]'s `Display` writes, so one object
//! has one name.

use std::fmt;

/// The longest layer file name an object name may carry.
pub const LAYER_NAME_MAX: usize = 255;

/// A generation: the number each attachment of a tenant shard claims
/// (1 up; 0 is never claimed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(u32);

impl Generation {
    /// The first generation of a shard.
    pub const FIRST: Generation = Generation(1);

    /// `value` as a generation; `None` for 0.
    pub fn new(value: u32) -> Option<Generation> {
        (value != 0).then_some(Generation(value))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The generation after this one; `None` past `u32::MAX`.
    pub fn next(self) -> Option<Generation> {
        self.0.checked_add(1).map(Generation)
    }

    /// Parses exactly 8 lower-case hex digits, not all zero.
    pub fn parse_hex(text: &str) -> Option<Generation> {
        if text.len() != 8
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u32::from_str_radix(text, 16).ok().and_then(Generation::new)
    }

    /// Splits `<stem>-g<generation>` into the stem and the generation.
    pub fn parse_suffix(name: &str) -> Option<(&str, Generation)> {
        let (stem, hex) = name.rsplit_once("-g")?;
        Some((stem, Generation::parse_hex(hex)?))
    }
}

impl fmt::Display for Generation {
    /// 8 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A 16-byte tenant or timeline id, written as 32 lower-case hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub [u8; 16]);

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A tenant shard: the unit of attachment and of generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TenantShard {
    /// The tenant.
    pub tenant: Id,
    /// The shard's number, below `count`.
    pub number: u32,
    /// The tenant's shard count (1 for an unsharded tenant).
    pub count: u32,
}

impl TenantShard {
    /// An unsharded tenant (shard 0 of 1).
    pub fn unsharded(tenant: [u8; 16]) -> TenantShard {
        TenantShard {
            tenant: Id(tenant),
            number: 0,
            count: 1,
        }
    }

    /// `tenants/<tenant>-s<number>of<count>`.
    pub fn prefix(&self) -> String {
        format!("tenants/{}-s{}of{}", self.tenant, self.number, self.count)
    }

    /// The folder of the shard's generation objects, with a trailing `/`.
    pub fn generations_prefix(&self) -> String {
        format!("{}/generations/", self.prefix())
    }

    /// The generation object of `generation`.
    pub fn generation_key(&self, generation: Generation) -> String {
        format!("{}{generation}", self.generations_prefix())
    }

    /// The folder of a timeline's objects, with a trailing `/`.
    pub fn timeline_prefix(&self, timeline: Id) -> String {
        format!("{}/timelines/{timeline}/", self.prefix())
    }

    /// The index `generation` writes for `timeline`.
    pub fn index_key(&self, timeline: Id, generation: Generation) -> String {
        format!("{}index-g{generation}", self.timeline_prefix(timeline))
    }

    /// The object holding layer `name` as `generation` uploaded it.
    pub fn layer_key(&self, timeline: Id, name: &LayerFileName, generation: Generation) -> String {
        format!("{}{}-g{generation}", self.timeline_prefix(timeline), name.0)
    }
}

/// The last part of an object name (after the last `/`).
pub fn base_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, base)| base)
}

/// The generation of an index object's name (`index-g<generation>`), or
/// `None` for any other name.
pub fn index_generation(base: &str) -> Option<Generation> {
    match Generation::parse_suffix(base)? {
        ("index", generation) => Some(generation),
        _ => None,
    }
}

/// A layer's local file name, as an object name may carry it: 1 to
/// [`LAYER_NAME_MAX`] bytes of `a-z`, `0-9`, `.`, `_`, `-`, never `index`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerFileName(String);

impl LayerFileName {
    /// Checks `name`; `None` if an object name cannot carry it.
    pub fn new(name: &str) -> Option<LayerFileName> {
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
        (!name.is_empty()
            && name.len() <= LAYER_NAME_MAX
            && name != "index"
            && name.bytes().all(allowed))
        .then(|| LayerFileName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LayerFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_generation(text: &str, expected: Option<u32>) {
        assert_eq!(
            Generation::parse_hex(text).map(Generation::get),
            expected,
            "{text:?}"
        );
    }

    #[test]
    fn generations_parse_only_as_written() {
        check_generation("00000001", Some(1));
        check_generation("ffffffff", Some(u32::MAX));
        check_generation("0000000a", Some(10));
        check_generation("00000000", None);
        check_generation("0000000A", None);
        check_generation("+0000001", None);
        check_generation("0000001", None);
        check_generation("000000001", None);
        check_generation("", None);
        assert_eq!(
            Generation::new(0x2a).map(|g| g.to_string()).as_deref(),
            Some("0000002a")
        );
        assert_eq!(Generation(u32::MAX).next(), None);
    }

    #[test]
    fn names() {
        let shard = TenantShard {
            tenant: Id([0xab; 16]),
            number: 1,
            count: 4,
        };
        let timeline = Id([1; 16]);
        let g = Generation(3);
        let tenant = "ab".repeat(16);
        let tl = "01".repeat(16);
        assert_eq!(
            shard.generation_key(g),
            format!("tenants/{tenant}-s1of4/generations/00000003")
        );
        assert_eq!(
            shard.index_key(timeline, g),
            format!("tenants/{tenant}-s1of4/timelines/{tl}/index-g00000003")
        );
        let layer = LayerFileName::new("delta-00-ff-1-2").unwrap();
        let key = shard.layer_key(timeline, &layer, g);
        assert_eq!(
            key,
            format!("tenants/{tenant}-s1of4/timelines/{tl}/delta-00-ff-1-2-g00000003")
        );
        assert_eq!(
            index_generation(base_name(&shard.index_key(timeline, g))),
            Some(g)
        );
        assert_eq!(index_generation(base_name(&key)), None);
        assert_eq!(
            Generation::parse_suffix(base_name(&key)),
            Some(("delta-00-ff-1-2", g))
        );
    }

    #[test]
    fn layer_names_an_object_can_carry() {
        assert!(LayerFileName::new("image-0a-ff-0000000001000028-0000000001000029").is_some());
        assert!(LayerFileName::new(&"a".repeat(LAYER_NAME_MAX)).is_some());
        for bad in [
            "",
            "index",
            "Delta",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(LAYER_NAME_MAX + 1),
        ] {
            assert!(LayerFileName::new(bad).is_none(), "{bad:?}");
        }
    }
}
