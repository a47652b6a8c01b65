//! The seeds of the safekeeper's fuzz targets (`fuzz/seeds/<target>/`):
//! frames and control files as the project's own encoders write them (the
//! `pg_wire` seeds are a real server's bytes: `tests/tests/pg_wire_seeds.rs`). The test fails when a committed seed
//! differs from what today's encoders write (a format change must refresh
//! them); `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.

use quire_fuzz_seeds::seed;

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::DurableState;
use quire_safekeeper::control_file::ControlFile;
use quire_safekeeper::history::{TermEntry, TermHistory};
use quire_safekeeper::membership::Membership;
use quire_safekeeper::wire::{Message, StorageHealth, TimelineKey};

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
        Message::Hello {
            token:
                "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzY29wZSI6InBhZ2VzZXJ2ZXIifQ.c2lnbmF0dXJl"
                    .into(),
        },
        Message::CreateTimeline {
            key: KEY,
            wal_start: Lsn(0x0100_0000),
            segment_size: 16 << 20,
            system_id: 7_441_234_567_890_123_456,
            members: three_members().members().to_vec(),
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
            health: StorageHealth::default(),
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

/// Safekeepers 1 to 3 on loopback.
fn three_members() -> Membership {
    Membership::numbered(&["127.0.0.1:5451", "127.0.0.1:5452", "127.0.0.1:5453"]).expect("valid")
}

#[test]
fn safekeeper_control_file_seeds() {
    let mut file = ControlFile {
        tenant: KEY.tenant,
        timeline: KEY.timeline,
        system_id: 7_441_234_567_890_123_456,
        segment_size: 16 << 20,
        state: DurableState::new(Lsn(0x0100_0028), three_members()),
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
