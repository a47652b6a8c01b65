//! A layer's name: what it covers (kind, key range, LSN range), spelled as
//! its file name and its object name.

use std::fmt::{self, Write as _};

use quire_postgres::{Key, Lsn};

/// A layer's identity: what it covers, as its file name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerName {
    /// Image or delta.
    pub kind: LayerKindName,
    /// Keys covered.
    pub key_start: Key,
    /// End of the key range (exclusive).
    pub key_end: Key,
    /// First LSN covered.
    pub lsn_start: Lsn,
    /// End of the LSN range (exclusive).
    pub lsn_end: Lsn,
}

/// [`LayerKind`] with an order, for names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKindName {
    /// An image layer.
    Image,
    /// A delta layer.
    Delta,
}

impl fmt::Display for LayerName {
    /// `<kind>-<key start>-<key end>-<lsn start>-<lsn end>`, fields in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            LayerKindName::Image => "image",
            LayerKindName::Delta => "delta",
        };
        let hex = |key: Key| {
            let mut text = String::with_capacity(36);
            for byte in key.to_bytes() {
                let _ = write!(text, "{byte:02x}");
            }
            text
        };
        write!(
            f,
            "{kind}-{}-{}-{:016x}-{:016x}",
            hex(self.key_start),
            hex(self.key_end),
            self.lsn_start.0,
            self.lsn_end.0
        )
    }
}

impl LayerName {
    /// Parses a file name written by `Display` (`None` for anything else,
    /// including a name that reads as a layer but is not spelled as
    /// `Display` spells it, such as `+` signs or upper-case digits: that
    /// would name another file than the one on disk).
    pub fn parse(name: &str) -> Option<LayerName> {
        let mut parts = name.split('-');
        let kind = match parts.next()? {
            "image" => LayerKindName::Image,
            "delta" => LayerKindName::Delta,
            _ => return None,
        };
        let key = |text: &str| -> Option<Key> {
            if text.len() != 36 {
                return None;
            }
            let mut bytes = [0u8; 18];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(Key::from_bytes_unchecked(bytes))
        };
        let lsn = |text: &str| {
            (text.len() == 16)
                .then(|| u64::from_str_radix(text, 16).ok().map(Lsn))
                .flatten()
        };
        let parsed = LayerName {
            kind,
            key_start: key(parts.next()?)?,
            key_end: key(parts.next()?)?,
            lsn_start: lsn(parts.next()?)?,
            lsn_end: lsn(parts.next()?)?,
        };
        (parts.next().is_none()
            && parsed.key_start < parsed.key_end
            && parsed.lsn_start < parsed.lsn_end
            && parsed.to_string() == name)
            .then_some(parsed)
    }
}
