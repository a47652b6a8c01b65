//! The safety invariants, checked as the simulation runs:
//!
//! 1. Two different WAL bytes are never committed at one LSN: every commit
//!    (a proposer's quorum of flush acknowledgements, or an acceptor's
//!    commit LSN) must agree with every earlier one where they overlap.
//! 2. Committed WAL is never lost: the log a newly elected proposer writes
//!    on holds every committed byte, and no acceptor cuts its WAL below
//!    its own commit LSN.

/// Committed bytes, from the timeline's WAL start.
#[derive(Default)]
pub struct Checker {
    committed: Vec<u8>,
    pub commits: u64,
}

impl Checker {
    /// `log[..len]` was committed by `who`.
    pub fn commit(&mut self, who: &str, log: &[u8], len: usize) -> Result<(), String> {
        let log = log
            .get(..len)
            .ok_or_else(|| format!("{who} commits {len} bytes of a {}-byte log", log.len()))?;
        let overlap = log.len().min(self.committed.len());
        if let Some(at) = (0..overlap).find(|&i| log[i] != self.committed[i]) {
            return Err(format!(
                "{who} committed byte {at} as {:#04x}, already committed as {:#04x}",
                log[at], self.committed[at]
            ));
        }
        if log.len() > self.committed.len() {
            self.committed.extend_from_slice(&log[overlap..]);
            self.commits += 1;
        }
        Ok(())
    }

    /// A proposer was elected to write on `log`.
    pub fn elected(&self, who: &str, log: &[u8]) -> Result<(), String> {
        if log.len() < self.committed.len() || log[..self.committed.len()] != self.committed[..] {
            return Err(format!(
                "{who} was elected on a {}-byte log that lacks committed WAL ({} bytes committed)",
                log.len(),
                self.committed.len()
            ));
        }
        Ok(())
    }

    /// `log[..len]` (within the committed bytes) is what was committed.
    pub fn agrees(&self, who: &str, log: &[u8], len: usize) -> Result<(), String> {
        let len = len.min(self.committed.len());
        match (0..len).find(|&i| log.get(i) != Some(&self.committed[i])) {
            Some(at) => Err(format!("{who} differs from the committed WAL at byte {at}")),
            None => Ok(()),
        }
    }

    /// Bytes committed so far.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }
}
