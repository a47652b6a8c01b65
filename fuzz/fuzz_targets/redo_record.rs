//! Fuzz target: arbitrary bytes as a stored redo record
//! (`quire_redo::record`) and as replies from a redo process
//! (`quire_redo::protocol`).
//!
//! A record that decodes re-encodes to exactly its bytes, which decode to
//! the same record (decode(encode(decode(x))) == decode(x)); a Rust record
//! is then applied to a page (the page bytes come from the input too), a
//! Postgres record's WAL is decoded as a record. The same bytes are split
//! into replies: the bytes used never exceed the input, and a reply is
//! never longer than the limit. Seeds are every record kind the project
//! stores, Postgres ones holding real WAL records (`fuzz/seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_postgres::types::BLCKSZ;
use quire_redo::protocol::{MAX_REPLY, Reply, parse_replies};
use quire_redo::record::RedoRecord;
use quire_redo::rust_redo;

fuzz_target!(|input: &[u8]| {
    if let Ok(record) = RedoRecord::decode(input) {
        let encoded = record.encode();
        assert_eq!(encoded, input, "the encoding is canonical");
        assert_eq!(RedoRecord::decode(&encoded).as_ref(), Ok(&record));
        match &record {
            RedoRecord::Postgres { record: wal, .. } => {
                let _ = quire_postgres::wal::record::decode_record(wal);
            }
            _ => {
                let mut page = [0u8; BLCKSZ];
                let n = input.len().min(BLCKSZ);
                page[..n].copy_from_slice(&input[..n]);
                let _ = rust_redo::apply(&mut page, &record);
            }
        }
    }
    let mut replies = Vec::new();
    if let Ok(used) = parse_replies(input, &mut replies) {
        assert!(used <= input.len());
        for reply in &replies {
            match reply {
                Reply::Ok(body) => assert!(body.len() <= MAX_REPLY),
                Reply::Error(message) => assert!(message.len() <= 3 * MAX_REPLY),
            }
        }
    }
});
