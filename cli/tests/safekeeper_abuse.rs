//! A running `quire safekeeper` under hostile clients, while it serves a
//! real Postgres 17 compute (`synchronous_standby_names = 'ANY 2 (sk1,
//! sk2, sk3)'`) with sk3 stopped, so every commit needs sk1, the target:
//! garbage bytes, truncated frames, an oversized length header, reply
//! kinds and malformed bodies sent as requests, forgeries the membership
//! and term rules refuse (flush reports from non-members, stale votes and
//! announcements, fetches of impossible ranges), a connection flood past
//! `--max-connections` plus connections that never speak (the handshake
//! timeout reclaims them), slow-loris frames (a byte a second) before and
//! after a first frame, and a WAL stream whose client never reads.
//!
//! Throughout, a writer commits ledger rows one by one and each commit must
//! return within `COMMIT_DEADLINE`; after each attack sk1 must still run
//! and answer. Afterwards every acknowledged row is in the ledger, the
//! three safekeepers' WAL equals the compute's `pg_wal`, and sk1's control
//! file loads with the elected term and its three members.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, run_checked};
use quire_postgres::Lsn;
use quire_safekeeper::control_file::ControlFile;
use quire_safekeeper::election::Won;
use quire_safekeeper::history::{TermEntry, TermHistory};
use quire_safekeeper::wire::{Message, StorageHealth, TimelineKey};
use quire_tests::pg_install;
use quire_tests::safekeepers::{
    KEY, KEY_TEXT, Safekeeper, bootstrap, check_identical_wal, compute_options,
    start_safekeepers_with, status,
};

/// sk1's limits, small so the test is quick.
const MAX_CONNECTIONS: usize = 24;
const HANDSHAKE_MS: u64 = 1_000;
const FRAME_MS: u64 = 3_000;
const IDLE_MS: u64 = 5_000;
const WRITE_MS: u64 = 3_000;
/// The longest a commit may take while sk1 is attacked.
const COMMIT_DEADLINE: Duration = Duration::from_secs(10);
/// The whole test, compute start to last check.
const TEST_DEADLINE: Duration = Duration::from_secs(150);

/// Commits `INSERT INTO ledger VALUES (n)` for n = 0, 1, ... until told
/// to stop; each must return within `COMMIT_DEADLINE`.
struct Ledger {
    acked: Mutex<Vec<(u32, Instant)>>,
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Ledger {
    fn run(&self, psql: &Path, port: u16) {
        let mut id = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let mut command = Command::new(psql);
            command
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", port.to_string())
                .env("PGUSER", quire_cluster::SUPERUSER)
                .env("PGDATABASE", "postgres")
                .args(["--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1"])
                .args(["--command", &format!("INSERT INTO ledger VALUES ({id})")]);
            if let Err(e) = run_checked(&mut command, COMMIT_DEADLINE) {
                *self.failure.lock().expect("lock") = Some(format!("commit {id}: {e:#}"));
                return;
            }
            self.acked.lock().expect("lock").push((id, Instant::now()));
            id += 1;
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    fn check(&self) -> Result<()> {
        if let Some(failure) = &*self.failure.lock().expect("lock") {
            bail!("the compute stopped committing: {failure}");
        }
        Ok(())
    }

    /// Waits for commits past `since` (sk1 still acknowledges).
    fn expect_progress(&self, since: usize, phase: &str) -> Result<()> {
        let began = Instant::now();
        while self.count() <= since {
            self.check()?;
            ensure!(
                began.elapsed() < COMMIT_DEADLINE,
                "no commit after {phase} ({since} before it)"
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.check()
    }
}

fn connect(address: &str) -> Result<TcpStream> {
    let addr = address.parse().context("address")?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What the peer sends until it closes or `within` passes: the frames,
/// and whether it closed.
fn frames_until_closed(stream: &mut TcpStream, within: Duration) -> Result<(Vec<Message>, bool)> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) => return Err(e.into()),
        }
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while let Ok(Some((message, used))) = Message::decode(&bytes[at..]) {
        frames.push(message);
        at += used;
    }
    Ok((frames, closed))
}

/// One answer to `message` on `stream`.
fn ask(stream: &mut TcpStream, message: &Message) -> Result<Message> {
    stream.write_all(&message.encode())?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((answer, _)) = Message::decode(&bytes)? {
            return Ok(answer);
        }
        let n = stream.read(&mut chunk).context("read an answer")?;
        ensure!(n > 0, "closed before answering {message:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

fn error_of(frames: &[Message]) -> String {
    match frames.first() {
        Some(Message::Error { message }) => message.clone(),
        other => format!("(no error frame: {other:?})"),
    }
}

/// sk1 runs, answers a status query, and the compute commits again.
fn still_serving(sk1: &mut Safekeeper, ledger: &Ledger, since: usize, phase: &str) -> Result<()> {
    ensure!(sk1.is_running(), "sk1 died during {phase}");
    let began = Instant::now();
    loop {
        match status(&sk1.address, KEY) {
            Ok(_) => break,
            Err(e) => ensure!(
                began.elapsed() < Duration::from_secs(5),
                "sk1 does not answer after {phase}: {e:#}"
            ),
        }
        thread::sleep(Duration::from_millis(50));
    }
    ledger.expect_progress(since, phase)?;
    println!(
        "after {phase}: sk1 up and answering, {} commits so far",
        ledger.count()
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// Random bytes from a fixed seed (xorshift).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn garbage_and_truncation(address: &str) -> Result<()> {
    for seed in 1..=8u64 {
        let mut stream = connect(address)?;
        // A write may fail once the server has closed on the first bytes.
        let _ = stream.write_all(&garbage(seed, 4096));
        let (_, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
        ensure!(closed, "garbage (seed {seed}) left the connection open");
    }
    // Frames cut short, then closed.
    let vote = Message::Vote { key: KEY, term: 1 }.encode();
    for cut in [1, 3, 5, vote.len() - 1] {
        let mut stream = connect(address)?;
        stream.write_all(&vote[..cut])?;
        stream.shutdown(Shutdown::Write)?;
        let (frames, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
        ensure!(
            closed && frames.is_empty(),
            "a frame cut at {cut}: {frames:?}"
        );
    }
    println!("garbage (8 x 4 KiB) and frames cut at 1, 3, 5 and n-1 bytes: each connection closed");
    Ok(())
}

fn oversized_headers(address: &str) -> Result<()> {
    for (kind, len) in [(b'S', u32::MAX), (b'w', 0xFFFF_FFF0), (b'E', (4 << 20) + 1)] {
        let mut stream = connect(address)?;
        let mut header = vec![kind];
        header.extend_from_slice(&len.to_le_bytes());
        stream.write_all(&header)?;
        let (frames, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
        let said = error_of(&frames);
        ensure!(
            closed && said.contains("over the limit"),
            "a {len}-byte header: {said}"
        );
    }
    println!("length headers of 4 GiB and 4 MiB + 1: refused with an error, closed");
    Ok(())
}

/// Reply kinds sent as requests get an error; the connection goes on.
fn reply_kinds(stream: &mut TcpStream) -> Result<()> {
    for reply in [
        Message::Ok,
        Message::Commit { lsn: Lsn(u64::MAX) },
        Message::Status {
            term: u64::MAX,
            flush: Lsn(u64::MAX),
            commit: Lsn(u64::MAX),
            history: TermHistory(Vec::new()),
            health: StorageHealth::default(),
        },
        Message::Wal {
            begin: Lsn(0),
            bytes: vec![0x5A; 1 << 20],
        },
    ] {
        let answer = ask(stream, &reply)?;
        ensure!(
            matches!(&answer, Message::Error { message } if message.starts_with("not a request")),
            "a reply kind as a request: {answer:?}"
        );
    }
    Ok(())
}

/// Reply kinds as requests, and forgeries the rules refuse.
fn wrong_frames(address: &str, term: u64) -> Result<()> {
    let mut stream = connect(address)?;
    reply_kinds(&mut stream)?;
    // Flush reports in the names of non-members, with absurd positions.
    for peer in [0, 4, 99, u32::MAX] {
        stream.write_all(
            &Message::PeerFlush {
                key: KEY,
                peer,
                term: u64::MAX,
                flush: Lsn(u64::MAX),
            }
            .encode(),
        )?;
    }
    // Stale votes and announcements, impossible fetches, another cluster.
    let stale_vote = ask(&mut stream, &Message::Vote { key: KEY, term: 0 })?;
    ensure!(
        matches!(stale_vote, Message::VoteReply { granted: false, .. }),
        "a vote for term 0: {stale_vote:?}"
    );
    let stale = ask(
        &mut stream,
        &Message::Elected {
            key: KEY,
            term: 0,
            history: TermHistory(Vec::new()),
            compute: "127.0.0.1:9".into(),
        },
    )?;
    ensure!(
        matches!(stale, Message::Refused { .. } | Message::Error { .. }),
        "an announcement of term 0: {stale:?}"
    );
    for (from, to) in [(u64::MAX, 0), (0, u64::MAX), (u64::MAX - 1, u64::MAX)] {
        let answer = ask(
            &mut stream,
            &Message::Fetch {
                key: KEY,
                term: u64::MAX,
                history: TermHistory(vec![TermEntry {
                    term: u64::MAX,
                    start: Lsn(0),
                }]),
                from: Lsn(from),
                to: Lsn(to),
            },
        )?;
        ensure!(
            matches!(answer, Message::Refused { .. } | Message::Error { .. }),
            "a fetch of {from}..{to}: {answer:?}"
        );
    }
    let other_cluster = ask(
        &mut stream,
        &Message::CreateTimeline {
            key: KEY,
            wal_start: Lsn(0),
            segment_size: 16 << 20,
            system_id: 1,
            members: Vec::new(),
        },
    )?;
    ensure!(
        matches!(&other_cluster, Message::Error { message } if message.contains("another cluster")),
        "CreateTimeline over the timeline: {other_cluster:?}"
    );
    let unknown = TimelineKey {
        tenant: [0xEE; 16],
        timeline: [0xEE; 16],
    };
    for request in [
        Message::GetStatus { key: unknown },
        Message::ReportPersisted {
            key: unknown,
            lsn: Lsn(u64::MAX),
        },
        Message::Vote {
            key: unknown,
            term: u64::MAX,
        },
    ] {
        let answer = ask(&mut stream, &request)?;
        ensure!(
            matches!(&answer, Message::Error { message } if message.contains("no timeline")),
            "{request:?}: {answer:?}"
        );
    }
    // The connection still serves: the term did not move.
    match ask(&mut stream, &Message::GetStatus { key: KEY })? {
        Message::Status { term: now, .. } => ensure!(now == term, "the term moved to {now}"),
        other => bail!("status: {other:?}"),
    }
    println!("reply kinds, non-member flush reports, stale votes, impossible fetches: refused");
    Ok(())
}

/// Malformed bodies and a request on a WAL stream.
fn malformed_frames(address: &str) -> Result<()> {
    // Malformed bodies end the connection with an error naming them.
    let history_backwards = Message::Elected {
        key: KEY,
        term: u64::MAX,
        history: TermHistory(vec![
            TermEntry {
                term: 5,
                start: Lsn(100),
            },
            TermEntry {
                term: 2,
                start: Lsn(50),
            },
        ]),
        compute: "127.0.0.1:9".into(),
    }
    .encode();
    let mut short_vote = Message::Vote { key: KEY, term: 1 }.encode();
    short_vote.truncate(5 + 32 + 3);
    short_vote[1..5].copy_from_slice(&35u32.to_le_bytes());
    let unknown_kind = vec![0u8, 0, 0, 0, 0];
    for (what, frame) in [
        ("a history going backwards", history_backwards),
        ("a vote 5 bytes short", short_vote),
        ("kind 0x00", unknown_kind),
    ] {
        let mut stream = connect(address)?;
        stream.write_all(&frame)?;
        let (frames, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
        let said = error_of(&frames);
        ensure!(
            closed && (said.contains("malformed") || said.contains("unknown frame kind")),
            "{what}: {said}"
        );
    }
    // A WAL stream that sends a request is ended.
    let mut stream = connect(address)?;
    stream.write_all(
        &Message::StreamWal {
            key: KEY,
            from: Lsn(u64::MAX - 7),
        }
        .encode(),
    )?;
    stream.write_all(&Message::GetStatus { key: KEY }.encode())?;
    let (frames, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
    ensure!(
        closed && error_of(&frames).contains("takes no requests"),
        "a request on a WAL stream: {frames:?}"
    );
    println!("malformed bodies and a request on a WAL stream: refused, closed");
    Ok(())
}

/// More connections than the limit; the idle ones are reclaimed.
fn flood(address: &str) -> Result<()> {
    let mut conns = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 16 {
        conns.push(connect(address)?);
    }
    let began = Instant::now();
    let mut refused = 0;
    let mut reclaimed = 0;
    for stream in &mut conns {
        let (frames, closed) = frames_until_closed(stream, Duration::from_secs(5))?;
        let said = error_of(&frames);
        ensure!(closed, "a flood connection stayed open: {said}");
        if said == format!("too many connections ({MAX_CONNECTIONS})") {
            refused += 1;
        } else if said.contains("first frame") {
            reclaimed += 1;
        } else {
            bail!("a flood connection was told {said}");
        }
    }
    let took = began.elapsed();
    ensure!(
        refused >= 16 && reclaimed + refused == conns.len(),
        "{refused} refused, {reclaimed} reclaimed of {}",
        conns.len()
    );
    ensure!(
        took < Duration::from_millis(HANDSHAKE_MS) * 3,
        "reclaiming the silent connections took {took:?}"
    );
    println!(
        "{} connections at once: {refused} refused (limit {MAX_CONNECTIONS}), {reclaimed} silent ones closed after the {HANDSHAKE_MS} ms handshake limit (all gone in {took:?})",
        conns.len()
    );
    Ok(())
}

/// Sends `frame` a byte a second after `first`; how many bytes went out
/// before the server closed, and how long it took.
fn slow_loris(address: &str, first: Option<&Message>, frame: &[u8]) -> Result<(usize, Duration)> {
    let mut stream = connect(address)?;
    if let Some(first) = first {
        ask(&mut stream, first)?;
    }
    let began = Instant::now();
    for (sent, byte) in frame.iter().enumerate() {
        if stream.write_all(&[*byte]).is_err() {
            return Ok((sent, began.elapsed()));
        }
        let (_, closed) = frames_until_closed(&mut stream, Duration::from_secs(1))?;
        if closed {
            return Ok((sent + 1, began.elapsed()));
        }
    }
    bail!("a frame sent a byte a second was served whole");
}

fn slow_lorises(address: &str) -> Result<()> {
    let frame = Message::GetStatus { key: KEY }.encode();
    let status = Message::GetStatus { key: KEY };
    let mut threads = Vec::new();
    for i in 0..6 {
        let address = address.to_owned();
        let frame = frame.clone();
        let status = status.clone();
        threads.push(thread::spawn(move || {
            slow_loris(&address, (i % 2 == 1).then_some(&status), &frame)
        }));
    }
    for (i, thread) in threads.into_iter().enumerate() {
        let (sent, took) = thread.join().expect("a slow-loris thread")?;
        let limit = if i % 2 == 1 { FRAME_MS } else { HANDSHAKE_MS };
        ensure!(
            took < Duration::from_millis(limit + 2_500),
            "a byte-a-second frame lasted {took:?} ({sent} bytes), limit {limit} ms"
        );
        println!(
            "slow-loris {}: closed after {sent} bytes, {took:?} (limit {limit} ms)",
            if i % 2 == 1 {
                "after a first frame"
            } else {
                "as the first frame"
            }
        );
    }
    Ok(())
}

/// A WAL stream whose client never reads is dropped (the write timeout):
/// first ~16 MiB of WAL, more than the server's send buffer.
fn never_reads(address: &str, wal_start: Lsn, pg: &PgCluster) -> Result<()> {
    pg.psql(
        "postgres",
        "CREATE TABLE filler AS SELECT (SELECT string_agg(md5(i::text || random()::text || g::text), '') \
         FROM generate_series(1, 60) AS i) AS pad FROM generate_series(1, 8000) AS g",
    )?;
    // A small receive buffer, set before the connection exists so the
    // window stays small: the server's writes soon wait for room.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_recv_buffer_size(4096)?;
    let addr: std::net::SocketAddr = address.parse().context("address")?;
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    let mut stream: TcpStream = socket.into();
    stream.write_all(
        &Message::StreamWal {
            key: KEY,
            from: wal_start,
        }
        .encode(),
    )?;
    thread::sleep(Duration::from_millis(WRITE_MS + 1_500));
    let (frames, closed) = frames_until_closed(&mut stream, Duration::from_secs(5))?;
    let wal: usize = frames
        .iter()
        .map(|frame| match frame {
            Message::Wal { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    ensure!(
        closed,
        "a WAL stream nobody reads stayed open ({wal} bytes of WAL came)"
    );
    println!("a WAL stream whose client never read was closed ({wal} bytes of WAL had gone out)");
    Ok(())
}

type Attack<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>);

fn sk1_args(id: u32) -> Vec<String> {
    if id != 1 {
        return Vec::new();
    }
    [
        ("--max-connections", MAX_CONNECTIONS as u64),
        ("--handshake-timeout-ms", HANDSHAKE_MS),
        ("--frame-timeout-ms", FRAME_MS),
        ("--idle-timeout-ms", IDLE_MS),
        ("--write-timeout-ms", WRITE_MS),
    ]
    .iter()
    .flat_map(|(flag, value)| [(*flag).to_owned(), value.to_string()])
    .collect()
}

/// Every acknowledged commit is in the ledger, the safekeepers' WAL is the
/// compute's, and sk1's control file loads with the elected term.
fn check_afterwards(
    pg: &PgCluster,
    safekeepers: &mut [Safekeeper],
    ledger: &Ledger,
    won: &Won,
) -> Result<()> {
    ledger.check()?;
    let acked = ledger.acked.lock().expect("lock").clone();
    let widest = acked
        .windows(2)
        .map(|pair| pair[1].1 - pair[0].1)
        .max()
        .unwrap_or_default();
    println!(
        "{} commits acknowledged during the attacks; the widest gap between two was {widest:?}",
        acked.len()
    );
    let rows: usize = pg
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM ledger WHERE id < {}", acked.len()),
        )?
        .trim()
        .parse()?;
    ensure!(
        rows == acked.len(),
        "{} commits acknowledged, {rows} in the ledger",
        acked.len()
    );

    // sk3 catches up; every safekeeper's WAL is the compute's.
    safekeepers[2].start()?;
    let flushed: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?;
    check_identical_wal(
        safekeepers,
        KEY,
        &pg.datadir().join("pg_wal"),
        won.start,
        flushed,
    )?;
    let control = ControlFile::load(&safekeepers[0].data.join(KEY_TEXT))
        .context("sk1's control file")?
        .context("sk1 has a control file")?
        .file;
    ensure!(
        control.state.term == won.term && control.state.members.members().len() == 3,
        "sk1's control file: term {}, members {}",
        control.state.term,
        control.state.members
    );
    println!(
        "sk1's control file loads (term {}, 3 members)",
        control.state.term
    );
    Ok(())
}

#[test]
fn a_safekeeper_under_hostile_clients_keeps_serving_its_compute() -> Result<()> {
    let test_began = Instant::now();
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, compute_options())?;
    pg.start()?;
    let root = tempfile::tempdir()?;
    let (mut safekeepers, addresses) = start_safekeepers_with(
        Path::new(env!("CARGO_BIN_EXE_quire")),
        root.path(),
        &sk1_args,
    )?;
    let won = bootstrap(&pg, &addresses)?;
    pg.psql("postgres", "CREATE TABLE ledger (id int PRIMARY KEY)")?;
    // With sk3 down every commit needs sk1.
    safekeepers[2].kill();
    let ledger = Arc::new(Ledger {
        acked: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let writer = {
        let ledger = Arc::clone(&ledger);
        let psql: PathBuf = pg.install().bin("psql");
        let port = pg.port();
        thread::spawn(move || ledger.run(&psql, port))
    };
    ledger.expect_progress(0, "the start")?;
    let address = addresses[0].clone();
    let pid = safekeepers[0].pid().context("sk1's pid")?;
    let rss_before = rss_kib(pid)?;

    let attacks: Vec<Attack> = vec![
        (
            "garbage and truncated frames",
            Box::new(|| garbage_and_truncation(&address)),
        ),
        (
            "oversized headers",
            Box::new(|| oversized_headers(&address)),
        ),
        (
            "wrong kinds, forgeries and malformed frames",
            Box::new(|| wrong_frames(&address, won.term)),
        ),
        ("malformed frames", Box::new(|| malformed_frames(&address))),
        ("a connection flood", Box::new(|| flood(&address))),
        ("slow-loris frames", Box::new(|| slow_lorises(&address))),
        (
            "a WAL stream never read",
            Box::new(|| never_reads(&address, won.start, &pg)),
        ),
    ];
    for (phase, attack) in &attacks {
        let before = ledger.count();
        let outcome = attack();
        ledger.check()?;
        outcome.with_context(|| format!("attack: {phase}"))?;
        still_serving(&mut safekeepers[0], &ledger, before, phase)?;
    }
    let rss_after = rss_kib(pid)?;
    println!("sk1's resident memory: {rss_before} KiB before the attacks, {rss_after} KiB after");
    ensure!(
        rss_after < rss_before + 64 * 1024,
        "sk1 grew from {rss_before} KiB to {rss_after} KiB"
    );

    ledger.stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");
    check_afterwards(&pg, &mut safekeepers, &ledger, &won)?;
    ensure!(safekeepers[0].is_running(), "sk1 died at the end");
    ensure!(
        test_began.elapsed() < TEST_DEADLINE,
        "the test took {:?}",
        test_began.elapsed()
    );
    println!("the test took {:?}", test_began.elapsed());
    Ok(())
}
