//! Postgres' own regression suite (the full parallel schedule,
//! `installcheck`) on a compute over Quire: every permanent relation's page
//! read from the pageserver, WAL through the safekeepers.
//!
//! Tests may differ from vanilla only where Quire deliberately refuses
//! something or has no local file to count; each allowed difference is
//! listed in `docs/regress-on-quire.md` with its reason, and this test
//! fails on any other failing test, on an allowed one that fails for
//! another reason, and (for `database`) on a diff line the refusal does not
//! explain.

mod compute_support;
mod pageserver_support;

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use quire_tests::regress::installcheck;

use compute_support::Stack;

/// How much of an allowed test's diff the reason covers.
#[derive(Clone, Copy)]
enum Covers {
    /// Every changed line must be one the refusal explains.
    ExplainedLines,
    /// At most this many changed lines.
    Lines(usize),
}

/// The tests allowed to fail: each with what its diff must show (the
/// refusal, or the statistic that has no local file to count) and how much
/// of the diff that covers.
const ALLOWED: &[(&str, &str, Covers)] = &[
    (
        "tablespace",
        "DROP TABLESPACE is not supported on a Quire compute",
        Covers::ExplainedLines,
    ),
    (
        "database",
        "ALTER DATABASE ... SET TABLESPACE is not supported on a Quire compute",
        Covers::ExplainedLines,
    ),
    // pg_stat_io counts the fsyncs md.c makes of local files; a relation on
    // the pageserver has none (one `t` becomes `f`).
    ("stats", "io_sum_shared_after_fsyncs", Covers::Lines(2)),
];

#[test]
fn the_regression_suite_passes_on_a_compute_over_quire() -> Result<()> {
    let stack = Stack::start()?;
    // A local cache: most reads never reach the (debug-built) pageserver,
    // so only back-pressure (`quire.max_ingest_lag`) keeps the compute's
    // WAL within reach of its ingest; without it statements failed with
    // WalNotIngested after the 60 s retry limit.
    let pg = stack.start_compute_with("128MB", "64MB")?;
    let run = installcheck(&stack.install, pg.port(), Duration::from_secs(1500))?;
    let failed = run.failed();
    println!(
        "regression suite on Quire: {}; failed: {failed:?}",
        run.summary().unwrap_or("no summary line")
    );
    pg.psql("postgres", "CREATE EXTENSION IF NOT EXISTS quire_smgr")?;
    let counts = pg.psql(
        "postgres",
        "SELECT string_agg(name || '=' || value, ' ' ORDER BY name) FROM quire_smgr_stats() \
         WHERE name ~ '^(ingest_|local_cache_hits|local_cache_misses|read_requests)'",
    )?;
    println!("quire_smgr: {}", counts.trim());
    ensure!(
        run.stdout.contains("1..2"),
        "the suite did not run its schedule:\n{}",
        run.stdout
    );
    let diffs = &run.diffs;
    for test in &failed {
        let diff = diff_of(diffs, test);
        let Some(&(_, reason, covers)) = ALLOWED.iter().find(|(name, ..)| name == test) else {
            bail!("{test} fails on Quire and is not an allowed difference:\n{diff}");
        };
        ensure!(
            diff.contains(reason),
            "{test} fails, but not for its known reason:\n{diff}"
        );
        let changed: Vec<&str> = diff
            .lines()
            .filter(|line| {
                (line.starts_with('+') && !line.starts_with("+++"))
                    || (line.starts_with('-') && !line.starts_with("---"))
            })
            .collect();
        match covers {
            Covers::ExplainedLines => {
                if let Some(line) = changed.iter().find(|line| !explained(line)) {
                    bail!("{test} differs beyond what Quire refuses: {line}\n{diff}");
                }
            }
            Covers::Lines(most) => ensure!(
                changed.len() <= most,
                "{test} differs in {} lines, more than its known {most}:\n{diff}",
                changed.len()
            ),
        }
    }
    Ok(())
}

/// A changed line a refusal explains: the refusal and its detail, and the
/// owner of the tablespace it kept failing to be dropped, added; or,
/// removed, the error (and its detail) a statement Quire now refuses gave on
/// vanilla: it failed there too, for another reason.
fn explained(line: &str) -> bool {
    let text = line.get(1..).unwrap_or("").trim();
    if line.starts_with('-') {
        return text.starts_with("ERROR:  tablespace")
            || text.starts_with("DETAIL:  tablespace for");
    }
    text.contains("is not supported on a Quire compute")
        || text.contains("copies files directly")
        || text.contains("tells an empty tablespace by its local directory")
        // The tablespace a refused DROP kept still has its owner.
        || (text.starts_with("ERROR:  role \"regress_tablespace_user")
            && text.ends_with("cannot be dropped because some objects depend on it"))
        || text.starts_with("DETAIL:  owner of tablespace regress_tblspace")
}

/// The part of regression.diffs about one test.
fn diff_of(diffs: &str, test: &str) -> String {
    let marker = format!("/{test}.out");
    let mut out = String::new();
    let mut inside = false;
    for line in diffs.lines() {
        if line.starts_with("diff ") {
            inside = line.contains(&marker);
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
