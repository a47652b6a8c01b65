//! The redo pool against real `postgres --wal-redo quire_walredo` processes:
//! images and round trips, the sandbox, malformed records, and processes
//! killed in the middle of a request.
//!
//! Page-level correctness of Postgres redo is `cli/tests/verify_oracle.rs`'s
//! job; these tests are about the process's life and its refusals. The pool
//! runs on an executor (`quire_io::run_local`), as it does in the server;
//! `redo_core.rs` checks that it never stalls it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod support;
use support::{on_executor, page, rel};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgInstall, RunAs};
use quire_postgres::Lsn;
use quire_postgres::types::BlockNo;
use quire_postgres::wal::record::record_crc;
use quire_redo::protocol::{self, PageRequest, Reply, SandboxProbe};
use quire_redo::{RedoConfig, RedoPool};

const TENANT: u128 = 7;

async fn pool(dir: &tempfile::TempDir) -> Result<Rc<RedoPool>> {
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let install = PgInstall::locate()?;
    let config = RedoConfig {
        postgres: install.bin("postgres"),
        run_as: RunAs::detect()?.ids(),
        scratch_root: dir.path().join("redo"),
        timeout: Duration::from_secs(20),
    };
    RedoPool::new(config, 1, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// One request per image, block `i` for image `i`, no records.
fn image_requests(images: &[Vec<u8>]) -> Vec<PageRequest<'_>> {
    images
        .iter()
        .enumerate()
        .map(|(i, image)| PageRequest {
            rel: rel(),
            block: BlockNo(u32::try_from(i).expect("small")),
            image: Some(image),
            records: Vec::new(),
        })
        .collect()
}

/// A WAL record with a correct CRC: header, then `body`.
fn record(rmid: u8, info: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; 24];
    let len = u32::try_from(24 + body.len()).expect("small");
    bytes[0..4].copy_from_slice(&len.to_le_bytes());
    bytes[4..8].copy_from_slice(&700u32.to_le_bytes());
    bytes[16] = info;
    bytes[17] = rmid;
    bytes.extend_from_slice(body);
    let crc = record_crc(&bytes);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Block reference 0 to `rel()` block 0 carrying `data`.
fn block_ref_with_data(data: &[u8], claimed_len: u16) -> Vec<u8> {
    let mut body = vec![0u8, 0x20]; // id 0; fork 0 | BKPBLOCK_HAS_DATA
    body.extend_from_slice(&claimed_len.to_le_bytes());
    for v in [1663u32, 5, 16_384, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(data);
    body
}

#[test]
fn images_round_trip_and_pings_answer() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = pool(&dir).await?;
        pool.ping(TENANT).await.map_err(anyhow::Error::msg)?;
        let images: Vec<Vec<u8>> = (0..40).map(page).collect();
        let requests = image_requests(&images);
        for (result, image) in pool
            .rebuild_pages(TENANT, &requests)
            .await
            .into_iter()
            .zip(&images)
        {
            ensure!(
                result.map_err(anyhow::Error::msg)?[..] == image[..],
                "page changed"
            );
        }
        ensure!(
            pool.stats().assigned == 1,
            "one process serves the tenant: {:?}",
            pool.stats()
        );
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn the_sandbox_kills_a_process_that_opens_a_file() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = pool(&dir).await?;
        let mut request = Vec::new();
        protocol::probe_sandbox(&mut request, SandboxProbe::Open);
        let error = pool
            .exchange_raw(TENANT, &request, 1)
            .await
            .expect_err("the process cannot answer")
            .to_string();
        ensure!(
            error.contains("killed by signal 31"),
            "not killed by seccomp: {error}"
        );
        pool.ping(TENANT).await.map_err(anyhow::Error::msg)?;
        ensure!(pool.stats().failed == 1, "{:?}", pool.stats());
        pool.shutdown().await;
        Ok(())
    })
}

const PROT_READ: u32 = 1;
const PROT_WRITE: u32 = 2;
const PROT_EXEC: u32 = 4;

/// Sends one sandbox probe: `Ok(errno)` if the call got through, `Err` with
/// the pool's account of the process's end otherwise.
async fn probe(pool: &RedoPool, probe: SandboxProbe) -> Result<Result<i32, String>> {
    let mut request = Vec::new();
    protocol::probe_sandbox(&mut request, probe);
    match pool.exchange_raw(TENANT, &request, 1).await {
        Ok(replies) => match &replies[..] {
            [Reply::Ok(body)] if body.len() == 4 => Ok(Ok(i32::from_le_bytes(
                body[..].try_into().context("four bytes")?,
            ))),
            other => anyhow::bail!("{probe:?}: unexpected replies {other:?}"),
        },
        Err(error) => Ok(Err(error.to_string())),
    }
}

#[test]
fn the_sandbox_allows_kill_only_of_itself_and_no_executable_memory() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = pool(&dir).await?;
        pool.ping(TENANT).await.map_err(anyhow::Error::msg)?;
        let own = pool
            .tenant_pid(TENANT)
            .context("the tenant has a process")?;
        let own = i32::try_from(own)?;
        let parent = i32::try_from(std::process::id())?;
        let allowed = [
            SandboxProbe::Kill(own),
            SandboxProbe::Map(PROT_READ | PROT_WRITE),
            SandboxProbe::Map(PROT_READ),
            SandboxProbe::Protect(PROT_READ),
            SandboxProbe::Protect(0),
        ];
        for allowed in allowed {
            ensure!(
                probe(&pool, allowed).await? == Ok(0),
                "{allowed:?} did not succeed"
            );
        }
        ensure!(
            pool.tenant_pid(TENANT) == Some(u32::try_from(own)?),
            "the allowed calls ran in one process"
        );
        // The parent (this test), the process group (pid 0, which holds the
        // pool's owner), every process of the user (-1), init, and the group
        // led by the process itself.
        let refused = [
            SandboxProbe::Kill(parent),
            SandboxProbe::Kill(0),
            SandboxProbe::Kill(-1),
            SandboxProbe::Kill(1),
            SandboxProbe::Kill(-own),
            SandboxProbe::Map(PROT_READ | PROT_EXEC),
            SandboxProbe::Map(PROT_EXEC),
            SandboxProbe::Map(PROT_READ | PROT_WRITE | PROT_EXEC),
            SandboxProbe::Protect(PROT_READ | PROT_EXEC),
            SandboxProbe::Protect(PROT_EXEC),
        ];
        for (n, refused) in refused.into_iter().enumerate() {
            match probe(&pool, refused).await? {
                Err(error) if error.contains("killed by signal 31") => {}
                Err(error) => anyhow::bail!("{refused:?}: not killed by seccomp: {error}"),
                Ok(errno) => anyhow::bail!("{refused:?} got through the sandbox (errno {errno})"),
            }
            ensure!(
                pool.stats().failed == n as u64 + 1,
                "{refused:?}: {:?}",
                pool.stats()
            );
        }
        // Each refusal cost one process; the next one serves redo as before.
        let images: Vec<Vec<u8>> = (0..4).map(page).collect();
        for (result, image) in pool
            .rebuild_pages(TENANT, &image_requests(&images))
            .await
            .into_iter()
            .zip(&images)
        {
            ensure!(
                result.map_err(anyhow::Error::msg)?[..] == image[..],
                "page changed"
            );
        }
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn malformed_records_are_errors_never_pages() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = pool(&dir).await?;
        let base = page(1);
        let heap = 10; // RM_HEAP_ID
        let mut bad_crc = record(heap, 0, &block_ref_with_data(&[1, 2, 3], 3));
        bad_crc[30] ^= 0x40;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bad CRC", bad_crc, "wrong checksum"),
            (
                "data length past the end",
                record(heap, 0, &block_ref_with_data(&[1, 2, 3], 300)),
                "does not decode",
            ),
            (
                "non-page resource manager",
                record(1, 0, &[0xFF, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
                "changes no page",
            ),
            (
                "heap insert without its tuple",
                record(heap, 0, &block_ref_with_data(&[1, 2, 3], 3)),
                "",
            ),
            (
                "truncated header",
                vec![40, 0, 0, 0, 1, 2],
                "invalid length",
            ),
        ];
        for (name, wal, expected) in cases {
            let request = PageRequest {
                rel: rel(),
                block: BlockNo(0),
                image: Some(&base),
                records: vec![(Lsn(0x100_0000), Lsn(0x100_0000 + 64), &wal[..])],
            };
            let result = pool.rebuild_pages(TENANT, &[request]).await;
            let [Err(error)] = &result[..] else {
                anyhow::bail!("{name}: expected one error, got {result:?}");
            };
            ensure!(
                error.to_string().contains(expected),
                "{name}: unexpected error {error}"
            );
            // The next request is served by a fresh process.
            pool.ping(TENANT)
                .await
                .map_err(anyhow::Error::msg)
                .context(name)?;
        }
        pool.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_process_killed_mid_request_is_retried_and_the_next_request_succeeds() -> Result<()> {
    on_executor(|| async {
        let dir = tempfile::tempdir()?;
        let pool = pool(&dir).await?;
        pool.ping(TENANT).await.map_err(anyhow::Error::msg)?;
        let pid = pool
            .tenant_pid(TENANT)
            .context("the tenant has a process")?;
        // 20,000 pages (160 MB) take long enough to kill the process mid-way.
        let images: Vec<Vec<u8>> = (0..20_000).map(page).collect();
        let requests = image_requests(&images);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            Command::new("kill").args(["-9", &pid.to_string()]).status()
        });
        let started = Instant::now();
        let results = pool.rebuild_pages(TENANT, &requests).await;
        ensure!(
            killer.join().expect("killer thread")?.success(),
            "kill failed"
        );
        for (i, (result, image)) in results.iter().zip(&images).enumerate() {
            let page = result
                .as_ref()
                .map_err(|e| anyhow::anyhow!("page {i}: {e}"))?;
            ensure!(page[..] == image[..], "page {i} changed");
        }
        let stats = pool.stats();
        ensure!(
            stats.failed == 1 && stats.assigned == 2,
            "the killed process was replaced once: {stats:?} after {:?}",
            started.elapsed()
        );
        ensure!(
            pool.tenant_pid(TENANT) != Some(pid),
            "a new process serves the tenant"
        );
        pool.ping(TENANT).await.map_err(anyhow::Error::msg)?;
        let replies = pool
            .exchange_raw(
                TENANT,
                &{
                    let mut r = Vec::new();
                    protocol::ping(&mut r);
                    r
                },
                1,
            )
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(replies == vec![Reply::Ok(Vec::new())], "{replies:?}");
        pool.shutdown().await;
        Ok(())
    })
}
