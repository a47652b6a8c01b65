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
use quire_cluster::{RunAs, run_bounded};

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
    let pg = stack.start_compute_with("128MB")?;
    let regress = stack.install.build_tree()?.join("src/test/regress");
    let run_as = RunAs::detect()?;
    let outputs = tempfile::tempdir()?;
    run_as.give(outputs.path())?;
    let mut command = run_as.command("make");
    command
        .arg("-C")
        .arg(&regress)
        .args(["-s", "installcheck-parallel"])
        .arg(format!(
            "EXTRA_REGRESS_OPTS=--outputdir={}",
            outputs.path().display()
        ))
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", quire_cluster::SUPERUSER);
    let output = run_bounded(&mut command, Duration::from_secs(1500))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "not ok 54    + database    2346 ms": number, group marker, name.
    let failed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("not ok "))
        .filter_map(|rest| rest.split_whitespace().nth(2))
        .collect();
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.contains("tests passed") || line.contains("tests failed"))
        .unwrap_or("no summary line");
    println!("regression suite on Quire: {summary}; failed: {failed:?}");
    ensure!(
        stdout.contains("1..2"),
        "the suite did not run its schedule:\n{stdout}"
    );
    let diffs =
        std::fs::read_to_string(outputs.path().join("regression.diffs")).unwrap_or_default();
    for test in &failed {
        let diff = diff_of(&diffs, test);
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

/// A changed line a refusal explains: the refusal and its detail, added;
/// or, removed, the error (and its detail) a statement Quire now refuses
/// gave on vanilla: it failed there too, for another reason.
fn explained(line: &str) -> bool {
    let text = line.get(1..).unwrap_or("").trim();
    if line.starts_with('-') {
        return text.starts_with("ERROR:  tablespace")
            || text.starts_with("DETAIL:  tablespace for");
    }
    text.contains("is not supported on a Quire compute")
        || text.contains("copies files directly")
        || text.contains("tells an empty tablespace by its local directory")
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
