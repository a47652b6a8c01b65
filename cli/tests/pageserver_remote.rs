//! `quire pageserver --remote`: a timeline following a Postgres 17 primary
//! uploads its layers and index to a real S3 server (moto on loopback),
//! each checked against the local file; the primary's slot, which is what
//! lets it remove WAL, never moves past the remote-consistent LSN, also
//! while the S3 server is stopped (ingest is held then, and a SIGKILL of
//! the pageserver loses nothing: started again, it uploads the backlog
//! once S3 is back); a restart claims the next generation and uploads no
//! layer again. A second pageserver on an empty directory
//! attaches the tenant (`quire tenant attach`): it claims a newer
//! generation, downloads no layer until a read needs it, takes the slot
//! over and serves every page as the stopped primary has it (`quire
//! verify`). The first sees the newer generation, writes and reports
//! nothing more, stops following the primary (which could not shut down
//! otherwise: its walsender waits for our flush report) and stays
//! superseded across a restart. Evicted layers come back on demand, also
//! after a restart; a flipped byte in a layer file is found by the scrub
//! and repaired from S3; a disk budget is kept.

mod pageserver_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, S3Server, run_checked};
use quire_postgres::Lsn;
use quire_remote::{
    Generation, Id, LatestIndex, List, RemoteConfig, RemoteStorage, TenantShard, TimelineIndex,
};
use quire_tests::pg_install;
use serde_json::Value;

use pageserver_support::{
    Imported, Pageserver, copy_dir, flip_byte, import_with, largest_layer, lsn_field, quire_json,
    timeline_show, verify, wait_status,
};

/// The bucket.
const BUCKET: &str = "quire-remote";
/// The prefix in it.
const PREFIX: &str = "ps";
/// The slot the pageserver follows the primary through.
const SLOT: &str = "quire_remote";
/// Long enough for a flush (10 s apart) and a sync (1 s apart) or two.
const WAIT: Duration = Duration::from_secs(60);

fn pgbench(pg: &PgCluster, args: &[&str]) -> Result<()> {
    run_checked(pg.client("pgbench").args(args), Duration::from_secs(300))
        .with_context(|| format!("pgbench {args:?}"))?;
    Ok(())
}

/// The remote part of `quire timeline show`.
fn remote_status(server: &Pageserver, imported: &Imported) -> Result<Value> {
    let shown = timeline_show(server, imported)?;
    shown
        .get("remote")
        .filter(|remote| !remote.is_null())
        .cloned()
        .with_context(|| format!("no remote status in {shown}"))
}

/// The remote-consistent LSN the status shows (0/0 before the first sync).
fn remote_consistent(status: &Value) -> Result<Lsn> {
    match status.get("remote_consistent_lsn").and_then(Value::as_str) {
        Some(text) => text.parse().map_err(|e| anyhow::anyhow!("{text}: {e:?}")),
        None => Ok(Lsn(0)),
    }
}

/// The slot's restart LSN: WAL below it the primary may remove.
fn slot_restart(pg: &PgCluster) -> Result<Lsn> {
    let text = pg.psql(
        "postgres",
        &format!("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"),
    )?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("restart_lsn {text:?}: {e:?}"))
}

/// What the test reads the bucket with.
struct Bucket {
    storage: RemoteStorage,
    shard: TenantShard,
    timeline: Id,
}

impl Bucket {
    fn open(s3: &S3Server, imported: &Imported) -> Result<Bucket> {
        let env = s3.env();
        let config = RemoteConfig::from_url_with_env(&format!("s3://{BUCKET}/{PREFIX}"), |name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })?;
        Ok(Bucket {
            storage: RemoteStorage::start(config, &prometheus::Registry::new())?,
            shard: TenantShard::unsharded(imported.tenant.0),
            timeline: Id(imported.timeline.0),
        })
    }

    /// Every object of the shard, with its size.
    fn objects(&self) -> Result<BTreeMap<String, u64>> {
        let listed = futures::executor::block_on(self.storage.call(List {
            prefix: self.shard.prefix(),
        }))?;
        Ok(listed.into_iter().map(|o| (o.key, o.size)).collect())
    }

    /// The newest index at or below `at_most`.
    fn index(&self, at_most: u32) -> Result<TimelineIndex> {
        futures::executor::block_on(self.storage.call(LatestIndex {
            shard: self.shard,
            timeline: self.timeline,
            at_most: Generation::new(at_most).context("generation")?,
        }))?
        .context("no index")
    }
}

/// Each layer the index lists is an object of its size, and the local file
/// of that name (while it is still there) has its size and CRC-32C.
fn check_index_against_disk(
    bucket: &Bucket,
    index: &TimelineIndex,
    timeline_dir: &Path,
) -> Result<()> {
    let objects = bucket.objects()?;
    ensure!(!index.layers.is_empty(), "the index lists no layer");
    for layer in &index.layers {
        let key = bucket
            .shard
            .layer_key(bucket.timeline, &layer.name, layer.generation);
        ensure!(
            objects.get(&key) == Some(&layer.size),
            "{key}: listed with {} bytes, stored as {:?}",
            layer.size,
            objects.get(&key)
        );
        let local = timeline_dir.join(layer.name.as_str());
        if let Ok(bytes) = std::fs::read(&local) {
            ensure!(
                bytes.len() as u64 == layer.size && quire_checksum::crc32c(&bytes) == layer.crc32c,
                "{}: the index's size or CRC differs from the local file",
                local.display()
            );
        }
    }
    Ok(())
}

/// The primary, the pageserver following it, and the bucket.
struct Run {
    pg: PgCluster,
    server: Pageserver,
    imported: Imported,
    bucket: Bucket,
    timeline_dir: std::path::PathBuf,
}

impl Run {
    /// The load's layers and index reach S3, as the local files are.
    fn uploads_are_checked_against_disk(&mut self) -> Result<()> {
        // 1. Layers and index in S3, checked against the local files.
        pgbench(&self.pg, &["-i", "-q", "-s", "2"])?;
        let loaded_at = flush_lsn(&self.pg)?;
        let shown = wait_status(
            &self.server,
            &self.imported,
            WAIT,
            "the load uploaded",
            |shown| Ok(remote_consistent(&shown["remote"])? >= loaded_at),
        )?;
        println!("uploaded through the load: {}", shown["remote"]);
        ensure!(shown["remote"]["generation"] == 1, "{shown}");
        let first = self.bucket.index(1)?;
        check_index_against_disk(&self.bucket, &first, &self.timeline_dir)?;
        ensure!(
            Lsn(first.disk_consistent_lsn) >= loaded_at,
            "index-g1 holds through {}, the load ended at {loaded_at}",
            Lsn(first.disk_consistent_lsn)
        );
        let objects = self.bucket.objects()?;
        ensure!(
            objects.contains_key(&self.bucket.shard.generation_key(Generation::FIRST)),
            "no generation object: {objects:?}"
        );

        Ok(())
    }

    /// While S3 is stopped, layers are made locally but the slot waits and
    /// ingest is held; a SIGKILL then loses nothing: the restarted
    /// pageserver uploads the backlog once S3 is back.
    fn an_outage_holds_the_slot(&mut self, s3: &S3Server) -> Result<()> {
        // 2. S3 stopped: layers keep being made locally, the slot waits.
        let before_outage = remote_consistent(&remote_status(&self.server, &self.imported)?)?;
        s3.signal("STOP")?;
        pgbench(&self.pg, &["-n", "-c", "2", "-t", "1500"])?;
        let stalled = wait_status(
            &self.server,
            &self.imported,
            WAIT,
            "a flush during the outage",
            |shown| Ok(lsn_field(shown, "disk_consistent_lsn")? > before_outage),
        )?;
        // More than 1 MiB of WAL on disk and not in S3: ingest waits.
        wait_status(&self.server, &self.imported, WAIT, "ingest held", |shown| {
            Ok(shown["ingest"]["held_by_uploads"] == true)
        })?;
        std::thread::sleep(Duration::from_secs(3));
        let restart = slot_restart(&self.pg)?;
        let remote_now = remote_consistent(&remote_status(&self.server, &self.imported)?)?;
        println!(
            "outage: disk-consistent {}, remote-consistent {remote_now}, slot {restart}",
            lsn_field(&stalled, "disk_consistent_lsn")?
        );
        ensure!(
            remote_now == before_outage && restart <= remote_now,
            "during the outage the remote-consistent LSN moved to {remote_now} (from {before_outage}) or the slot to {restart}"
        );
        // SIGKILLed with its uploads stuck: the layers it made are on its
        // disk, listed by no index yet. Started again, it claims generation
        // 2 once S3 answers and uploads them then.
        self.server.kill();
        self.server.restart()?;
        s3.signal("CONT")?;
        let local = lsn_field(&stalled, "disk_consistent_lsn")?;
        wait_status(
            &self.server,
            &self.imported,
            WAIT,
            "the backlog uploaded and ingest going again",
            |shown| {
                Ok(remote_consistent(&shown["remote"])? >= local
                    && shown["ingest"]["held_by_uploads"] == false)
            },
        )?;
        let began = Instant::now();
        while slot_restart(&self.pg)? <= before_outage {
            ensure!(
                began.elapsed() < WAIT,
                "the slot stayed at {} after the upload",
                slot_restart(&self.pg)?
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let after_kill = self.bucket.index(2)?;
        ensure!(
            Lsn(after_kill.disk_consistent_lsn) >= local,
            "index-g2 holds through {}, the disk through {local}",
            Lsn(after_kill.disk_consistent_lsn)
        );
        check_index_against_disk(&self.bucket, &after_kill, &self.timeline_dir)?;

        Ok(())
    }

    /// A restart claims generation 3 and uploads no layer again.
    fn a_restart_claims_the_next_generation(&mut self) -> Result<()> {
        // 3. A restart claims generation 3 and uploads nothing again.
        let before_restart = self.bucket.index(2)?;
        self.server.restart()?;
        let shown = wait_status(
            &self.server,
            &self.imported,
            WAIT,
            "generation 3 synced",
            |shown| {
                Ok(shown["remote"]["generation"] == 3
                    && shown["remote"]["syncs"].as_u64() >= Some(1))
            },
        )?;
        let second = self.bucket.index(3)?;
        ensure!(second.generation.get() == 3, "{:?}", second.generation);
        for layer in &second.layers {
            if let Some(old) = before_restart.layers.iter().find(|l| l.name == layer.name) {
                ensure!(
                    layer.generation == old.generation,
                    "{} was uploaded again by generation 3",
                    layer.name.as_str()
                );
            }
        }
        println!("after the restart: {}", shown["remote"]);

        Ok(())
    }

    /// A second pageserver on an empty directory attaches the tenant
    /// (generation 4) and takes the primary's slot over; the first sees
    /// the newer generation, stops following and uploads nothing more.
    fn a_second_pageserver_attaches(
        &mut self,
        s3: &S3Server,
        dir: &Path,
        conninfo: &str,
    ) -> Result<Pageserver> {
        let remote_url = format!("s3://{BUCKET}/{PREFIX}");
        let second =
            Pageserver::start_with_env(dir, &["--cores", "1", "--remote", &remote_url], &s3.env())?;
        let tenant = self.imported.tenant_text();
        let mut args = vec!["tenant", "attach", "--tenant", &tenant];
        args.extend(second.api());
        args.extend(["--primary", conninfo, "--slot", SLOT]);
        let attached = quire_json(&args)?;
        println!("attached: {attached}");
        let shard = &attached["shards"][0]["attached"];
        ensure!(
            shard["generation"] == 4 && shard["timelines"][0]["layers"].as_u64() > Some(0),
            "attach answered {attached}"
        );
        // Attached without downloading: the layers on the disk are the ones
        // reads needed (the control file's, ingest's resume), each fetched
        // by an on-demand download.
        // (The metrics are copied from the core once a second.)
        let began = Instant::now();
        loop {
            let layers = timeline_show(&second, &self.imported)?["layers"].clone();
            let downloads = second.metric("quire_layer_residence", "what=\"downloads\"")?;
            let resident = layers["resident"].as_u64().context("resident")?;
            let remote_only = layers["remote_only"].as_u64().context("remote_only")?;
            if (downloads - f64::from(u32::try_from(resident)?)).abs() < 0.5
                && Some(resident + remote_only) == layers["count"].as_u64()
            {
                println!("right after the attach: {layers}");
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "right after the attach: {layers}, {downloads} downloads"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let second_dir = dir
            .join("tenants")
            .join(format!("{}-s0of1", self.imported.tenant))
            .join("timelines")
            .join(self.imported.timeline.to_string());
        check_index_against_disk(&self.bucket, &self.bucket.index(3)?, &second_dir)?;

        pgbench(&self.pg, &["-n", "-c", "2", "-t", "300"])?;
        let superseded = wait_status(
            &self.server,
            &self.imported,
            WAIT,
            "the first superseded",
            |shown| Ok(shown["remote"]["superseded_by"] == 4 && shown["receiving"] == false),
        )?;
        let first_reported = remote_consistent(&superseded["remote"])?;
        let first_objects = self.objects_of(3)?;
        // The second follows the primary from where the index left off.
        pgbench(&self.pg, &["-n", "-c", "2", "-t", "300"])?;
        let end = flush_lsn(&self.pg)?;
        let shown = wait_status(
            &second,
            &self.imported,
            WAIT,
            "the second caught up",
            |shown| {
                Ok(lsn_field(shown, "last_record_lsn")? >= end
                    && remote_consistent(&shown["remote"])? > first_reported)
            },
        )?;
        println!("the second pageserver: {}", shown["remote"]);
        check_index_against_disk(&self.bucket, &self.bucket.index(4)?, &second_dir)?;
        let first = timeline_show(&self.server, &self.imported)?;
        ensure!(
            remote_consistent(&first["remote"])? == first_reported
                && self.objects_of(3)? == first_objects,
            "the superseded pageserver went on writing: {first}"
        );
        Ok(second)
    }

    /// Objects whose names carry `generation`.
    fn objects_of(&self, generation: u32) -> Result<Vec<String>> {
        let suffix = format!("{}", Generation::new(generation).context("generation")?);
        Ok(self
            .bucket
            .objects()?
            .into_keys()
            .filter(|key| {
                key.ends_with(&format!("-g{suffix}")) || key.ends_with(&format!("/{suffix}"))
            })
            .collect())
    }

    /// The first pageserver, started again, stays superseded.
    fn a_superseded_pageserver_stays_so(&mut self) -> Result<()> {
        let before = self.objects_of(3)?;
        self.server.restart()?;
        std::thread::sleep(Duration::from_secs(5));
        let status = timeline_show(&self.server, &self.imported)?;
        let remote = &status["remote"];
        ensure!(
            remote["superseded_by"] == 4
                && remote["generation"].is_null()
                && status["receiving"] == false
                && status["receiver_error"]
                    .as_str()
                    .is_some_and(|why| why.contains("superseded")),
            "after a restart: {status}"
        );
        ensure!(
            self.objects_of(3)? == before && self.objects_of(5)?.is_empty(),
            "a restarted superseded pageserver wrote to the bucket"
        );
        println!("superseded, also after a restart: {remote}");
        Ok(())
    }
}

impl Run {
    /// Layers come from object storage when a read needs them: the verify
    /// after the attach downloaded them; evicted, they are downloaded
    /// again; a restart with evicted layers loads them as remote; with a
    /// disk budget the pageserver evicts down to it and still serves every
    /// page.
    fn layers_come_on_demand(&self, second: &mut Pageserver) -> Result<()> {
        let downloads =
            |server: &Pageserver| server.metric("quire_layer_residence", "what=\"downloads\"");
        let after_attach = downloads(second)?;
        ensure!(
            after_attach > 0.0,
            "nothing was downloaded after the attach"
        );
        let evict = |server: &Pageserver| -> Result<Value> {
            let path = format!(
                "/v1/tenant/{}/timeline/{}/evict",
                self.imported.tenant, self.imported.timeline
            );
            let (status, body) = server.http_call("POST", &path, None, None)?;
            ensure!(status == 200, "evict: {status}: {body}");
            Ok(serde_json::from_str(&body)?)
        };
        let evicted = evict(second)?;
        let shard = &evicted["shards"][0];
        ensure!(
            shard["evicted"].as_u64() > Some(0) && shard["status"]["layers"]["evictable"] == 0,
            "evict answered {evicted}"
        );
        verify(second, &self.imported, &self.pg.datadir(), None)?;
        // (The metrics are copied once a second.)
        std::thread::sleep(Duration::from_millis(1500));
        let again = downloads(second)?;
        let waited = second.metric("quire_getpage_download_seconds_count", "")?;
        // (`quire verify` asks each relation's size first, so its page
        // reads seldom wait: the bench measures those.)
        ensure!(
            again > after_attach,
            "evicted layers were read with {again} downloads in all"
        );
        let waited_seconds = second.metric("quire_getpage_download_seconds_sum", "")?;
        println!(
            "on demand: {after_attach} downloads after the attach, {again} after an eviction; {waited} page reads waited, {:.1} ms each on average",
            waited_seconds * 1000.0 / waited.max(1.0)
        );

        // Bit rot in a layer file: the scrub finds it and replaces the file
        // by its copy in object storage.
        let timeline_dir = second
            .dir
            .join("tenants")
            .join(format!("{}-s0of1", self.imported.tenant))
            .join("timelines")
            .join(self.imported.timeline.to_string());
        // Every layer on the disk uploaded first: a file damaged before its
        // upload goes up damaged (the uploader does not check blocks).
        wait_status(
            second,
            &self.imported,
            WAIT,
            "every layer uploaded",
            |shown| Ok(shown["layers"]["resident"] == shown["layers"]["evictable"]),
        )?;
        let damaged = largest_layer(&timeline_dir)?;
        second.kill();
        flip_byte(&damaged, 8192 + 100)?;
        second.set_args(&[
            "--cores",
            "1",
            "--remote",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--scrub-mib-per-s",
            "1000",
        ]);
        second.restart()?;
        let began = Instant::now();
        while second.metric("quire_layer_residence", "what=\"repairs\"")? < 1.0 {
            // A first pass may run before the layers learn their copies
            // (the first sync after the claim); the next pass repairs.
            ensure!(
                began.elapsed() < Duration::from_secs(120),
                "the scrub repaired nothing; the log:\n{}",
                second.log_text()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        ensure!(
            second.log_text().contains("repaired from object storage"),
            "no repair in the log"
        );
        verify(second, &self.imported, &self.pg.datadir(), None)?;
        println!(
            "a flipped byte in {} was repaired by the scrub",
            damaged.display()
        );

        evict(second)?;
        second.set_args(&[
            "--cores",
            "1",
            "--remote",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--disk-budget-mib",
            "8",
        ]);
        second.restart()?;
        verify(second, &self.imported, &self.pg.datadir(), None)?;
        let shown = wait_status(second, &self.imported, WAIT, "within the budget", |shown| {
            Ok(shown["layers"]["resident_bytes"].as_u64() <= Some(8 << 20))
        })?;
        let evictions = second.metric("quire_layer_residence", "what=\"evictions\"")?;
        ensure!(
            evictions > 0.0 && downloads(second)? > 0.0,
            "with a budget of 8 MiB: {evictions} evictions; {}",
            shown["layers"]
        );
        println!("within an 8 MiB budget: {}", shown["layers"]);
        Ok(())
    }

    /// The life cycle's end: a delete on the superseded pageserver removes
    /// only its own copy; a detach keeps the objects, so the tenant attaches
    /// again (generation 7: the second's restarts took 5 and 6); a delete there
    /// removes every object.
    fn detach_attach_and_delete(&self, second: &Pageserver) -> Result<()> {
        let tenant = self.imported.tenant_text();
        let before = self.bucket.objects()?;
        let mut args = vec!["tenant", "delete", "--tenant", &tenant];
        args.extend(self.server.api());
        let deleted = quire_json(&args)?;
        ensure!(
            deleted["remote"][0]["kept"]
                .as_str()
                .is_some_and(|why| why.contains("superseded")),
            "a superseded pageserver's delete answered {deleted}"
        );
        ensure!(
            self.bucket.objects()? == before,
            "a superseded delete removed objects"
        );
        let mut args = vec!["tenant", "detach", "--tenant", &tenant];
        args.extend(second.api());
        quire_json(&args)?;
        ensure!(
            self.bucket.objects()?.len() >= before.len(),
            "a detach removed objects"
        );
        let mut args = vec!["tenant", "attach", "--tenant", &tenant];
        args.extend(second.api());
        let attached = quire_json(&args)?;
        ensure!(
            attached["shards"][0]["attached"]["generation"] == 7,
            "attach after the detach: {attached}"
        );
        let mut args = vec!["tenant", "delete", "--tenant", &tenant];
        args.extend(second.api());
        let deleted = quire_json(&args)?;
        // The generation objects stay (so that no superseded pageserver
        // finds its generation current again); nothing else does.
        let left = self.bucket.objects()?;
        ensure!(
            deleted["remote"][0]["objects_deleted"].as_u64() > Some(0)
                && left.keys().all(|key| key.contains("/generations/")),
            "the delete answered {deleted} and left {left:?}"
        );
        println!("deleted: {deleted}");
        Ok(())
    }
}

/// The primary's WAL flush position.
fn flush_lsn(pg: &PgCluster) -> Result<Lsn> {
    pg.psql("postgres", "SELECT pg_current_wal_flush_lsn()")?
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

#[test]
fn layers_reach_s3_before_wal_goes_and_an_attach_elsewhere_supersedes() -> Result<()> {
    let install = pg_install()?;
    let s3 = S3Server::start(BUCKET)?;
    let options = PgClusterOptions::default()
        .setting("max_wal_size", "'1GB'")
        .setting("wal_keep_size", "0");
    let mut pg = PgCluster::create(&install, options)?;
    let root = tempfile::tempdir()?;
    let base = root.path().join("base");
    copy_dir(&pg.datadir(), &base)?;
    pg.start()?;
    pg.psql(
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{SLOT}', true)"),
    )?;
    let remote_url = format!("s3://{BUCKET}/{PREFIX}");
    let server = Pageserver::start_with_env(
        &root.path().join("pageserver"),
        &[
            "--cores",
            "1",
            "--remote",
            &remote_url,
            "--max-upload-lag-mib",
            "1",
        ],
        &s3.env(),
    )?;
    let conninfo = format!("host=127.0.0.1 port={} user=postgres", pg.port());
    let imported = import_with(
        &server,
        &base,
        &[],
        &["--primary", &conninfo, "--slot", SLOT],
        None,
    )?;
    let timeline_dir = server
        .dir
        .join("tenants")
        .join(format!("{}-s0of1", imported.tenant))
        .join("timelines")
        .join(imported.timeline.to_string());
    let bucket = Bucket::open(&s3, &imported)?;

    let mut run = Run {
        pg,
        server,
        imported,
        bucket,
        timeline_dir,
    };
    run.uploads_are_checked_against_disk()?;
    run.an_outage_holds_the_slot(&s3)?;
    run.a_restart_claims_the_next_generation()?;
    let mut second =
        run.a_second_pageserver_attaches(&s3, &root.path().join("second"), &conninfo)?;
    run.pg.stop()?;
    verify(&second, &run.imported, &run.pg.datadir(), None)?;
    run.a_superseded_pageserver_stays_so()?;
    run.layers_come_on_demand(&mut second)?;
    run.server.check_alive()?;
    run.detach_attach_and_delete(&second)?;
    Ok(())
}
