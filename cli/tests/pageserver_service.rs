//! `quire pageserver` as a service, with real Postgres 17 clusters: a
//! cluster imported through `quire tenant create` and `quire timeline
//! create --import-pgdata` serves every page identical to the cluster's
//! own over the page protocol (`quire verify --pageserver`), also after a
//! SIGKILL and a restart on the same directory; tokens decide who opens
//! which tenant and who may use the admin API; tenants spread over the
//! cores and the metrics count each core's requests; a two-shard tenant
//! serves each block only on the shard owning it, and each shard stores
//! about half the layer bytes of the same data unsharded. `pageserver_abuse.rs`
//! has the hostile clients.

mod pageserver_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, run_checked};
use quire_net::id::ShardIdentity;
use quire_net::page_protocol::ServiceError;
use quire_postgres::Lsn;
use quire_postgres::types::BlockNo;
use quire_tests::{assert_log_clean, pg_install};

use pageserver_support::{
    Imported, PageConn, Pageserver, Source, field, get_page, hello, import, nblocks, quire,
    quire_fails, quire_json, timeline_show, verify,
};

/// DDL after `pgbench -i`: an index, a sequence, a table created and
/// dropped, deletes and a VACUUM.
const DDL: &str = r"
CREATE INDEX accounts_bid ON pgbench_accounts (bid);
CREATE SEQUENCE counter;
SELECT count(nextval('counter')) FROM generate_series(1, 300);
CREATE TABLE gone AS SELECT g FROM generate_series(1, 20000) g;
DROP TABLE gone;
DELETE FROM pgbench_accounts WHERE aid % 7 = 0;
VACUUM pgbench_accounts;
CHECKPOINT;
";

#[test]
fn imported_cluster_verifies_over_the_protocol_across_a_restart() -> Result<()> {
    let install = pg_install()?;
    let mut pg = PgCluster::create(&install, PgClusterOptions::default())?;
    pg.start()?;
    run_checked(
        pg.client("pgbench").args(["-i", "-q", "-s", "2"]),
        Duration::from_secs(300),
    )
    .context("pgbench -i")?;
    pg.psql_script("postgres", DDL)?;
    pg.stop()?;
    assert_log_clean(&pg, &[])?;

    let root = tempfile::tempdir()?;
    let dir = root.path().join("pageserver");
    let mut server = Pageserver::start(&dir, &["--cores", "2"])?;
    let imported = import(&server, &pg.datadir(), &[], None)?;
    ensure!(imported.lsn > Lsn(0), "imported at {}", imported.lsn);

    let first = verify(&server, &imported, &pg.datadir(), None)?;
    ensure!(first > 6_000, "only {first} pages compared");

    let shown = timeline_show(&server, &imported)?;
    ensure!(
        field(&shown, "last_record_lsn")?.parse::<Lsn>()? == imported.lsn
            && field(&shown, "disk_consistent_lsn")?.parse::<Lsn>()? >= imported.lsn
            && field(&shown, "gc_cutoff_lsn")?.parse::<Lsn>()? <= imported.lsn
            && field(&shown, "timeline_id")? == imported.timeline_text()
            && field(&shown, "tenant_id")? == imported.tenant_text(),
        "quire timeline show: {shown}"
    );
    ensure!(
        shown["layers"]["count"].as_u64().is_some_and(|n| n > 0),
        "no layers: {shown}"
    );
    let mut args = vec!["timeline", "list"];
    args.extend(server.api());
    let tenant_text = imported.tenant_text();
    args.extend(["--tenant", &tenant_text]);
    let listed = quire_json(&args)?;
    ensure!(
        listed
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["timeline_id"] == imported.timeline_text()),
        "quire timeline list: {listed}"
    );

    // SIGKILL, then start again on the same directory: the timeline comes
    // back at its disk-consistent LSN.
    let disk_consistent: Lsn = field(&shown, "disk_consistent_lsn")?.parse()?;
    server.kill();
    server.restart()?;
    let again = verify(&server, &imported, &pg.datadir(), None)?;
    ensure!(
        again == first,
        "{first} pages compared before the restart, {again} after"
    );
    let shown = timeline_show(&server, &imported)?;
    ensure!(
        field(&shown, "last_record_lsn")?.parse::<Lsn>()? == disk_consistent,
        "after the restart: {shown}"
    );
    let mut args = vec!["tenant", "list"];
    args.extend(server.api());
    let tenants = quire_json(&args)?;
    ensure!(
        tenants
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["tenant_id"] == imported.tenant_text()),
        "quire tenant list after the restart: {tenants}"
    );
    server.check_alive()
}

/// Writes `quire token mint` output to `dir/name.token`.
fn mint(keys: &Path, name: &str, args: &[&str]) -> Result<std::path::PathBuf> {
    let private = keys.join("auth_private.pem");
    let mut all = vec![
        "token",
        "mint",
        "--private-key",
        private.to_str().context("path")?,
    ];
    all.extend_from_slice(args);
    let token = quire(&all)?;
    let path = keys.join(format!("{name}.token"));
    std::fs::write(&path, token.trim())?;
    Ok(path)
}

fn read_token(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// The admin API without a token, with a compute token, with a token of
/// another key; `/metrics` is open.
fn admin_api_refusals(server: &Pageserver, keys: &Path, other_keys: &Path) -> Result<()> {
    let mut args = vec!["tenant", "create"];
    args.extend(server.api());
    let said = quire_fails(&args)?;
    ensure!(
        said.contains("401"),
        "quire tenant create without a token: {said}"
    );
    println!(
        "quire tenant create without a token: refused ({})",
        said.trim()
    );
    let (status, body) = server.get("/v1/tenant", None)?;
    ensure!(
        status == 401,
        "GET /v1/tenant without a token: {status} {body}"
    );
    let compute_any = mint(keys, "compute-any", &["--scope", "compute"])?;
    let (status, body) = server.get("/v1/tenant", Some(&read_token(&compute_any)?))?;
    ensure!(
        status == 403,
        "GET /v1/tenant with a compute token: {status} {body}"
    );
    let forged = mint(other_keys, "forged", &["--scope", "admin"])?;
    let (status, body) = server.get("/v1/tenant", Some(&read_token(&forged)?))?;
    ensure!(
        status == 401,
        "GET /v1/tenant with another key's token: {status} {body}"
    );
    let (status, _) = server.get("/metrics", None)?;
    ensure!(status == 200, "/metrics without a token: {status}");

    Ok(())
}

/// Hellos for tenant `a` with no token, another key's, an expired one
/// and one of the wrong scope.
fn bad_tokens_refused(server: &Pageserver, keys: &Path, forged: &Path, a: &Imported) -> Result<()> {
    let unsharded = ShardIdentity::unsharded();
    PageConn::refused(
        server.page,
        &hello(a.tenant, a.timeline, unsharded, ""),
        ServiceError::Unauthenticated,
        "no token",
    )?;
    PageConn::refused(
        server.page,
        &hello(a.tenant, a.timeline, unsharded, &read_token(forged)?),
        ServiceError::Unauthenticated,
        "a token of another key",
    )?;
    let expired = mint(keys, "expired", &["--scope", "compute", "--ttl", "0"])?;
    PageConn::refused(
        server.page,
        &hello(a.tenant, a.timeline, unsharded, &read_token(&expired)?),
        ServiceError::Unauthenticated,
        "an expired token",
    )?;
    let peer = mint(keys, "peer", &["--scope", "safekeeper-peer", "--node", "1"])?;
    PageConn::refused(
        server.page,
        &hello(a.tenant, a.timeline, unsharded, &read_token(&peer)?),
        ServiceError::Forbidden,
        "a safekeeper token",
    )?;
    Ok(())
}

#[test]
fn tokens_decide_who_opens_which_tenant_and_who_administers() -> Result<()> {
    let source = Source::create(3_000)?;
    let root = tempfile::tempdir()?;
    let keys = root.path().join("keys");
    quire(&["token", "keygen", "--dir", keys.to_str().context("path")?])?;
    let other_keys = root.path().join("other-keys");
    quire(&[
        "token",
        "keygen",
        "--dir",
        other_keys.to_str().context("path")?,
    ])?;
    let admin = mint(&keys, "admin", &["--scope", "admin"])?;
    let public = keys.join("auth_public.pem");
    let dir = root.path().join("pageserver");
    let server = Pageserver::start(
        &dir,
        &[
            "--cores",
            "1",
            "--auth-public-key",
            public.to_str().context("path")?,
        ],
    )?;

    admin_api_refusals(&server, &keys, &other_keys)?;
    let compute_any = keys.join("compute-any.token");
    let forged = other_keys.join("forged.token");

    let a = import(&server, &source.pg.datadir(), &[], Some(&admin))?;
    let b = import(&server, &source.pg.datadir(), &[], Some(&admin))?;
    let (status, body) = server.get("/v1/tenant", Some(&read_token(&admin)?))?;
    ensure!(
        status == 200 && body.contains(&a.tenant_text()) && body.contains(&b.tenant_text()),
        "GET /v1/tenant with the admin token: {status} {body}"
    );
    let token_a = read_token(&mint(
        &keys,
        "a",
        &["--scope", "compute", "--tenant", &a.tenant_text()],
    )?)?;
    let unsharded = ShardIdentity::unsharded();

    let mut conn = PageConn::ready(
        server.page,
        &hello(a.tenant, a.timeline, unsharded, &token_a),
    )?;
    let (_, page) = conn.page(source.rel, 1)?;
    ensure!(
        page == source.page(1),
        "tenant A's block 1 differs from the file's"
    );
    println!("tenant A with its token: HelloOk, block 1 as the file has it");
    PageConn::refused(
        server.page,
        &hello(b.tenant, b.timeline, unsharded, &token_a),
        ServiceError::Forbidden,
        "tenant B with tenant A's token",
    )?;
    bad_tokens_refused(&server, &keys, &forged, &a)?;
    // A token without a tenant claim reaches every tenant.
    let mut conn_b = PageConn::ready(
        server.page,
        &hello(b.tenant, b.timeline, unsharded, &read_token(&compute_any)?),
    )?;
    ensure!(
        conn_b.nblocks(source.rel)? == source.blocks(),
        "tenant B's size"
    );
    // The first connection was served throughout.
    ensure!(
        conn.nblocks(source.rel)? == source.blocks(),
        "tenant A's size"
    );

    // quire verify shows its token file.
    let token_file = mint(
        &keys,
        "verify",
        &["--scope", "compute", "--tenant", &b.tenant_text()],
    )?;
    verify(&server, &b, &source.pg.datadir(), Some(&token_file))?;
    let mut server = server;
    server.check_alive()
}

/// A two-shard tenant of stripe 8: each block served by its owner alone,
/// and stored by it alone (each shard's layers well below `unsharded`'s,
/// the same data imported unsharded).
fn two_shards(server: &Pageserver, source: &Source, unsharded: &Imported) -> Result<()> {
    let z = import(
        server,
        &source.pg.datadir(),
        &["--shard-count", "2", "--stripe-size", "8"],
        None,
    )?;
    let shards = z.tenant_json["shards"].as_array().context("shards")?;
    ensure!(
        shards.len() == 2 && shards[0]["core"] != shards[1]["core"],
        "the two shards share a core: {}",
        z.tenant_json
    );
    let layer_bytes = |status: &serde_json::Value| status["layers"]["bytes"].as_u64();
    let whole = layer_bytes(&timeline_show(server, unsharded)?).context("unsharded layer bytes")?;
    let status = timeline_show(server, &z)?;
    let per_shard: Vec<Option<u64>> = status["shards"]
        .as_array()
        .context("shards of the timeline")?
        .iter()
        .map(layer_bytes)
        .collect();
    ensure!(
        per_shard.len() == 2
            && per_shard
                .iter()
                .all(|b| b.is_some_and(|b| b > 0 && b < whole * 7 / 10)),
        "layer bytes per shard {per_shard:?}, unsharded {whole}: not split"
    );
    println!("two shards: layer bytes {per_shard:?}, unsharded {whole}");
    let identity = |number| ShardIdentity::new(number, 2, 8);
    let mut conns = Vec::new();
    for number in 0..2 {
        conns.push(PageConn::ready(
            server.page,
            &hello(z.tenant, z.timeline, identity(number)?, ""),
        )?);
    }
    let mut per_shard = [0u32; 2];
    for block in 0..source.blocks() {
        let owner = identity(0)?.owner_of_block(source.rel, BlockNo(block));
        let other = 1 - owner;
        let (lsn, page) = conns[owner as usize].page(source.rel, block)?;
        ensure!(lsn == z.lsn, "shard {owner} served block {block} at {lsn}");
        ensure!(
            page == source.page(block),
            "shard {owner}'s block {block} differs from the file's"
        );
        let refused = conns[other as usize].call_refused(
            &get_page(source.rel, block)?,
            ServiceError::WrongShard {
                owner,
                block: Some(BlockNo(block)),
            },
        );
        refused.with_context(|| format!("block {block} on shard {other}"))?;
        per_shard[owner as usize] += 1;
    }
    ensure!(
        per_shard[0] > 0 && per_shard[1] > 0,
        "blocks per shard: {per_shard:?}"
    );
    println!(
        "two shards: {per_shard:?} blocks each served by its owner, refused by the other with WrongShard"
    );
    // Sizes are shard 0's.
    ensure!(
        conns[0].nblocks(source.rel)? == source.blocks(),
        "shard 0's Nblocks"
    );
    conns[1].call_refused(
        &nblocks(source.rel)?,
        ServiceError::WrongShard {
            owner: 0,
            block: None,
        },
    )?;
    // A connection with the wrong stripe is not this tenant's shard.
    PageConn::refused(
        server.page,
        &hello(z.tenant, z.timeline, ShardIdentity::new(0, 2, 16)?, ""),
        ServiceError::ShardNotHere,
        "stripe 16 for a tenant of stripe 8",
    )?;
    Ok(())
}

#[test]
fn tenants_spread_over_cores_and_shards_serve_only_their_blocks() -> Result<()> {
    let source = Source::create(6_000)?;
    ensure!(
        source.blocks() > 32,
        "t has only {} blocks",
        source.blocks()
    );
    let root = tempfile::tempdir()?;
    let mut server = Pageserver::start(&root.path().join("pageserver"), &["--cores", "2"])?;
    let x = import(&server, &source.pg.datadir(), &[], None)?;
    let y = import(&server, &source.pg.datadir(), &[], None)?;
    let core_of = |imported: &Imported| imported.tenant_json["shards"][0]["core"].as_u64();
    ensure!(
        core_of(&x).is_some() && core_of(&y).is_some() && core_of(&x) != core_of(&y),
        "two tenants on one core: {} and {}",
        x.tenant_json,
        y.tenant_json
    );
    let unsharded = ShardIdentity::unsharded();
    for tenant in [&x, &y] {
        let mut conn = PageConn::ready(
            server.page,
            &hello(tenant.tenant, tenant.timeline, unsharded, ""),
        )?;
        for block in [0, 7, source.blocks() - 1] {
            let (lsn, page) = conn.page(source.rel, block)?;
            ensure!(
                lsn == tenant.lsn,
                "served at {lsn}, imported at {}",
                tenant.lsn
            );
            ensure!(
                page == source.page(block),
                "block {block} differs from the file's"
            );
        }
    }
    for core in ["core=\"0\"", "core=\"1\""] {
        let requests = server.metric("quire_page_requests_total", core)?;
        ensure!(
            requests >= 3.0,
            "quire_page_requests_total{{{core}}} = {requests}"
        );
        println!("quire_page_requests_total{{{core}}} = {requests}");
    }

    two_shards(&server, &source, &x)?;
    server.check_alive()
}
