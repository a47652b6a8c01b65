//! Unit tests of `quire verify`'s classification of differences.

use super::checker::tail_findings;
use super::*;
use crate::datadir::TailPages;
use quire_postgres::types::RelTag;

fn vm_fork() -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16_384,
        fork: ForkNumber::VisibilityMap,
    }
}

fn check(theirs: u32, known: bool, zero: u64, written: &[u32], expected: &[(&str, u64)]) {
    let tail = TailPages {
        zero,
        written: written.to_vec(),
    };
    let found: Vec<(String, u64)> = tail_findings(vm_fork(), theirs, known, &tail)
        .into_iter()
        .map(|f| (f.line, f.pages))
        .collect();
    let expected: Vec<(String, u64)> = expected.iter().map(|&(l, p)| (l.to_owned(), p)).collect();
    assert_eq!(found, expected);
}

#[test]
fn all_zero_pages_no_wal_names_are_no_difference() {
    // The visibility-map fork VACUUM extends without WAL: one zero page.
    check(1, false, 1, &[], &[]);
    // Zero pages past a known fork's end.
    check(5, true, 2, &[], &[]);
    check(0, false, 0, &[], &[]);
}

#[test]
fn written_pages_no_wal_names_are_differences() {
    check(
        1,
        false,
        0,
        &[0],
        &[(
            "relation 1663/5/16384 fork vm: 1 blocks in Postgres, unknown to Quire",
            1,
        )],
    );
    check(
        3,
        false,
        2,
        &[1],
        &[(
            "relation 1663/5/16384 fork vm: 3 blocks in Postgres (2 of them all-zero), unknown to Quire",
            1,
        )],
    );
    check(
        6,
        true,
        1,
        &[3, 5],
        &[
            (
                "relation 1663/5/16384 fork vm block 3: Postgres has the page, the WAL never reached it",
                1,
            ),
            (
                "relation 1663/5/16384 fork vm block 5: Postgres has the page, the WAL never reached it",
                1,
            ),
        ],
    );
}
