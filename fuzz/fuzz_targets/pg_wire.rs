//! Fuzz target: arbitrary bytes as what a Postgres server sends a
//! replication client (`quire_safekeeper::pg_wire`).
//!
//! Backend messages are split off the front until one does not parse or
//! more bytes are needed; each `CopyData` body is parsed as a replication
//! message. A message parses the same from exactly its own bytes as from a
//! longer buffer, and waits (`Ok(None)`) when cut short. The client's own
//! encoders have no decoder here to round-trip against (the server parses
//! them); the status update is checked against its layout instead.
//! Authentication requests (cleartext, MD5, SASL) are among the backend
//! messages parsed. Seeds are a replication session's server side
//! (`fuzz/seeds/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_postgres::Lsn;
use quire_safekeeper::pg_wire::{
    Backend, Replication, parse_backend, parse_replication, standby_status, status_update,
};

fuzz_target!(|input: &[u8]| {
    let mut rest = input;
    while let Ok(Some((message, used))) = parse_backend(rest) {
        assert!(used >= 5 && used <= rest.len());
        let own = &rest[..used];
        assert_eq!(parse_backend(own), Ok(Some((message.clone(), used))));
        assert_eq!(parse_backend(&own[..used - 1]), Ok(None));
        match &message {
            Backend::CopyData(body) => {
                if let Ok(Replication::XLogData { data, .. }) = parse_replication(body) {
                    assert!(data.len() + 25 == body.len());
                }
            }
            Backend::Error(fields) => {
                let _ = Backend::error_message(fields);
            }
            _ => {}
        }
        rest = &rest[used..];
    }
    // The one replication message the client sends, from the input's first bytes.
    let mut flush = [0u8; 8];
    let n = input.len().min(8);
    flush[..n].copy_from_slice(&input[..n]);
    let update = status_update(Lsn(u64::from_le_bytes(flush)), 7);
    assert_eq!(update.len(), 39);
    assert!(matches!(
        parse_backend(&update),
        Ok(Some((Backend::CopyData(_), 39)))
    ));
    let ping = standby_status(Lsn(u64::from_le_bytes(flush)), 7, true);
    assert_eq!(ping.len(), 39);
    assert_eq!(ping.last(), Some(&1));
});
