//! Tasks and time on a single executor: a task is joined by awaiting it,
//! runs on when detached and stops when its handle is dropped; sleeps and
//! timeouts last as long as asked; a bad executor configuration is an
//! error.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use quire_io::{
    Elapsed, ExecutorError, LocalConfig, run_local, sleep, spawn_executor, spawn_local, timeout,
    timeout_at,
};

#[test]
fn tasks_join_detach_and_cancel() {
    let config = LocalConfig {
        name: "runtime-test".into(),
        ..LocalConfig::default()
    };
    let (joined, detached, cancelled) = run_local(&config, || async {
        let joined = spawn_local(async { 6 * 7 }).await;
        let detached_ran = Rc::new(Cell::new(false));
        let flag = Rc::clone(&detached_ran);
        spawn_local(async move {
            sleep(Duration::from_millis(5)).await;
            flag.set(true);
        })
        .detach();
        let cancelled_ran = Rc::new(Cell::new(false));
        let flag = Rc::clone(&cancelled_ran);
        drop(spawn_local(async move {
            sleep(Duration::from_millis(5)).await;
            flag.set(true);
        }));
        sleep(Duration::from_millis(50)).await;
        (joined, detached_ran.get(), cancelled_ran.get())
    })
    .unwrap();
    assert_eq!(joined, 42);
    assert!(detached, "a detached task runs to its end");
    assert!(!cancelled, "a dropped task is cancelled");
}

#[test]
fn sleeps_and_timeouts_last_as_long_as_asked() {
    let handle = spawn_executor(&LocalConfig::default(), || async {
        let began = Instant::now();
        sleep(Duration::from_millis(30)).await;
        assert!(began.elapsed() >= Duration::from_millis(30));

        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
        let began = Instant::now();
        let late = timeout(Duration::from_millis(40), sleep(Duration::from_secs(30))).await;
        assert_eq!(late, Err(Elapsed(Duration::from_millis(40))));
        let took = began.elapsed();
        assert!(took >= Duration::from_millis(40) && took < Duration::from_secs(5));
        let error = std::io::Error::from(Elapsed(Duration::from_millis(40)));
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);

        // A deadline already past still lets a ready future finish.
        assert_eq!(timeout_at(Instant::now(), async { 1 }).await, Ok(1));
        assert!(
            timeout_at(Instant::now(), sleep(Duration::from_secs(30)))
                .await
                .is_err()
        );
        "done"
    })
    .unwrap();
    assert_eq!(handle.join().unwrap(), "done");
}

#[test]
fn an_executor_on_a_cpu_that_does_not_exist_is_an_error() {
    let config = LocalConfig {
        cpu: Some(1 << 20),
        ..LocalConfig::default()
    };
    let error = run_local(&config, || async {}).unwrap_err();
    assert!(matches!(error, ExecutorError::Start { .. }), "{error}");
    assert!(error.to_string().contains("on CPU 1048576"), "{error}");
}

#[test]
fn a_panicking_task_is_a_join_error() {
    let error = run_local(&LocalConfig::default(), || async {
        panic!("the task fails");
    })
    .unwrap_err();
    assert!(matches!(error, ExecutorError::Join { .. }), "{error}");
}
