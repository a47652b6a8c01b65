//! Object storage throughput: the pageserver's uploads and downloads
//! (`quire-remote`'s `UploadFile` and `Download`: files streamed in parts,
//! CRC-32C computed, downloads checked, `fsync`ed and renamed) beside a
//! plain `object_store` put and get of the same bytes to the same S3 server
//! (moto on loopback, as the tests use), in one run: rounds alternate
//! between the two, every transfer of a round queued at once (as the
//! uploader queues a sync's layers), and the best round of each counts.
//! The goal: the pageserver's path within 0.8× of the plain client. A
//! file above the part size goes up as a multipart upload, which costs
//! moto far more than one `PUT`; the plain client's multipart upload of
//! the same files is measured beside it then.
//!
//! Run: `cargo bench -p quire-bench --bench remote_transfer`
//! (`QUIRE_BENCH_REMOTE_FILES` files of `QUIRE_BENCH_REMOTE_MIB` MiB each,
//! default 6 of 16; `QUIRE_BENCH_REMOTE_ROUNDS`, default 3). Ends with one
//! line a script can read: `remote_transfer: upload_mib_s=… plain_put_mib_s=…
//! upload_ratio=… download_mib_s=… plain_get_mib_s=… download_ratio=…`.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};
use quire_cluster::S3Server;
use quire_remote::{Download, RemoteConfig, RemoteStorage, Transferred, UploadFile};

const BUCKET: &str = "quire-bench";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `len` bytes of a xorshift stream (incompressible, like layer files).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn plain_store(s3: &S3Server) -> Arc<dyn ObjectStore> {
    let store = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_endpoint(s3.endpoint())
        .with_access_key_id("quire-test")
        .with_secret_access_key("quire-test-secret")
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    Arc::new(store)
}

fn quire_storage(s3: &S3Server) -> RemoteStorage {
    let env = s3.env();
    let config = RemoteConfig::from_url_with_env(&format!("s3://{BUCKET}"), |name| {
        env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    })
    .unwrap();
    RemoteStorage::start(config, &prometheus::Registry::new()).unwrap()
}

/// MiB per second for `bytes` in `elapsed`.
fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / elapsed.as_secs_f64()
}

struct Files {
    paths: Vec<PathBuf>,
    contents: Vec<Vec<u8>>,
    bytes: u64,
}

fn make_files(dir: &Path, count: usize, mib: usize) -> Files {
    let mut paths = Vec::new();
    let mut contents = Vec::new();
    for i in 0..count {
        let bytes = pseudo_random(mib << 20, i as u64 + 1);
        let path = dir.join(format!("layer-{i}"));
        std::fs::write(&path, &bytes).unwrap();
        paths.push(path);
        contents.push(bytes);
    }
    let bytes = contents.iter().map(|c| c.len() as u64).sum();
    Files {
        paths,
        contents,
        bytes,
    }
}

fn upload_round(
    storage: &RemoteStorage,
    files: &Files,
    round: usize,
) -> (Duration, Vec<Transferred>) {
    let began = Instant::now();
    let sent = futures::executor::block_on(async {
        let mut pending = Vec::new();
        for (i, path) in files.paths.iter().enumerate() {
            let upload = UploadFile {
                local: path.clone(),
                key: format!("quire/{round}/layer-{i}"),
            };
            pending.push(storage.submit(upload).await.unwrap());
        }
        join_all(pending).await
    });
    let elapsed = began.elapsed();
    (elapsed, sent.into_iter().map(Result::unwrap).collect())
}

fn plain_put_round(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    files: &Files,
    round: usize,
) -> Duration {
    let began = Instant::now();
    runtime.block_on(async {
        let puts = files.contents.iter().enumerate().map(|(i, bytes)| {
            let store = Arc::clone(store);
            let payload = PutPayload::from(bytes.clone());
            async move {
                store
                    .put(
                        &ObjectPath::from(format!("plain/{round}/layer-{i}")),
                        payload,
                    )
                    .await
                    .unwrap();
            }
        });
        join_all(puts).await;
    });
    began.elapsed()
}

/// The plain client's multipart upload, in the pageserver's part size
/// (what a file above one part costs the store, without our file reads
/// and checksums).
fn plain_multipart_round(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    files: &Files,
    round: usize,
    part_size: usize,
) -> Duration {
    let began = Instant::now();
    runtime.block_on(async {
        let uploads = files.contents.iter().enumerate().map(|(i, bytes)| {
            let store = Arc::clone(store);
            async move {
                let path = ObjectPath::from(format!("multipart/{round}/layer-{i}"));
                let mut upload = store.put_multipart(&path).await.unwrap();
                let parts: Vec<_> = bytes
                    .chunks(part_size)
                    .map(|chunk| upload.put_part(PutPayload::from(chunk.to_vec())))
                    .collect();
                for part in join_all(parts).await {
                    part.unwrap();
                }
                upload.complete().await.unwrap();
            }
        });
        join_all(uploads).await;
    });
    began.elapsed()
}

fn download_round(
    storage: &RemoteStorage,
    sent: &[Transferred],
    dir: &Path,
    round: usize,
) -> Duration {
    let began = Instant::now();
    futures::executor::block_on(async {
        let mut pending = Vec::new();
        for (i, expect) in sent.iter().enumerate() {
            let download = Download {
                key: format!("quire/0/layer-{i}"),
                local: dir.join(format!("down-{round}-{i}")),
                expect: Some(*expect),
            };
            pending.push(storage.submit(download).await.unwrap());
        }
        for result in join_all(pending).await {
            result.unwrap();
        }
    });
    began.elapsed()
}

fn plain_get_round(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    count: usize,
    dir: &Path,
    round: usize,
) -> Duration {
    let began = Instant::now();
    runtime.block_on(async {
        let gets = (0..count).map(|i| {
            let store = Arc::clone(store);
            let local = dir.join(format!("plain-{round}-{i}"));
            async move {
                let bytes = store
                    .get(&ObjectPath::from(format!("plain/0/layer-{i}")))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                tokio::fs::write(&local, &bytes).await.unwrap();
            }
        });
        join_all(gets).await;
    });
    began.elapsed()
}

fn main() {
    let count = env_number("QUIRE_BENCH_REMOTE_FILES", 6);
    let mib = env_number("QUIRE_BENCH_REMOTE_MIB", 16);
    let rounds = env_number("QUIRE_BENCH_REMOTE_ROUNDS", 3).max(1);
    let s3 = S3Server::start(BUCKET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = make_files(dir.path(), count, mib);
    let storage = quire_storage(&s3);
    let plain = plain_store(&s3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "remote_transfer: {count} files of {mib} MiB to moto at {}, {rounds} rounds each, alternating",
        s3.endpoint()
    );
    let part_size = quire_remote::Limits::default().part_size;
    let (mut up, mut put, mut down, mut get) = (f64::MIN, f64::MIN, f64::MIN, f64::MIN);
    let mut multipart = f64::MIN;
    let mut sent = Vec::new();
    for round in 0..rounds {
        let (elapsed, transferred) = upload_round(&storage, &files, round);
        if round == 0 {
            sent = transferred;
        }
        up = up.max(rate(files.bytes, elapsed));
        put = put.max(rate(
            files.bytes,
            plain_put_round(&runtime, &plain, &files, round),
        ));
        if mib << 20 > part_size {
            multipart = multipart.max(rate(
                files.bytes,
                plain_multipart_round(&runtime, &plain, &files, round, part_size),
            ));
        }
        down = down.max(rate(
            files.bytes,
            download_round(&storage, &sent, dir.path(), round),
        ));
        get = get.max(rate(
            files.bytes,
            plain_get_round(&runtime, &plain, count, dir.path(), round),
        ));
        println!(
            "round {round}: best so far upload {up:.1} MiB/s, plain put {put:.1}, download {down:.1}, plain get {get:.1}"
        );
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("down-") || name.starts_with("plain-") {
                std::fs::remove_file(path).unwrap();
            }
        }
    }
    if multipart > 0.0 {
        println!(
            "remote_transfer: files above the {} MiB part size go up in parts; the plain client's multipart upload of them: {multipart:.1} MiB/s (ratio {:.2})",
            part_size >> 20,
            up / multipart
        );
    }
    println!(
        "remote_transfer: upload_mib_s={up:.1} plain_put_mib_s={put:.1} upload_ratio={:.2} download_mib_s={down:.1} plain_get_mib_s={get:.1} download_ratio={:.2}",
        up / put,
        down / get
    );
}
