//! Object storage failing under the runtime, on a real S3 server (moto):
//! killed and restarted in the middle of a multipart upload (the upload
//! finishes once it is back), stalled with SIGSTOP (requests time out, are
//! retried, and succeed after SIGCONT; with too few attempts they fail,
//! bounded), and a full queue refusing work at once instead of growing.

mod support;

use std::time::{Duration, Instant};

use quire_remote::{Download, PutBytes, RemoteError, UploadFile, WriteMode};
use support::{Backend, block_on, start, write_file};

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_upload_survives_the_server_killed_and_restarted_midway() {
    let mut backend = Backend::s3();
    let mut config = backend.config();
    config.limits.parts_in_flight = 1;
    let storage = start(config);
    let local = tempfile::tempdir().unwrap();
    let bytes = write_file(&local.path().join("layer"), 40 << 20, 7);
    let key = "tenants/t/timelines/a/layer-g00000001".to_owned();
    let pending = storage
        .try_submit(UploadFile {
            local: local.path().join("layer"),
            key: key.clone(),
        })
        .unwrap();
    let server = backend.server().unwrap();
    // Once moto has answered the multipart upload's creation, parts are on
    // their way: kill it then.
    wait_until(
        "the multipart upload starts",
        Duration::from_secs(60),
        || server.log().contains("?uploads"),
    );
    server.kill().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    server.restart().unwrap();
    let sent = block_on(pending).expect("the upload finishes once the server is back");
    assert_eq!(sent.size, bytes.len() as u64);
    assert!(
        storage.metrics().retries_of("upload") >= 1,
        "the kill did not hit the upload"
    );
    let back = local.path().join("layer.back");
    block_on(storage.call(Download {
        key,
        local: back.clone(),
        expect: Some(sent),
    }))
    .unwrap();
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "downloaded bytes differ"
    );
    storage.shutdown();
}

#[test]
fn a_stalled_server_is_retried_until_it_answers_and_no_longer() {
    let backend = Backend::s3();
    let mut config = backend.config();
    config.retry.request_timeout = Duration::from_millis(500);
    config.retry.request_retries = 0;
    let storage = start(config.clone());
    let put = |key: &str| PutBytes {
        key: key.to_owned(),
        bytes: bytes::Bytes::from_static(b"value"),
        mode: WriteMode::Overwrite,
    };
    // Connected once, so the stall hits an established client too.
    block_on(storage.call(put("warm"))).unwrap();
    let Backend::S3(server) = &backend else {
        unreachable!()
    };
    server.signal("STOP").unwrap();
    let pending = storage.try_submit(put("during-stall")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.signal("CONT").unwrap();
    block_on(pending).expect("the put succeeds once the server answers");
    assert!(storage.metrics().retries_of("put") >= 1);

    // With two attempts, a stall longer than both fails the operation.
    let mut impatient = config;
    impatient.retry.attempts_max = 2;
    let short = start(impatient);
    server.signal("STOP").unwrap();
    let started = Instant::now();
    let error = block_on(short.call(put("never")));
    server.signal("CONT").unwrap();
    let error = error.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(short.metrics().retries_of("put"), 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    storage.shutdown();
    short.shutdown();
}

#[test]
fn a_full_queue_is_refused_at_once_and_shutdown_answers_everything() {
    let backend = Backend::s3();
    let mut config = backend.config();
    config.limits.queue_max = 2;
    config.limits.concurrency_max = 1;
    let storage = start(config);
    let Backend::S3(server) = &backend else {
        unreachable!()
    };
    let put = |n: u32| PutBytes {
        key: format!("k{n}"),
        bytes: bytes::Bytes::from_static(b"value"),
        mode: WriteMode::Overwrite,
    };
    server.signal("STOP").unwrap();
    let running = storage.try_submit(put(0)).unwrap();
    wait_until("the first put runs", Duration::from_secs(10), || {
        storage.metrics().in_flight.get() == 1
    });
    let queued = [
        storage.try_submit(put(1)).unwrap(),
        storage.try_submit(put(2)).unwrap(),
    ];
    let started = Instant::now();
    let refused = storage.try_submit(put(3)).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(!refused.shut_down);
    assert_eq!(refused.operation.key, "k3", "the operation is given back");
    assert_eq!(storage.metrics().queue_depth.get(), 2);
    assert_eq!(storage.metrics().queue_full.get(), 1);

    storage.shutdown();
    server.signal("CONT").unwrap();
    for pending in std::iter::once(running).chain(queued) {
        assert!(matches!(block_on(pending), Err(RemoteError::ShutDown)));
    }
    let after = storage.try_submit(put(4)).unwrap_err();
    assert!(after.shut_down);
    assert_eq!(storage.metrics().queue_depth.get(), 0);
}
