//! The compute's page-protocol client in C (`postgres/extensions/quire_smgr`)
//! against a real `quire pageserver`: a stopped cluster is imported, and a
//! second, vanilla-storage Postgres with `CREATE EXTENSION quire_smgr` reads
//! it over the protocol from SQL. Pages equal the source cluster's files
//! byte for byte (one `GetPage` at a time and pipelined `GetPages`), sizes
//! equal the files' sizes, a made-up relation does not exist, and each
//! failure (an unknown tenant or timeline, a missing relation, a closed
//! port, a server that never answers) is an ERROR naming it, within the
//! configured timeout, after which the backend's next call works again.

mod pageserver_support;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use quire_cluster::{PgCluster, PgClusterOptions, PgInstall};
use quire_tests::pg_install;

use pageserver_support::{Imported, Pageserver, import};

const BLCKSZ: usize = 8192;
/// The default tablespace.
const SPC: u32 = 1663;

/// One relation of the source cluster, with its file as it was left.
struct SourceRel {
    node: u32,
    file: Vec<u8>,
}

impl SourceRel {
    fn blocks(&self) -> usize {
        self.file.len() / BLCKSZ
    }

    fn page_hex(&self, block: usize) -> Result<String> {
        let page = self
            .file
            .get(block * BLCKSZ..(block + 1) * BLCKSZ)
            .with_context(|| format!("block {block} of a {}-byte file", self.file.len()))?;
        Ok(hex(page))
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn one_line(pg: &PgCluster, sql: &str) -> Result<String> {
    Ok(pg.psql("postgres", sql)?.trim().to_owned())
}

/// `relation`'s file node and file (read once the cluster stops).
fn locate(pg: &PgCluster, relation: &str) -> Result<(u32, String)> {
    let node = one_line(pg, &format!("SELECT pg_relation_filenode('{relation}')"))?.parse()?;
    let path = one_line(pg, &format!("SELECT pg_relation_filepath('{relation}')"))?;
    Ok((node, path))
}

fn read_rel(datadir: &Path, node: u32, path: &str) -> Result<SourceRel> {
    let file = std::fs::read(datadir.join(path)).with_context(|| format!("read {path}"))?;
    ensure!(
        !file.is_empty() && file.len() % BLCKSZ == 0,
        "{path} has {} bytes",
        file.len()
    );
    Ok(SourceRel { node, file })
}

/// Runs `sql` in the compute, which must fail: the ERROR's text and how
/// long it took.
fn fails(compute: &PgCluster, sql: &str) -> Result<(String, Duration)> {
    let began = Instant::now();
    match compute.psql("postgres", sql) {
        Ok(out) => bail!("{sql}: succeeded with {out:?}"),
        Err(error) => Ok((format!("{error:#}"), began.elapsed())),
    }
}

/// A stopped cluster with a table `t` of more than 32 blocks: the cluster,
/// the `postgres` database's oid, `pg_class` and `t`.
fn source(install: &PgInstall) -> Result<(PgCluster, u32, SourceRel, SourceRel)> {
    let mut source = PgCluster::create(install, PgClusterOptions::default())?;
    source.start()?;
    source.psql_script(
        "postgres",
        "CREATE TABLE t AS SELECT g, repeat('x', 60) AS pad FROM generate_series(1, 6000) g;\nCHECKPOINT;\n",
    )?;
    let db: u32 = one_line(
        &source,
        "SELECT oid FROM pg_database WHERE datname = 'postgres'",
    )?
    .parse()?;
    let (class_node, class_path) = locate(&source, "pg_class")?;
    let (t_node, t_path) = locate(&source, "t")?;
    source.stop()?;
    let class = read_rel(&source.datadir(), class_node, &class_path)?;
    let t = read_rel(&source.datadir(), t_node, &t_path)?;
    ensure!(
        t.blocks() > 32,
        "t has {} blocks: too few to need two GetPages",
        t.blocks()
    );

    Ok((source, db, class, t))
}

/// Pages of `pg_class`, one `GetPage` each, at latest and at the import
/// LSN; all of `t` through pipelined `GetPages` of 32 blocks.
fn pages(
    compute: &PgCluster,
    db: u32,
    class: &SourceRel,
    t: &SourceRel,
    imported: &Imported,
) -> Result<()> {
    let class_node = class.node;
    let t_node = t.node;
    // Pages of pg_class, one GetPage each, at latest and at the import LSN.
    let last = class.blocks() - 1;
    for block in [0, 1, last / 2, last] {
        let got = one_line(
            compute,
            &format!("SELECT encode(quire_getpage({SPC}, {db}, {class_node}, 0, {block}), 'hex')"),
        )?;
        ensure!(
            got == class.page_hex(block)?,
            "pg_class block {block} differs from the source's file"
        );
    }
    let got = one_line(
        compute,
        &format!(
            "SELECT encode(quire_getpage({SPC}, {db}, {class_node}, 0, 0, '{}'), 'hex')",
            imported.lsn
        ),
    )?;
    ensure!(
        got == class.page_hex(0)?,
        "pg_class block 0 at {} differs",
        imported.lsn
    );

    // All of t through pipelined GetPages of 32 blocks.
    let got = one_line(
        compute,
        &format!(
            "SELECT encode(quire_getpages({SPC}, {db}, {t_node}, 0, 0, {}), 'hex')",
            t.blocks()
        ),
    )?;
    ensure!(
        got == hex(&t.file),
        "t's {} blocks read with GetPages differ from its file",
        t.blocks()
    );
    Ok(())
}

/// Sizes and existence.
fn sizes(compute: &PgCluster, db: u32, class: &SourceRel, t: &SourceRel) -> Result<()> {
    let class_node = class.node;
    // Sizes and existence.
    for rel in [class, t] {
        let nblocks: usize = one_line(
            compute,
            &format!("SELECT quire_nblocks({SPC}, {db}, {}, 0)", rel.node),
        )?
        .parse()?;
        ensure!(
            nblocks == rel.blocks(),
            "relation {}: quire_nblocks {nblocks}, file {} blocks",
            rel.node,
            rel.blocks()
        );
    }
    let exists = one_line(
        compute,
        &format!(
            "SELECT quire_exists({SPC}, {db}, {class_node}, 0), quire_exists({SPC}, {db}, 987654321, 0)"
        ),
    )?;
    ensure!(
        exists == "t|f",
        "quire_exists of pg_class, made-up: {exists}"
    );
    let db_size: usize = one_line(compute, &format!("SELECT quire_dbsize({db})"))?.parse()?;
    ensure!(
        db_size >= class.file.len() + t.file.len(),
        "quire_dbsize {db_size} is below pg_class and t alone"
    );
    Ok(())
}

/// A refused request leaves the connection usable; a refused Hello is an
/// ERROR naming the server's code, and the next call connects anew.
fn refusals(compute: &PgCluster, db: u32, class: &SourceRel) -> Result<()> {
    let class_node = class.node;
    // A refused request leaves the connection usable; a refused Hello is
    // an ERROR naming the server's code, and the next call connects anew.
    let script = format!(
        "DO $$ BEGIN\n\
           PERFORM quire_nblocks({SPC}, {db}, 987654321, 0);\n\
           RAISE EXCEPTION 'no error';\n\
         EXCEPTION WHEN others THEN\n\
           IF SQLERRM NOT LIKE '%NotFound%' THEN RAISE; END IF;\n\
         END $$;\n\
         SET quire.tenant = '0123456789abcdef0123456789abcdef';\n\
         DO $$ BEGIN\n\
           PERFORM quire_nblocks({SPC}, {db}, {class_node}, 0);\n\
           RAISE EXCEPTION 'no error';\n\
         EXCEPTION WHEN others THEN\n\
           IF SQLERRM NOT LIKE '%UnknownTenant%' THEN RAISE; END IF;\n\
         END $$;\n\
         RESET quire.tenant;\n\
         SELECT quire_nblocks({SPC}, {db}, {class_node}, 0);\n"
    );
    let out = compute.psql_script("postgres", &script)?;
    ensure!(
        out.trim() == class.blocks().to_string(),
        "after NotFound and UnknownTenant in one session: {out:?}"
    );
    let (error, _) = fails(
        compute,
        &format!(
            "SET quire.tenant = '0123456789abcdef0123456789abcdef'; SELECT quire_nblocks({SPC}, {db}, {class_node}, 0)"
        ),
    )?;
    ensure!(error.contains("UnknownTenant"), "a wrong tenant: {error}");
    println!("a wrong tenant: {error}");
    let (error, _) = fails(
        compute,
        &format!(
            "SET quire.timeline = '0123456789abcdef0123456789abcdef'; SELECT quire_exists({SPC}, {db}, {class_node}, 0)"
        ),
    )?;
    ensure!(
        error.contains("UnknownTimeline"),
        "a wrong timeline: {error}"
    );
    Ok(())
}

/// A closed port fails at once; a server that accepts and never answers
/// fails when `quire.request_timeout` runs out.
fn unreachable(compute: &PgCluster, db: u32, class: &SourceRel) -> Result<()> {
    let class_node = class.node;
    // A closed port fails at once; a server that accepts and never answers
    // fails when quire.request_timeout runs out.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (error, took) = fails(
        compute,
        &format!(
            "SET quire.pageserver = '{closed}'; SELECT quire_nblocks({SPC}, {db}, {class_node}, 0)"
        ),
    )?;
    ensure!(
        error.contains("could not open a pageserver connection") && took < Duration::from_secs(10),
        "a closed port ({took:?}): {error}"
    );
    println!("a closed port ({took:?}): {error}");
    let silent = TcpListener::bind("127.0.0.1:0")?;
    let (error, took) = fails(
        compute,
        &format!(
            "SET quire.pageserver = '{}'; SET quire.request_timeout = 1500; SELECT quire_nblocks({SPC}, {db}, {class_node}, 0)",
            silent.local_addr()?
        ),
    )?;
    ensure!(
        error.contains("timed out")
            && took >= Duration::from_millis(1400)
            && took < Duration::from_secs(10),
        "a server that never answers ({took:?}): {error}"
    );
    println!("a server that never answers ({took:?}): {error}");
    drop(silent);
    // Settings are checked once the library is loaded.
    for (name, value) in [
        ("quire.timeline", "not-32-hex-digits"),
        ("quire.tenant", "0123"),
        ("quire.pageserver", "no-port"),
    ] {
        let (error, _) = fails(
            compute,
            &format!("SELECT quire_exists({SPC}, {db}, {class_node}, 0); SET {name} = '{value}'"),
        )?;
        ensure!(
            error.contains(&format!("invalid value for parameter \"{name}\"")),
            "{name} = {value}: {error}"
        );
    }
    Ok(())
}

#[test]
fn quire_smgr_probes_read_an_imported_cluster() -> Result<()> {
    let install = pg_install()?;
    let (source, db, class, t) = source(&install)?;

    let root = tempfile::tempdir()?;
    let mut server = Pageserver::start(&root.path().join("pageserver"), &[])?;
    let imported = import(&server, &source.datadir(), &[], None)?;

    let mut compute = PgCluster::create(&install, PgClusterOptions::default())?;
    compute.start()?;
    compute.psql("postgres", "CREATE EXTENSION quire_smgr")?;
    let settings = format!(
        "ALTER DATABASE postgres SET quire.pageserver = '{}';\n\
         ALTER DATABASE postgres SET quire.tenant = '{}';\n\
         ALTER DATABASE postgres SET quire.timeline = '{}';\n",
        server.page,
        imported.tenant_text(),
        imported.timeline_text()
    );
    compute.psql_script("postgres", &settings)?;

    pages(&compute, db, &class, &t, &imported)?;
    sizes(&compute, db, &class, &t)?;
    refusals(&compute, db, &class)?;
    unreachable(&compute, db, &class)?;

    server.check_alive()?;
    compute.stop()?;
    Ok(())
}
