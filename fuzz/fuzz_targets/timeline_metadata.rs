//! Fuzz target: arbitrary bytes as a timeline's metadata file
//! (`quire_shard::metadata`).
//!
//! The first byte chooses whether the rest is decoded as it is, or with
//! the CRC-32C at the end its length field states recomputed first (so
//! the checks past the checksum are reached). Metadata that decodes
//! re-encodes to bytes that decode to the same value (decode(encode(
//! decode(x))) == decode(x)), and its layer names print as they were read.
//! Seeds are metadata files the project writes (`fuzz/seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_shard::metadata::TimelineMetadata;

fuzz_target!(|input: &[u8]| {
    let [mode, bytes @ ..] = input else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1
        && let Some(total) = bytes.get(12..16)
    {
        let total = u32::from_le_bytes([total[0], total[1], total[2], total[3]]) as usize;
        if (68..=bytes.len()).contains(&total) {
            let crc = quire_checksum::crc32c(&bytes[..total - 4]);
            bytes[total - 4..total].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let Ok(metadata) = TimelineMetadata::decode("fuzz", &bytes) else {
        return;
    };
    let encoded = metadata.encode();
    let again = TimelineMetadata::decode("fuzz", &encoded).expect("re-encoded metadata decodes");
    assert_eq!(again, metadata);
    for name in &metadata.layers {
        assert_eq!(
            quire_shard::layer_file::LayerName::parse(&name.to_string()),
            Some(*name)
        );
    }
});
