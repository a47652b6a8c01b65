//! Crash safety: a process writing to a timeline (puts, freezes, flushes,
//! compactions, image creation, GC) is killed with SIGKILL at random points,
//! many times. After each restart the timeline loads, every layer it lists
//! passes a full checksum scrub, no file it does not list remains, and
//! every read at or above the GC cutoff and below the persisted
//! disk-consistent LSN gives the value the deterministic workload implies.
//! The writer then re-ingests from the disk-consistent LSN, as a
//! pageserver re-ingests WAL.
//!
//! The writer is this test binary itself, run with `--ignored
//! crash_writer` and the directory in `QUIRE_CRASH_DIR`; it reports each
//! phase on stdout, so the parent knows what a kill interrupted.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, ImagePolicy, Timeline, Value, materialize};
use support::AppendRedo;

mod support;

const TENANT: [u8; 16] = [3; 16];
const TIMELINE: [u8; 16] = [4; 16];
/// LSN of the workload's first value.
const FIRST_LSN: u64 = 1000;
/// LSN distance between values.
const LSN_STEP: u64 = 8;
/// Keys written.
const KEYS: u64 = 48;
/// WAL kept behind the last record by GC.
const GC_HORIZON: u64 = 400 * LSN_STEP;

/// The workload's `i`th value: its key, LSN and value.
fn workload(i: u64) -> (Key, Lsn, Value) {
    let key = Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 1,
            rel_number: 20000 + (i * 7919 % KEYS) as u32 % 4,
            fork: ForkNumber::Main,
        },
        BlockNo((i * 7919 % KEYS) as u32),
    );
    let lsn = Lsn(FIRST_LSN + i * LSN_STEP);
    let pattern = |len: usize| -> Rc<[u8]> {
        (0..len)
            .map(|n| (i as usize * 31 + n * 7) as u8)
            .collect::<Vec<u8>>()
            .into()
    };
    let value = if i.is_multiple_of(5) {
        Value::Image(pattern(8192))
    } else {
        Value::Record {
            will_init: i.is_multiple_of(11),
            bytes: pattern(100 + (i % 300) as usize),
        }
    };
    (key, lsn, value)
}

/// The index of the first workload value at or above `lsn`.
fn first_index_at(lsn: Lsn) -> u64 {
    lsn.0.saturating_sub(FIRST_LSN).div_ceil(LSN_STEP)
}

/// Checks the reloaded timeline against the workload; returns reads checked.
async fn verify(timeline: &Timeline) -> usize {
    let consistent = timeline.disk_consistent_lsn();
    let cutoff = timeline.gc_cutoff_lsn();
    for layer in timeline.layer_map().layers() {
        layer.verify().await.unwrap();
    }
    let end = first_index_at(consistent);
    let mut model: BTreeMap<(Key, Lsn), Value> = BTreeMap::new();
    for i in 0..end {
        let (key, lsn, value) = workload(i);
        model.insert((key, lsn), value);
    }
    let mut checked = 0;
    let first = first_index_at(cutoff);
    let step = ((end.saturating_sub(first)) / 20).max(1);
    let mut i = first;
    while i < end {
        let (_, at, _) = workload(i);
        for k in 0..KEYS {
            let (key, _, _) = workload(k);
            let got = timeline.get(key, at).await.unwrap();
            let mut chain = Vec::new();
            for ((_, lsn), value) in model.range((key, Lsn(0))..=(key, at)).rev() {
                chain.push((*lsn, value.clone()));
                if value.is_base() {
                    break;
                }
            }
            chain.reverse();
            let want = match chain.first() {
                Some((lsn, Value::Image(bytes))) => quire_shard::ReconstructInputs {
                    image: Some((*lsn, bytes.clone())),
                    records: chain[1..].to_vec(),
                },
                _ => quire_shard::ReconstructInputs {
                    image: None,
                    records: chain,
                },
            };
            let got_value = materialize(&AppendRedo, key, at, &got).await.unwrap();
            let want_value = materialize(&AppendRedo, key, at, &want).await.unwrap();
            assert!(
                got_value == want_value,
                "key {key} at {at} differs after restart"
            );
            checked += 1;
        }
        i += step;
    }
    checked
}

/// The writer: load (or create), verify, then write until killed.
async fn writer(dir: &Path) {
    let core = CoreContext::new(8 << 20);
    let timeline = if dir.join("metadata").exists() {
        Timeline::load(dir, TENANT, TIMELINE, core, None)
            .await
            .unwrap()
    } else {
        Timeline::create(dir, TENANT, TIMELINE, Lsn(FIRST_LSN), core)
            .await
            .unwrap()
    };
    let checked = verify(&timeline).await;
    // Nothing in the directory but the metadata and the listed layers.
    let listed: Vec<String> = timeline
        .layer_map()
        .names()
        .iter()
        .map(ToString::to_string)
        .collect();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "metadata" || listed.contains(&name),
            "stray file {name}"
        );
    }
    println!(
        "verified {checked} {} {}",
        timeline.disk_consistent_lsn().0,
        timeline.layer_map().len()
    );
    let policy = ImagePolicy {
        partition_keys: 16,
        max_delta_layers: 2,
        max_chain_records: 6,
    };
    let mut i = first_index_at(timeline.disk_consistent_lsn());
    loop {
        println!("phase put");
        for _ in 0..150 {
            let (key, lsn, value) = workload(i);
            timeline.put(key, lsn, value).await.unwrap();
            i += 1;
        }
        timeline.freeze();
        println!("phase flush");
        timeline.flush().await.unwrap();
        if i % 600 < 150 {
            println!("phase compact");
            timeline.compact_l0(3, 256 << 10).await.unwrap();
        }
        if i % 900 < 150 {
            println!("phase images");
            timeline
                .create_image_layers(&AppendRedo, policy)
                .await
                .unwrap();
        }
        {
            println!("phase gc");
            let last = timeline.last_record_lsn();
            timeline
                .gc(Lsn(last.0.saturating_sub(GC_HORIZON)), &[])
                .await
                .unwrap();
        }
    }
}

#[test]
#[ignore = "run by writer_survives_sigkill as its child process"]
fn crash_writer() {
    let dir = std::env::var_os("QUIRE_CRASH_DIR").expect("QUIRE_CRASH_DIR");
    run_local(
        &LocalConfig {
            io_memory_bytes: 2 << 20,
            ..LocalConfig::default()
        },
        move || async move { writer(Path::new(&dir)).await },
    )
    .unwrap();
}

#[test]
fn writer_survives_sigkill() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let rounds: u32 = std::env::var("QUIRE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut killed_in: BTreeMap<String, u32> = BTreeMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut consistent = 0u64;
    let mut reads = 0u64;
    for round in 0..=rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "crash_writer", "--nocapture"])
            .env("QUIRE_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the verification of what the last incarnation left.
        let verified = loop {
            let line = received
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("round {round}: the writer did not verify"));
            if let Some(rest) = line.strip_prefix("verified ") {
                break rest.to_owned();
            }
        };
        let fields: Vec<u64> = verified.split(' ').map(|f| f.parse().unwrap()).collect();
        assert!(
            fields[1] >= consistent,
            "disk-consistent LSN went back from {consistent} to {}",
            fields[1]
        );
        consistent = fields[1];
        reads += fields[0];
        if round == rounds {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        // Run for a pseudo-random 20-700 ms, then SIGKILL.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let deadline = Instant::now() + Duration::from_millis(20 + seed % 680);
        let mut phase = String::from("start");
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = line.strip_prefix("phase ") {
                        phase = p.to_owned();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("round {round}: the writer exited: {:?}", child.wait())
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the writer ended by itself"
        );
        while let Ok(line) = received.try_recv() {
            if let Some(p) = line.strip_prefix("phase ") {
                phase = p.to_owned();
            }
        }
        *killed_in.entry(phase).or_default() += 1;
    }
    println!(
        "{rounds} SIGKILLs, by phase: {killed_in:?}; final disk-consistent LSN {consistent}; {reads} reads verified"
    );
    assert!(
        consistent > FIRST_LSN,
        "the writer never persisted anything"
    );
}
