//! The seeds of the `pg_wire` fuzz target (`fuzz/seeds/pg_wire/`) are the
//! server's side of a real replication session with Postgres 17: startup,
//! `IDENTIFY_SYSTEM`, a refused `START_REPLICATION` (an error), and the
//! start of a physical replication stream (`XLogData` and keepalives).
//!
//! With `QUIRE_WRITE_FUZZ_SEEDS=1` this test starts a cluster, runs the
//! session over loopback with `pg_wire`'s own client messages and writes
//! the bytes it receives. Always, it checks that every committed seed is
//! whole messages that `pg_wire` parses, ending where the file ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_postgres::Lsn;
use quire_safekeeper::pg_wire::{
    Backend, Replication, parse_backend, parse_replication, query, startup,
};
use quire_tests::pg_install;

const SEEDS: [&str; 4] = ["startup", "identify-system", "error", "replication-stream"];

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/pg_wire")
}

/// Reads from `stream` into `buf` until `done` holds for the messages
/// received so far; returns the bytes of the whole messages.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[Backend], usize) -> bool,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut messages = Vec::new();
        let mut used = 0;
        while let Some((message, n)) = parse_backend(&buf[used..])? {
            messages.push(message);
            used += n;
        }
        if done(&messages, used) {
            return Ok(buf.drain(..used).collect());
        }
        ensure!(Instant::now() < deadline, "no reply in 20 s");
        let mut chunk = [0u8; 16_384];
        match stream.read(&mut chunk) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn ready(messages: &[Backend], _: usize) -> bool {
    messages.last() == Some(&Backend::ReadyForQuery)
}

/// Runs the session against a fresh cluster; returns each seed's bytes.
fn capture() -> Result<Vec<Vec<u8>>> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
    pg.start()?;
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat('v', g % 50) FROM generate_series(1, 300) g;",
    )?;
    let mut stream = TcpStream::connect(("127.0.0.1", pg.port())).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = Vec::new();
    stream.write_all(&startup(quire_cluster::SUPERUSER, "sk1"))?;
    let hello = read_until(&mut stream, &mut buf, ready)?;
    stream.write_all(&query("IDENTIFY_SYSTEM"))?;
    let identify = read_until(&mut stream, &mut buf, ready)?;
    let xlogpos = String::from_utf8_lossy(&identify)
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '/'))
        .find_map(|word| word.parse::<Lsn>().ok().filter(|lsn| lsn.0 > 0x100_0000))
        .context("IDENTIFY_SYSTEM's xlogpos")?;
    stream.write_all(&query(
        "START_REPLICATION SLOT quire_no_such_slot PHYSICAL 0/1000000",
    ))?;
    let error = read_until(&mut stream, &mut buf, ready)?;
    // From the start of the page before the end of WAL: a few pages of records.
    let from = Lsn((xlogpos.0 - 3 * 8192) & !8191);
    stream.write_all(&query(&format!(
        "START_REPLICATION PHYSICAL {from} TIMELINE 1"
    )))?;
    // Until the WAL reaches the end IDENTIFY_SYSTEM reported.
    let replication = read_until(&mut stream, &mut buf, |messages, used| {
        let reached = messages.iter().any(|m| match m {
            Backend::CopyData(body) => match parse_replication(body) {
                Ok(Replication::XLogData { start, data, .. }) => {
                    start.0 + data.len() as u64 >= xlogpos.0
                }
                _ => false,
            },
            _ => false,
        });
        reached || used > 48 * 1024
    })?;
    drop(stream);
    pg.stop()?;
    Ok(vec![hello, identify, error, replication])
}

#[test]
fn pg_wire_seeds_are_a_real_session() -> Result<()> {
    let dir = seeds_dir();
    if std::env::var_os("QUIRE_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in SEEDS.iter().zip(capture()?) {
            std::fs::write(dir.join(format!("{name}.bin")), bytes)?;
        }
    }
    for name in SEEDS {
        let path = dir.join(format!("{name}.bin"));
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let (message, used) = parse_backend(&bytes[at..])?
                .with_context(|| format!("{}: a message cut short at {at}", path.display()))?;
            if let Backend::CopyData(body) = &message {
                parse_replication(body)?;
            }
            kinds.push(message);
            at += used;
        }
        let expected = match name {
            "startup" => matches!(kinds.first(), Some(Backend::AuthenticationOk)),
            "identify-system" => matches!(kinds.first(), Some(Backend::RowDescription(_))),
            "error" => matches!(kinds.first(), Some(Backend::Error(_))),
            _ => kinds.iter().any(|m| matches!(m, Backend::CopyData(_))),
        };
        ensure!(
            expected,
            "{}: unexpected messages {kinds:?}",
            path.display()
        );
    }
    Ok(())
}
