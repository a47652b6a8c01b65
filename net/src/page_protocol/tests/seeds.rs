//! The fuzz target's seeds (`fuzz/seeds/page_protocol/`) are these tests'
//! sample messages, encoded: this test fails when they drift apart, and
//! `QUIRE_WRITE_FUZZ_SEEDS=1 cargo test -p quire-net seeds` rewrites them.
//!
//! A seed is one byte the target reads as its chunk size, then a stream
//! of frames.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

/// Frames bigger than this stay out of the seeds (the 32-page answers):
/// small inputs mutate faster.
const SEED_FRAME_BYTES_MAX: usize = 20_000;

fn seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    let mut client_pipeline = vec![5];
    for (name, frame) in sample_client_frames() {
        let bytes = frame.to_bytes().unwrap();
        seeds.insert(format!("client-{name}.bin"), [&[0][..], &bytes].concat());
        client_pipeline.extend_from_slice(&bytes);
    }
    seeds.insert("client-pipeline.bin".to_owned(), client_pipeline);
    let mut server_pipeline = vec![5];
    for (name, frame) in sample_server_frames() {
        let bytes = frame.to_bytes().unwrap();
        if bytes.len() > SEED_FRAME_BYTES_MAX {
            continue;
        }
        let name = match &frame.message {
            ServerMessage::Error(error) => {
                format!("{name}-{}-{}", error.error.code(), frame.request_id)
            }
            _ => name.to_owned(),
        };
        seeds.insert(format!("server-{name}.bin"), [&[0][..], &bytes].concat());
        if server_pipeline.len() + bytes.len() <= 2 * SEED_FRAME_BYTES_MAX {
            server_pipeline.extend_from_slice(&bytes);
        }
    }
    seeds.insert("server-pipeline.bin".to_owned(), server_pipeline);
    seeds
}

#[test]
fn fuzz_seeds_are_the_encoded_sample_messages() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/page_protocol");
    let expected = seeds();
    if std::env::var_os("QUIRE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, bytes) in &expected {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        found.insert(name, std::fs::read(&path).unwrap());
    }
    let names = |seeds: &BTreeMap<String, Vec<u8>>| seeds.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&found),
        names(&expected),
        "seed files; rewrite with QUIRE_WRITE_FUZZ_SEEDS=1"
    );
    for (name, bytes) in &expected {
        assert!(
            found[name] == *bytes,
            "{name} differs; rewrite with QUIRE_WRITE_FUZZ_SEEDS=1"
        );
    }
}
