//! Log sequence numbers: byte positions in the WAL stream.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL, in bytes from the start of the stream. Postgres
/// prints it as two hexadecimal halves, `X/Y` (`pg_lsn`'s text form).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is a real position (Postgres never writes WAL at 0).
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The offset of this position inside its WAL page of `page_size` bytes.
    pub fn page_offset(self, page_size: u32) -> u32 {
        // The remainder is below page_size, a u32.
        u32::try_from(self.0 % u64::from(page_size)).unwrap_or(u32::MAX)
    }

    /// The offset of this position inside its segment of `segment_size` bytes.
    pub fn segment_offset(self, segment_size: u32) -> u32 {
        u32::try_from(self.0 % u64::from(segment_size)).unwrap_or(u32::MAX)
    }

    /// The number of the segment holding this position.
    pub fn segment_number(self, segment_size: u32) -> u64 {
        self.0 / u64::from(segment_size)
    }

    /// This position rounded up to a multiple of `align` (a power of two).
    pub fn align_up(self, align: u64) -> Option<Lsn> {
        debug_assert!(align.is_power_of_two());
        self.0
            .checked_add(align - 1)
            .map(|end| Lsn(end & !(align - 1)))
    }

    /// `self + bytes`, or `None` past the end of the WAL address space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Why a string is not an LSN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {text:?}: expected two hexadecimal numbers of at most 8 digits, as X/Y")]
pub struct ParseLsnError {
    text: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Lsn, ParseLsnError> {
        let error = || ParseLsnError {
            text: text.to_owned(),
        };
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(error());
            }
            u32::from_str_radix(part, 16).map_err(|_| error())
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<u64>) {
        assert_eq!(text.parse::<Lsn>().ok(), expected.map(Lsn), "{text}");
        if let Some(value) = expected {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>().ok(), Some(Lsn(value)));
        }
    }

    #[test]
    fn parses_and_prints_the_x_slash_y_form() {
        check("0/0", Some(0));
        check("0/1549A30", Some(0x0154_9A30));
        check("16/B374D848", Some(0x16_B374_D848));
        check("FFFFFFFF/FFFFFFFF", Some(u64::MAX));
        check("1/2/3", None);
        check("/1", None);
        check("1/", None);
        check("123456789/0", None);
        check("0x1/0", None);
        check("G/0", None);
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x0154_9A30).to_string(), "0/1549A30");
    }

    #[test]
    fn positions_within_pages_and_segments() {
        let lsn = Lsn(0x0200_2010);
        assert_eq!(lsn.page_offset(8192), 0x10);
        assert_eq!(lsn.segment_offset(16 << 20), 0x2010);
        assert_eq!(lsn.segment_number(16 << 20), 2);
        assert_eq!(Lsn(9).align_up(8), Some(Lsn(16)));
        assert_eq!(Lsn(16).align_up(8), Some(Lsn(16)));
        assert_eq!(Lsn(u64::MAX).align_up(8), None);
    }
}
