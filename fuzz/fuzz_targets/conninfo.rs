//! Fuzz target: arbitrary text as a connection string naming a Postgres
//! primary (`quire_pageserver::wal_receiver::ConnInfo`, both the
//! keyword/value and the URI form).
//!
//! Parsing never panics and no value holds a NUL (it would end a C
//! string of the startup message early); a string that parses prints (keyword/value, every
//! value quoted) to one that parses to the same value (unless quoting made
//! it longer than the limit), and its address
//! names the host it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_pageserver::wal_receiver::{CONNINFO_LEN_MAX, ConnInfo};

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    if let Ok(info) = ConnInfo::parse(&text) {
        let printed = info.to_string();
        if printed.len() > CONNINFO_LEN_MAX {
            // Quoting lengthened it past what parsing accepts.
            return;
        }
        assert!(!printed.contains('\0'));
        assert_eq!(ConnInfo::parse(&printed).as_ref(), Ok(&info), "{printed}");
        assert!(info.address().contains(info.host.trim_end_matches('/')));
    }
});
