//! Fuzz target: arbitrary bytes as a safekeeper control file
//! (`quire_safekeeper::control_file`).
//!
//! The first byte chooses whether the rest is decoded as it is, or with
//! its trailing CRC-32C recomputed first (so the checks past the checksum
//! are reached). A file that decodes re-encodes to bytes that decode to
//! the same value (decode(encode(decode(x))) == decode(x)); a file of the
//! current version re-encodes to exactly its bytes (an older version is
//! read and written as the current one). Seeds are control files the project writes (`fuzz/seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_safekeeper::control_file::ControlFile;

fuzz_target!(|input: &[u8]| {
    let [mode, bytes @ ..] = input else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1 && bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = quire_checksum::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(file) = ControlFile::decode(&bytes) else {
        return;
    };
    let encoded = file.encode();
    if bytes.get(4..8) == encoded.get(4..8) {
        assert_eq!(encoded, bytes, "the encoding is canonical");
    }
    assert_eq!(ControlFile::decode(&encoded).ok(), Some(file));
});
