//! Three `quire safekeeper` processes and a real Postgres 17 with
//! `synchronous_standby_names = 'ANY 2 (sk1, sk2, sk3)'`: after the
//! election the safekeepers stream the compute's WAL, commits return with
//! two of three up, wait with two down and resume when one returns; a
//! safekeeper killed with SIGKILL catches up after its restart; at the end
//! every safekeeper's WAL is byte-identical to the compute's own `pg_wal`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions};
use quire_postgres::Lsn;
use quire_safekeeper::compute_control;
use quire_safekeeper::wire::{Message, TimelineKey};
use quire_tests::pg_install;

struct Safekeeper {
    id: u32,
    address: String,
    data: PathBuf,
    peers: Vec<String>,
    child: Option<Child>,
}

impl Safekeeper {
    fn start(&mut self) -> Result<()> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quire"));
        command
            .arg("safekeeper")
            .args(["--id", &self.id.to_string(), "--listen", &self.address])
            .arg("--data")
            .arg(&self.data)
            .stdout(Stdio::null());
        for peer in &self.peers {
            command.args(["--peer", peer]);
        }
        self.child = Some(command.spawn().context("start a safekeeper")?);
        let began = Instant::now();
        while std::net::TcpStream::connect(&self.address).is_err() {
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "safekeeper {} does not listen",
                self.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_address() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Runs `task` on a glommio executor (the safekeeper client is async).
fn on_executor<T, F, Fut>(task: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(task)
        .expect("executor")
        .join()
        .expect("task")
}

fn status(address: &str, key: TimelineKey) -> Result<(u64, Lsn, Lsn)> {
    let address = address.to_owned();
    on_executor(move || async move {
        let mut conn = quire_safekeeper::server::conn::FramedConn::connect(&address).await?;
        match conn.call(&Message::GetStatus { key }).await? {
            Message::Status {
                term,
                flush,
                commit,
                ..
            } => Ok((term, flush, commit)),
            other => bail!("status: {other:?}"),
        }
    })
}

fn insert(pg: &PgCluster, from: u32, count: u32) -> Result<Duration> {
    let began = Instant::now();
    for id in from..from + count {
        pg.psql("postgres", &format!("INSERT INTO ledger VALUES ({id})"))?;
    }
    Ok(began.elapsed() / count)
}

/// Bytes `[from, to)` of the WAL segment files in `dir`.
fn wal_bytes(dir: &Path, from: Lsn, to: Lsn) -> Result<Vec<u8>> {
    let segment = 16u64 << 20;
    let mut out = Vec::new();
    let mut at = from.0;
    while at < to.0 {
        let number = at / segment;
        let name = format!("{:08X}{:08X}{:08X}", 1, number / 256, number % 256);
        let bytes = std::fs::read(dir.join(&name)).with_context(|| format!("read {name}"))?;
        let start = usize::try_from(at % segment)?;
        let end = usize::try_from((to.0.min((number + 1) * segment)) - number * segment)?;
        out.extend_from_slice(&bytes[start..end]);
        at = (number + 1) * segment;
    }
    Ok(out)
}

/// Three safekeepers on free loopback ports, each naming the others.
fn start_safekeepers(root: &Path) -> Result<(Vec<Safekeeper>, Vec<String>)> {
    let addresses: Vec<String> = (0..3).map(|_| free_address()).collect::<Result<_>>()?;
    let mut safekeepers: Vec<Safekeeper> = (0..3)
        .map(|i| Safekeeper {
            id: i + 1,
            address: addresses[i as usize].clone(),
            data: root.join(format!("sk{}", i + 1)),
            peers: (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("{}={}", j + 1, addresses[j as usize]))
                .collect(),
            child: None,
        })
        .collect();
    for sk in &mut safekeepers {
        sk.start()?;
    }
    Ok((safekeepers, addresses))
}

/// Waits for each safekeeper to flush and commit `flushed`, then compares
/// its WAL with the compute's `pg_wal`.
fn check_identical_wal(
    safekeepers: &[Safekeeper],
    key: TimelineKey,
    pg_wal: &Path,
    wal_start: Lsn,
    flushed: Lsn,
) -> Result<()> {
    let reference = wal_bytes(pg_wal, wal_start, flushed)?;
    for sk in safekeepers {
        let began = Instant::now();
        loop {
            let (term, flush, commit) = status(&sk.address, key)?;
            if flush >= flushed && commit >= flushed {
                println!("sk{}: term {term}, flush {flush}, commit {commit}", sk.id);
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "sk{} stays at flush {flush} commit {commit}, the compute flushed {flushed}",
                sk.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = sk
            .data
            .join("11111111111111111111111111111111")
            .join("22222222222222222222222222222222");
        let theirs = wal_bytes(&dir, wal_start, flushed)?;
        ensure!(
            theirs == reference,
            "sk{}'s WAL differs from the compute's in {wal_start}..{flushed}",
            sk.id
        );
    }
    println!(
        "all 3 safekeepers hold the compute's WAL {wal_start}..{flushed} byte for byte ({} bytes)",
        reference.len()
    );
    Ok(())
}

/// With `down` stopped as well (one of three left), a commit waits; it
/// returns once `down` is back.
fn commit_waits_for_a_second_safekeeper(pg: &PgCluster, down: &mut Safekeeper) -> Result<()> {
    down.kill();
    let mut waiting = pg
        .client("psql")
        .args([
            "--no-psqlrc",
            "--quiet",
            "--command",
            "INSERT INTO ledger VALUES (5000)",
        ])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        waiting.try_wait()?.is_none(),
        "a commit returned with only one safekeeper up"
    );
    let began = Instant::now();
    down.start()?;
    let done = loop {
        if let Some(status) = waiting.try_wait()? {
            break status;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "the waiting commit never returned"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(done.success(), "the waiting commit failed");
    println!(
        "a commit waited 2 s with 1 of 3 up and returned {:?} after sk2 was started again",
        began.elapsed()
    );
    Ok(())
}

#[test]
fn commits_need_two_of_three_safekeepers_and_their_wal_matches_the_compute() -> Result<()> {
    let install = pg_install()?;
    let options = PgClusterOptions::default()
        .setting("synchronous_standby_names", "'ANY 2 (sk1, sk2, sk3)'")
        .setting("max_wal_senders", "10")
        .setting("max_replication_slots", "10");
    let mut pg = PgCluster::create(&install, options)?;
    pg.start()?;
    let root = tempfile::tempdir()?;
    let (mut safekeepers, addresses) = start_safekeepers(root.path())?;
    let system_id: u64 = pg
        .psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )?
        .trim()
        .parse()?;
    let insert_lsn: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .parse()?;
    let segment = 16u64 << 20;
    let wal_start = Lsn(insert_lsn.0 / segment * segment);
    let key = TimelineKey {
        tenant: [0x11; 16],
        timeline: [0x22; 16],
    };
    let compute = format!("127.0.0.1:{}", pg.port());
    let won = {
        let addresses = addresses.clone();
        on_executor(move || async move {
            compute_control::create_timeline(&addresses, key, wal_start, 16 << 20, system_id)
                .await?;
            compute_control::elect(&addresses, key, &compute, 16 << 20).await
        })?
    };
    println!(
        "elected term {} at {} (donor {})",
        won.term, won.start, won.donor
    );
    ensure!(
        won.start == wal_start,
        "the first election starts at the timeline's start"
    );

    // Nothing could commit before the election (no standby streamed).
    pg.psql("postgres", "CREATE TABLE ledger (id int PRIMARY KEY)")?;
    let all_up = insert(&pg, 0, 50)?;
    println!("commit with 3 of 3 safekeepers: {all_up:?} per transaction (psql each)");

    safekeepers[0].kill();
    let two_up = insert(&pg, 1000, 50)?;
    println!("commit with 2 of 3 (sk1 killed): {two_up:?} per transaction");

    commit_waits_for_a_second_safekeeper(&pg, &mut safekeepers[1])?;

    safekeepers[0].start()?;
    insert(&pg, 2000, 20)?;
    let count: u32 = pg
        .psql("postgres", "SELECT count(*) FROM ledger")?
        .trim()
        .parse()?;
    ensure!(count == 50 + 50 + 1 + 20, "ledger has {count} rows");

    // Every safekeeper catches up to the compute's flushed WAL, and holds
    // exactly its bytes.
    let flushed: Lsn = pg
        .psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()?;
    check_identical_wal(
        &safekeepers,
        key,
        &pg.datadir().join("pg_wal"),
        wal_start,
        flushed,
    )?;
    pg.stop()?;
    Ok(())
}
