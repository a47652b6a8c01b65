//! The redo pool never stalls its core, against real `postgres --wal-redo
//! quire_walredo` processes: a stopped (hung) process holds up only its own
//! request while other tasks and tenants go on; a process killed in the
//! middle of a merged batch is replaced in the background and every
//! requester gets its page; concurrent requests of a tenant share round
//! trips; a warm pool starts no process on the request path.

use std::cell::Cell;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod support;
use support::{on_executor, page, rel};

use anyhow::{Context, Result, anyhow, ensure};
use quire_cluster::{PgInstall, RunAs};
use quire_io::{sleep, spawn_local, timeout};
use quire_postgres::types::BlockNo;
use quire_redo::protocol::PageRequest;
use quire_redo::{BATCH_PAGES_MAX, LANE_QUEUE_MAX, RedoConfig, RedoPool, RedoProcessError};

/// How to start processes from `dir`: the patched build's `postgres`, or
/// `program` (a wrapper script) in its place.
fn config(dir: &Path, program: Option<&Path>, timeout: Duration) -> Result<RedoConfig> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let install = PgInstall::locate()?;
    Ok(RedoConfig {
        postgres: program.map_or_else(|| install.bin("postgres"), Path::to_path_buf),
        run_as: RunAs::detect()?.ids(),
        scratch_root: dir.join("redo"),
        timeout,
    })
}

/// A `postgres` that waits `seconds` before it becomes the real one: a
/// process start that takes that long.
fn slow_postgres(dir: &Path, seconds: &str) -> Result<std::path::PathBuf> {
    let install = PgInstall::locate()?;
    let script = dir.join("slow-postgres");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep {seconds}\nexec {} \"$@\"\n",
            install.bin("postgres").display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

fn image_request(block: u32, image: &[u8]) -> PageRequest<'_> {
    PageRequest {
        rel: rel(),
        block: BlockNo(block),
        image: Some(image),
        records: Vec::new(),
    }
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

/// Aborts the test binary if `done` is not set within `limit`: a core
/// blocked in a system call cannot run its own timeouts, so without this a
/// regression would hang the test instead of failing it.
fn watchdog(limit: Duration) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watched = std::sync::Arc::clone(&done);
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if watched.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("the executor made no progress for {limit:?}: its core is blocked");
        std::process::abort();
    });
    done
}

/// A task that counts ticks of `period` until dropped.
fn ticker(period: Duration) -> (Rc<Cell<u32>>, quire_io::Task<()>) {
    let ticks = Rc::new(Cell::new(0u32));
    let task = spawn_local({
        let ticks = Rc::clone(&ticks);
        async move {
            loop {
                sleep(period).await;
                ticks.set(ticks.get() + 1);
            }
        }
    });
    (ticks, task)
}

#[test]
fn a_stopped_process_holds_up_neither_the_core_nor_other_tenants() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = RedoPool::new(
            config(dir.path(), None, Duration::from_secs(2))?,
            2,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        pool.ping(1).await?;
        pool.ping(2).await?;
        let hung = pool.tenant_pid(1).context("tenant 1 has a process")?;
        signal(hung, "-STOP")?;
        let done = watchdog(Duration::from_secs(30));
        let (ticks, ticking) = ticker(Duration::from_millis(10));
        let started = Instant::now();
        let hung_request = spawn_local({
            let pool = Rc::clone(&pool);
            async move { pool.ping(1).await }
        });
        // Another tenant is served while tenant 1's process hangs.
        sleep(Duration::from_millis(100)).await;
        let other = timeout(Duration::from_secs(1), pool.ping(2)).await;
        let other_took = started.elapsed();
        let hung_result = hung_request.await;
        let hung_took = started.elapsed();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(ticking);
        ensure!(
            matches!(other, Ok(Ok(()))),
            "tenant 2 was not served while tenant 1 hung: {other:?} after {other_took:?}"
        );
        ensure!(
            hung_result == Err(RedoProcessError::TimedOut(Duration::from_secs(2))),
            "the hung request: {hung_result:?}"
        );
        // 2 s of 10 ms ticks; a core blocked in poll(2) would see none.
        ensure!(
            ticks.get() >= 100,
            "the timer ticked {} times in {hung_took:?}",
            ticks.get()
        );
        // The hung process was killed and is replaced for the next request.
        pool.ping(1).await?;
        ensure!(
            pool.tenant_pid(1) != Some(hung),
            "tenant 1 still has the hung process"
        );
        ensure!(pool.stats().failed == 1, "{:?}", pool.stats());
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_process_killed_mid_batch_is_replaced_and_every_requester_gets_its_pages() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = RedoPool::new(
            config(dir.path(), None, Duration::from_secs(20))?,
            1,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        pool.ping(7).await?;
        ensure!(
            pool.wait_for_spares(Duration::from_secs(20)).await,
            "the taken spare was not replaced"
        );
        let pid = pool.tenant_pid(7).context("the tenant has a process")?;
        // Four requesters of 5,000 pages each, their batches in flight one
        // after another; the process is killed once 500 pages are back.
        let images: Rc<Vec<Vec<u8>>> = Rc::new((0..20_000).map(page).collect());
        let requesters: Vec<_> = (0..4usize)
            .map(|r| {
                let (pool, images) = (Rc::clone(&pool), Rc::clone(&images));
                spawn_local(async move {
                    let mine = &images[r * 5000..(r + 1) * 5000];
                    let requests: Vec<PageRequest<'_>> = mine
                        .iter()
                        .zip(0u32..)
                        .map(|(image, i)| image_request(i, image))
                        .collect();
                    let results = pool.rebuild_pages(7, &requests).await;
                    results
                        .into_iter()
                        .zip(mine)
                        .all(|(result, image)| result.is_ok_and(|p| p[..] == image[..]))
                })
            })
            .collect();
        while pool.stats().process_pages < 500 {
            sleep(Duration::from_micros(200)).await;
        }
        signal(pid, "-KILL")?;
        let all = timeout(
            Duration::from_secs(60),
            futures::future::join_all(requesters),
        )
        .await
        .map_err(|_| anyhow!("a requester hung after the kill"))?;
        ensure!(
            all.iter().all(|ok| *ok),
            "a requester got a wrong or failed page: {all:?}"
        );
        let stats = pool.stats();
        ensure!(
            stats.failed == 1 && stats.assigned == 2,
            "the killed process was replaced once: {stats:?}"
        );
        ensure!(
            stats.waited == 0,
            "the replacement was a ready spare, not a start awaited: {stats:?}"
        );
        ensure!(
            pool.wait_for_spares(Duration::from_secs(20)).await,
            "the spare taken for the retry was not replaced: {:?}",
            pool.stats()
        );
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn concurrent_requests_of_a_tenant_share_round_trips() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = RedoPool::new(
            config(dir.path(), None, Duration::from_secs(20))?,
            1,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        pool.ping(3).await?;
        for requesters in [32usize, 2 * BATCH_PAGES_MAX + 20] {
            let before = pool.stats();
            let tasks: Vec<_> = (0..requesters)
                .map(|n| {
                    let pool = Rc::clone(&pool);
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    spawn_local(async move {
                        let image = page(n);
                        let result = pool.rebuild_pages(3, &[image_request(n, &image)]).await;
                        matches!(&result[..], [Ok(p)] if p[..] == image[..])
                    })
                })
                .collect();
            let served = futures::future::join_all(tasks).await;
            ensure!(served.iter().all(|ok| *ok), "a page came back wrong");
            let after = pool.stats();
            let round_trips = after.round_trips - before.round_trips;
            ensure!(
                round_trips < requesters as u64,
                "{requesters} requests took {round_trips} round trips"
            );
            ensure!(
                round_trips >= requesters.div_ceil(BATCH_PAGES_MAX) as u64,
                "{requesters} requests in {round_trips} round trips: batches over {BATCH_PAGES_MAX} pages"
            );
            ensure!(after.process_pages - before.process_pages == requesters as u64);
        }
        // Requests that arrive while a batch is in flight (its process held
        // up with SIGSTOP) all go in the next one.
        let pid = pool.tenant_pid(3).context("the tenant has a process")?;
        signal(pid, "-STOP")?;
        let before = pool.stats();
        let first = spawn_local({
            let pool = Rc::clone(&pool);
            async move {
                let images: Vec<Vec<u8>> = (0..10).map(page).collect();
                let requests: Vec<PageRequest<'_>> = images
                    .iter()
                    .zip(0u32..)
                    .map(|(image, i)| image_request(i, image))
                    .collect();
                pool.rebuild_pages(3, &requests)
                    .await
                    .iter()
                    .all(Result::is_ok)
            }
        });
        while pool.stats().round_trips == before.round_trips {
            sleep(Duration::from_millis(1)).await;
        }
        let later: Vec<_> = (100..120u32)
            .map(|n| {
                let pool = Rc::clone(&pool);
                spawn_local(async move {
                    let image = page(n);
                    let result = pool.rebuild_pages(3, &[image_request(n, &image)]).await;
                    matches!(&result[..], [Ok(p)] if p[..] == image[..])
                })
            })
            .collect();
        sleep(Duration::from_millis(50)).await;
        signal(pid, "-CONT")?;
        ensure!(first.await, "the first batch failed");
        let served = futures::future::join_all(later).await;
        ensure!(served.iter().all(|ok| *ok), "a later page came back wrong");
        let round_trips = pool.stats().round_trips - before.round_trips;
        ensure!(
            round_trips == 2,
            "20 requests made during a batch took {} round trips after it",
            round_trips - 1
        );
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_warm_pool_starts_no_process_on_the_request_path() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        // Every start takes a second: a request that had to wait for one
        // would take that long.
        let slow = slow_postgres(dir.path(), "1")?;
        let pool = RedoPool::new(
            config(dir.path(), Some(&slow), Duration::from_secs(20))?,
            1,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        for tenant in 1..=3 {
            ensure!(
                pool.wait_for_spares(Duration::from_secs(20)).await,
                "no spare for tenant {tenant}"
            );
            let started = Instant::now();
            pool.ping(tenant).await?;
            let took = started.elapsed();
            ensure!(
                took < Duration::from_millis(500),
                "tenant {tenant}'s first request took {took:?}"
            );
        }
        let stats = pool.stats();
        ensure!(
            stats.waited == 0 && stats.assigned == 3,
            "every tenant took a ready spare: {stats:?}"
        );
        // A fourth tenant right away finds the spare still starting: it
        // waits for it without holding up the core.
        let (ticks, ticking) = ticker(Duration::from_millis(10));
        let started = Instant::now();
        pool.ping(4).await?;
        let took = started.elapsed();
        drop(ticking);
        ensure!(
            pool.stats().waited == 1,
            "tenant 4 waited for a start: {:?}",
            pool.stats()
        );
        ensure!(
            u128::from(ticks.get()) * 10 * 2 >= took.as_millis(),
            "{} ticks of 10 ms in {took:?} of waiting",
            ticks.get()
        );
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_process_that_cannot_start_is_a_typed_error_not_a_hang() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let broken = dir.path().join("broken-postgres");
        std::fs::write(&broken, "#!/bin/sh\nexit 3\n")?;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755))?;
        let started = Instant::now();
        let refused = RedoPool::new(
            config(dir.path(), Some(&broken), Duration::from_secs(20))?,
            1,
            Duration::from_secs(60),
        )
        .await;
        ensure!(
            matches!(&refused, Err(RedoProcessError::Spawn(what)) if what.contains("exited with status 3")),
            "{:?}",
            refused.err()
        );
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        // Without spares the first request starts a process: it learns of
        // the failure at once.
        let pool = RedoPool::new(
            config(dir.path(), Some(&broken), Duration::from_secs(20))?,
            0,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        let started = Instant::now();
        let result = pool.ping(1).await;
        ensure!(
            matches!(&result, Err(RedoProcessError::Spawn(_))),
            "{result:?}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_full_lane_refuses_at_once() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = RedoPool::new(
            config(dir.path(), None, Duration::from_secs(20))?,
            1,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
        pool.ping(5).await?;
        let pid = pool.tenant_pid(5).context("the tenant has a process")?;
        signal(pid, "-STOP")?;
        let waiting: Vec<_> = (0..LANE_QUEUE_MAX)
            .map(|_| {
                let pool = Rc::clone(&pool);
                spawn_local(async move { pool.ping(5).await })
            })
            .collect();
        let started = Instant::now();
        let refused = pool.ping(5).await;
        ensure!(
            refused == Err(RedoProcessError::QueueFull(LANE_QUEUE_MAX)),
            "{refused:?}"
        );
        ensure!(started.elapsed() < Duration::from_secs(1));
        // Requesters that give up (their tasks cancelled, which the runtime
        // does at their next turn) leave nothing for the process to do.
        drop(waiting);
        sleep(Duration::from_millis(20)).await;
        signal(pid, "-CONT")?;
        pool.ping(5).await?;
        ensure!(
            pool.stats().round_trips < 10,
            "abandoned requests were sent: {:?}",
            pool.stats()
        );
        pool.shutdown().await;
        Ok(())
    })
}
