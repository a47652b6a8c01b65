//! Terms and term histories: which term wrote each byte of a WAL log.
//!
//! A term is an election round. The compute elected in term T writes WAL
//! from the LSN its election chose (the end of the most advanced log among
//! the voters); the history of a log lists `(term, start LSN)` for each term
//! that wrote part of it, in ascending order. Two logs with the same entry
//! `(term, start)` hold the same bytes from `start` until either history's
//! next entry, because one term has one writer. This module compares
//! histories; it knows nothing of bytes.

use quire_postgres::Lsn;

/// An election round. Term 0 is "none yet".
pub type Term = u64;

/// The term that wrote a log from `start` on (until the next entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TermEntry {
    /// The term.
    pub term: Term,
    /// Where its WAL begins.
    pub start: Lsn,
}

/// A log's terms, ascending in both term and start LSN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TermHistory(pub Vec<TermEntry>);

/// Why a history is not a valid one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("term history is not ascending at entry {index}")]
pub struct HistoryError {
    /// The first entry out of order.
    pub index: usize,
}

impl TermHistory {
    /// Checks that terms strictly ascend and starts do not descend.
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (index, pair) in self.0.windows(2).enumerate() {
            if pair[1].term <= pair[0].term || pair[1].start < pair[0].start {
                return Err(HistoryError { index: index + 1 });
            }
        }
        Ok(())
    }

    /// The term of the last entry that starts at or below `flush`: the
    /// term of the last byte a log that ends at `flush` holds (or of the
    /// log itself when it ends exactly where that term began). Elections
    /// compare logs by `(last_log_term, flush)`; an entry a log adopted but
    /// has not reached yet (it is still recovering below its start) does
    /// not count. 0 for an empty history.
    pub fn last_log_term(&self, flush: Lsn) -> Term {
        self.0
            .iter()
            .rev()
            .find(|e| e.start <= flush)
            .map_or(0, |e| e.term)
    }

    /// The term that wrote the byte at `lsn`, if any entry covers it.
    pub fn term_at(&self, lsn: Lsn) -> Option<Term> {
        self.0.iter().rev().find(|e| e.start <= lsn).map(|e| e.term)
    }

    /// The last entry's term (0 for an empty history).
    pub fn last_term(&self) -> Term {
        self.0.last().map_or(0, |e| e.term)
    }

    /// The history a newly elected `term` writes with: this (the donor's)
    /// history up to its log end `flush`, then `(term, flush)`. Entries that
    /// start at or past `flush` wrote nothing the donor holds and go.
    #[must_use]
    pub fn elect(&self, flush: Lsn, term: Term) -> TermHistory {
        let mut entries: Vec<TermEntry> =
            self.0.iter().copied().filter(|e| e.start < flush).collect();
        entries.push(TermEntry { term, start: flush });
        TermHistory(entries)
    }

    /// The highest LSN up to which a log with this history, ending at
    /// `flush`, holds the same bytes as any log with history `other`:
    /// the end of their last common entry (bounded by `flush`), or
    /// `wal_start` when they share none.
    pub fn common_point(&self, flush: Lsn, other: &TermHistory, wal_start: Lsn) -> Lsn {
        let shared = self
            .0
            .iter()
            .zip(&other.0)
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            return wal_start.min(flush);
        }
        let mine_ends = self.0.get(shared).map_or(Lsn(u64::MAX), |e| e.start);
        let theirs_end = other.0.get(shared).map_or(Lsn(u64::MAX), |e| e.start);
        mine_ends.min(theirs_end).min(flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Term, u64)]) -> TermHistory {
        TermHistory(
            entries
                .iter()
                .map(|&(term, start)| TermEntry {
                    term,
                    start: Lsn(start),
                })
                .collect(),
        )
    }

    #[test]
    fn last_log_term_ignores_entries_the_log_has_not_reached() {
        let history = h(&[(1, 100), (3, 500), (7, 900)]);
        assert_eq!(history.last_log_term(Lsn(950)), 7);
        assert_eq!(history.last_log_term(Lsn(900)), 7);
        assert_eq!(history.last_log_term(Lsn(899)), 3);
        assert_eq!(history.last_log_term(Lsn(50)), 0);
        assert_eq!(TermHistory::default().last_log_term(Lsn(10)), 0);
    }

    #[test]
    fn elect_cuts_at_the_donor_end() {
        let donor = h(&[(1, 100), (3, 500), (7, 900)]);
        assert_eq!(donor.elect(Lsn(700), 9), h(&[(1, 100), (3, 500), (9, 700)]));
        assert_eq!(donor.elect(Lsn(900), 9), h(&[(1, 100), (3, 500), (9, 900)]));
        assert_eq!(
            donor.elect(Lsn(1000), 9),
            h(&[(1, 100), (3, 500), (7, 900), (9, 1000)])
        );
        assert_eq!(TermHistory::default().elect(Lsn(100), 1), h(&[(1, 100)]));
    }

    #[test]
    fn common_point_is_the_end_of_the_last_shared_term() {
        let mine = h(&[(1, 100), (3, 500)]);
        let theirs = h(&[(1, 100), (4, 400), (6, 800)]);
        // Term 1 is shared until the first divergence at 400.
        assert_eq!(mine.common_point(Lsn(700), &theirs, Lsn(100)), Lsn(400));
        // The log itself may end earlier.
        assert_eq!(mine.common_point(Lsn(300), &theirs, Lsn(100)), Lsn(300));
        // Same history: the whole log.
        assert_eq!(mine.common_point(Lsn(700), &mine, Lsn(100)), Lsn(700));
        // A longer log of the same term: cut where the other's next term starts.
        let newer = h(&[(1, 100), (3, 500), (8, 600)]);
        assert_eq!(mine.common_point(Lsn(700), &newer, Lsn(100)), Lsn(600));
        // Nothing shared.
        assert_eq!(
            h(&[(2, 100)]).common_point(Lsn(700), &theirs, Lsn(100)),
            Lsn(100)
        );
        assert_eq!(
            TermHistory::default().common_point(Lsn(100), &theirs, Lsn(100)),
            Lsn(100)
        );
    }

    #[test]
    fn validation_refuses_unordered_histories() {
        assert!(h(&[(1, 100), (3, 500)]).validate().is_ok());
        assert_eq!(
            h(&[(3, 100), (3, 500)]).validate(),
            Err(HistoryError { index: 1 })
        );
        assert_eq!(
            h(&[(1, 600), (3, 500)]).validate(),
            Err(HistoryError { index: 1 })
        );
    }
}
