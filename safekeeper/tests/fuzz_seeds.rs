//! The seeds of the safekeeper's fuzz targets (`fuzz/seeds/<target>/`):
//! frames, control files and a replication session's server side as the
//! project's own encoders write them. The test fails when a committed seed
//! differs from what today's encoders write (a format change must refresh
//! them); `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.

use std::path::PathBuf;

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::DurableState;
use quire_safekeeper::control_file::ControlFile;
use quire_safekeeper::history::{TermEntry, TermHistory};
use quire_safekeeper::wire::{Message, TimelineKey};

/// Writes `fuzz/seeds/<target>/<name>`, or checks it holds `bytes`.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let path = dir.join(name);
    if std::env::var_os("QUIRE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(&path, bytes).expect("write seed");
    } else {
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (QUIRE_WRITE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} is stale: QUIRE_WRITE_FUZZ_SEEDS=1 rewrites it",
            path.display()
        );
    }
}

const KEY: TimelineKey = TimelineKey {
    tenant: [0x4a; 16],
    timeline: [0x17; 16],
};

fn history() -> TermHistory {
    TermHistory(vec![
        TermEntry {
            term: 1,
            start: Lsn(0x0100_0028),
        },
        TermEntry {
            term: 3,
            start: Lsn(0x0152_3A80),
        },
    ])
}

#[test]
fn safekeeper_wire_seeds() {
    let messages = [
        Message::CreateTimeline {
            key: KEY,
            wal_start: Lsn(0x0100_0000),
            segment_size: 16 << 20,
            system_id: 7_441_234_567_890_123_456,
        },
        Message::Vote { key: KEY, term: 4 },
        Message::Elected {
            key: KEY,
            term: 4,
            history: history(),
            compute: "127.0.0.1:55432".into(),
        },
        Message::Fetch {
            key: KEY,
            term: 4,
            history: history(),
            from: Lsn(0x0152_0000),
            to: Lsn(0x0152_3A80),
        },
        Message::PeerFlush {
            key: KEY,
            peer: 2,
            term: 4,
            flush: Lsn(0x0153_0000),
        },
        Message::GetStatus { key: KEY },
        Message::StreamWal {
            key: KEY,
            from: Lsn(0x0100_0028),
        },
        Message::ReportPersisted {
            key: KEY,
            lsn: Lsn(0x0150_0000),
        },
        Message::VoteReply {
            term: 4,
            granted: true,
            flush: Lsn(0x0152_3A80),
            history: history(),
        },
        Message::Flushed {
            term: 4,
            flush: Lsn(0x0153_0000),
            commit: Lsn(0x0152_FF00),
        },
        Message::Refused {
            term: 5,
            why: "WAL of a term this acceptor is not in".into(),
        },
        Message::Wal {
            begin: Lsn(0x0152_3A80),
            bytes: (0..600u32).map(|i| (i * 7).to_le_bytes()[0]).collect(),
        },
        Message::Commit {
            lsn: Lsn(0x0152_FF00),
        },
        Message::Persisted {
            lsn: Lsn(0x0150_0000),
        },
        Message::Status {
            term: 4,
            flush: Lsn(0x0153_0000),
            commit: Lsn(0x0152_FF00),
            history: history(),
        },
        Message::Ok,
        Message::Error {
            message: "no such timeline".into(),
        },
    ];
    let mut stream = Vec::new();
    for message in &messages {
        let bytes = message.encode();
        let kind = char::from(bytes[0]);
        let case = if kind.is_ascii_uppercase() {
            "request"
        } else {
            "reply"
        };
        seed("safekeeper_wire", &format!("{case}-{kind}.bin"), &bytes);
        stream.extend_from_slice(&bytes);
    }
    seed("safekeeper_wire", "all-in-one-stream.bin", &stream);
}

#[test]
fn safekeeper_control_file_seeds() {
    let mut file = ControlFile {
        tenant: KEY.tenant,
        timeline: KEY.timeline,
        system_id: 7_441_234_567_890_123_456,
        segment_size: 16 << 20,
        state: DurableState::new(Lsn(0x0100_0028)),
    };
    // The first byte of a seed: 0 decodes as is, 1 re-seals the CRC first.
    let with_mode = |mode: u8, file: &ControlFile| {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(&file.encode());
        bytes
    };
    seed(
        "safekeeper_control_file",
        "new-timeline.bin",
        &with_mode(0, &file),
    );
    file.state.term = 4;
    file.state.history = history();
    file.state.commit_lsn = Lsn(0x0152_FF00);
    file.state.removable_before = Lsn(0x0100_0000);
    seed(
        "safekeeper_control_file",
        "term-4.bin",
        &with_mode(0, &file),
    );
    seed(
        "safekeeper_control_file",
        "term-4-resealed.bin",
        &with_mode(1, &file),
    );
}

/// A backend message: kind, big-endian length, body.
fn backend(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u32::try_from(body.len() + 4).expect("short").to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A `RowDescription` of text columns as Postgres describes them.
fn row_description(names: &[&str]) -> Vec<u8> {
    let mut body = u16::try_from(names.len())
        .expect("few")
        .to_be_bytes()
        .to_vec();
    for name in names {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        // table oid, column, type oid (text), size, modifier, format.
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
    }
    backend(b'T', &body)
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = u16::try_from(values.len())
        .expect("few")
        .to_be_bytes()
        .to_vec();
    for value in values {
        match value {
            Some(text) => {
                body.extend_from_slice(&u32::try_from(text.len()).expect("short").to_be_bytes());
                body.extend_from_slice(text.as_bytes());
            }
            None => body.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    backend(b'D', &body)
}

fn c_strings(fields: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    for field in fields {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    body
}

/// The server's side of a replication session, message by message as
/// Postgres 17's walsender sends them (protocol 3.0), with real WAL in the
/// `XLogData` (a window of the WAL decoder's seeds).
#[test]
fn pg_wire_seeds() {
    let wal_seed = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds/wal_decoder/segment-start.bin");
    let wal = std::fs::read(&wal_seed).expect("the WAL decoder's seed");
    let mut startup = backend(b'R', &0u32.to_be_bytes());
    for (name, value) in [
        ("application_name", "sk1"),
        ("server_encoding", "UTF8"),
        ("server_version", "17.11"),
    ] {
        startup.extend(backend(b'S', &c_strings(&[name, value])));
    }
    startup.extend(backend(b'K', &[0, 0, 0x30, 0x39, 0x12, 0x34, 0x56, 0x78]));
    startup.extend(backend(b'Z', b"I"));
    seed("pg_wire", "startup.bin", &startup);

    let mut identify = row_description(&["systemid", "timeline", "xlogpos", "dbname"]);
    identify.extend(data_row(&[
        Some("7441234567890123456"),
        Some("1"),
        Some("0/1523A80"),
        None,
    ]));
    identify.extend(backend(b'C', &c_strings(&["IDENTIFY_SYSTEM"])));
    identify.extend(backend(b'Z', b"I"));
    seed("pg_wire", "identify-system.bin", &identify);

    let mut stream = backend(b'W', &[0, 0, 0]);
    let mut xlog = vec![b'w'];
    xlog.extend_from_slice(&0x0100_0000u64.to_be_bytes());
    xlog.extend_from_slice(&0x0152_3A80u64.to_be_bytes());
    xlog.extend_from_slice(&812_345_678_901i64.to_be_bytes());
    // The seed's first byte is the WAL target's chunk selector.
    xlog.extend_from_slice(&wal[1..wal.len().min(2049)]);
    stream.extend(backend(b'd', &xlog));
    let mut keepalive = vec![b'k'];
    keepalive.extend_from_slice(&0x0152_3A80u64.to_be_bytes());
    keepalive.extend_from_slice(&812_345_678_999i64.to_be_bytes());
    keepalive.push(1);
    stream.extend(backend(b'd', &keepalive));
    stream.extend(backend(b'c', &[]));
    seed("pg_wire", "replication-stream.bin", &stream);

    let error = backend(
        b'E',
        &c_strings(&[
            "SERROR",
            "VERROR",
            "C42704",
            "Mreplication slot \"quire_sk1\" does not exist",
            "Fslot.c",
            "L537",
            "RSearchNamedReplicationSlot",
            "",
        ]),
    );
    seed("pg_wire", "error.bin", &error);
}
