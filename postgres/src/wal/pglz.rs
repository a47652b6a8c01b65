//! Decompression of Postgres' own LZ format (pglz), used for full-page
//! images written with `wal_compression = pglz`.
//!
//! The stream is a sequence of groups: a control byte whose bits, lowest
//! first, say whether each of the next (up to) eight items is a literal byte
//! (bit 0) or a back-reference tag (bit 1). A tag is two bytes: the high
//! nibble of the first and the whole second byte form a 12-bit offset back
//! into the output, the low nibble plus 3 the length; a length nibble of 15
//! (length 18) is extended by a third byte added to it. A back-reference may
//! overlap the bytes it produces, repeating a pattern.

/// Why a pglz stream did not decompress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PglzError {
    /// A tag points before the start of the output, or has offset 0.
    #[error("back-reference at input offset {input_offset} reaches before the output start")]
    BadOffset {
        /// Where the tag starts in the compressed input.
        input_offset: usize,
    },
    /// The input ends inside a tag.
    #[error("input ends inside a back-reference")]
    TruncatedTag,
    /// The output is not exactly the expected size, or input is left over.
    #[error("decompressed {produced} of {expected} bytes with {unread} input bytes unread")]
    Incomplete {
        /// Bytes produced.
        produced: usize,
        /// Bytes expected.
        expected: usize,
        /// Input bytes left.
        unread: usize,
    },
}

/// Decompresses `input` into exactly `output.len()` bytes, consuming all of
/// `input` (pglz's `check_complete` mode, the one full-page images use).
pub fn decompress(input: &[u8], output: &mut [u8]) -> Result<(), PglzError> {
    let mut sp = 0usize;
    let mut dp = 0usize;
    while sp < input.len() && dp < output.len() {
        let mut control = input[sp];
        sp += 1;
        for _ in 0..8 {
            if sp >= input.len() || dp >= output.len() {
                break;
            }
            if control & 1 == 0 {
                output[dp] = input[sp];
                dp += 1;
                sp += 1;
            } else {
                let tag_start = sp;
                let (Some(&first), Some(&second)) = (input.get(sp), input.get(sp + 1)) else {
                    return Err(PglzError::TruncatedTag);
                };
                let mut length = usize::from(first & 0x0f) + 3;
                let offset = (usize::from(first & 0xf0) << 4) | usize::from(second);
                sp += 2;
                if length == 18 {
                    let Some(&extra) = input.get(sp) else {
                        return Err(PglzError::TruncatedTag);
                    };
                    length += usize::from(extra);
                    sp += 1;
                }
                if offset == 0 || offset > dp {
                    return Err(PglzError::BadOffset {
                        input_offset: tag_start,
                    });
                }
                let length = length.min(output.len() - dp);
                // Byte by byte: a reference may overlap what it writes.
                for _ in 0..length {
                    output[dp] = output[dp - offset];
                    dp += 1;
                }
            }
            control >>= 1;
        }
    }
    if dp != output.len() || sp != input.len() {
        return Err(PglzError::Incomplete {
            produced: dp,
            expected: output.len(),
            unread: input.len() - sp,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: Result<&[u8], PglzError>, size: usize) {
        let mut output = vec![0u8; size];
        let result = decompress(input, &mut output);
        match expected {
            Ok(bytes) => {
                assert_eq!(result, Ok(()));
                assert_eq!(output, bytes);
            }
            Err(error) => assert_eq!(result, Err(error)),
        }
    }

    #[test]
    fn literals_and_overlapping_references() {
        // Control 0b0000_0010: a literal 'a', then a tag offset 1 length 3.
        check(&[0b10, b'a', 0x00, 0x01], Ok(b"aaaa"), 4);
        // Two literals then offset 2 length 4: "abababab"[..6].
        check(&[0b100, b'a', b'b', 0x01, 0x02], Ok(b"ababab"), 6);
        // Extended length: nibble 15 (18) + 2 = 20 bytes repeated.
        let mut expected = vec![b'z'; 21];
        expected[0] = b'z';
        check(&[0b10, b'z', 0x0f, 0x01, 2], Ok(&expected), 21);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        check(
            &[0b1, 0x00, 0x01],
            Err(PglzError::BadOffset { input_offset: 1 }),
            4,
        );
        check(&[0b10, b'a', 0x00], Err(PglzError::TruncatedTag), 4);
        check(
            &[0b10, b'a', 0x00, 0x00],
            Err(PglzError::BadOffset { input_offset: 2 }),
            4,
        );
        check(
            &[0b0, b'a'],
            Err(PglzError::Incomplete {
                produced: 1,
                expected: 2,
                unread: 0,
            }),
            2,
        );
        check(
            &[0b0, b'a', b'b', b'c'],
            Err(PglzError::Incomplete {
                produced: 2,
                expected: 2,
                unread: 1,
            }),
            2,
        );
    }
}
