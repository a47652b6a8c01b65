//! Fuzz target: arbitrary bytes as a timeline's index in object storage
//! (`quire_remote::index`), or as a generation object
//! (`quire_remote::generation`).
//!
//! The first byte is the mode: bit 0 re-seals the input first (the length
//! field set to the input's length and the CRC-32C at the end recomputed,
//! so the checks past the checksum are reached); bit 1 reads the rest as a
//! generation object instead. What decodes re-encodes to exactly the input
//! (both encodings are canonical). Seeds are indexes and generation
//! objects the project writes (`fuzz/seeds/remote_index/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_remote::TimelineIndex;
use quire_remote::generation::GenerationRecord;

fuzz_target!(|input: &[u8]| {
    let [mode, bytes @ ..] = input else {
        return;
    };
    let mut bytes = bytes.to_vec();
    let generation = mode & 2 == 2;
    if mode & 1 == 1 && bytes.len() >= 20 {
        if !generation && let Ok(total) = u32::try_from(bytes.len()) {
            bytes[12..16].copy_from_slice(&total.to_le_bytes());
        }
        let end = bytes.len() - 4;
        let crc = quire_checksum::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }
    if generation {
        if let Ok(record) = GenerationRecord::decode(&bytes) {
            assert_eq!(record.encode().as_deref(), Some(&bytes[..]));
        }
        return;
    }
    let Ok(index) = TimelineIndex::decode(&bytes) else {
        return;
    };
    let encoded = index.encode().expect("a decoded index encodes");
    assert_eq!(encoded, bytes, "the encoding is canonical");
    for layer in &index.layers {
        assert!(quire_remote::LayerFileName::new(layer.name.as_str()).is_some());
        assert_eq!(index.layer(&layer.name), Some(layer));
    }
});
