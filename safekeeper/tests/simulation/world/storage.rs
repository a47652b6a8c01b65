//! The simulated disks' storage faults and what a safekeeper host does
//! about them, mirroring `wal_store` and `server/timeline.rs`.
//!
//! WAL records are [`RECORD`] bytes: a body and a checksum over the body
//! and the record's own position (as Postgres' record CRC and page
//! addresses catch a flipped bit or a block written at the wrong place).
//! One node per seed has a faulty disk. While it is down, its WAL may take
//! a bit flip, a lost write (a record left unwritten) or a misdirected
//! write (a record written over another's place), and one of its two
//! control-file copies a bit flip; crashes tear WAL writes (part of the
//! unflushed tail, cut inside a record) and control-file replacements (the
//! first copy new, the second old). Faults go only where the design claims
//! to find them: records in the window a restart decodes (from the segment
//! before the last), each below the persisted flush mark or followed by a
//! record that still decodes. A restart finds its log end by checking
//! records in that window, judges damage as `WalStore` does (records
//! valid after a bad one, or a log ending below the mark other than inside
//! one last partial record), and a damaged acceptor fetches the range from
//! peers, keeping only records whose checksums pass.

use quire_postgres::Lsn;
use quire_safekeeper::acceptor::{Acceptor, DurableState};
use quire_safekeeper::control_file::ControlFile;

use super::{ACCEPTORS, CHUNK, Payload, RECORD, World, lsn_of, members, node_id, offset};

/// The simulated WAL segment size (a restart decodes from the start of
/// the segment before the last).
const SEGMENT: usize = 512;
/// Flush completions between flush-mark writes (the server's
/// `MARK_INTERVAL`).
const MARK_EVERY: u64 = 8;

/// The checksum of a record at `at` with `body`.
fn checksum(at: usize, body: &[u8]) -> [u8; 4] {
    let mut bytes = (at as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(body);
    quire_checksum::crc32c(&bytes).to_le_bytes()
}

/// A record to write at offset `at` (from the WAL start).
pub(super) fn record(at: usize, body: &[u8; RECORD - 4]) -> [u8; RECORD] {
    let mut out = [0u8; RECORD];
    out[..RECORD - 4].copy_from_slice(body);
    out[RECORD - 4..].copy_from_slice(&checksum(at, body));
    out
}

/// Whether the whole record at `at` in `wal` is sound.
fn sound(wal: &[u8], at: usize) -> bool {
    wal.get(at..at + RECORD)
        .is_some_and(|r| r[RECORD - 4..] == checksum(at, &r[..RECORD - 4]))
}

/// What a restart finds: the end of the log it reads, and the end of the
/// last sound record after a bad one (damage) if any.
fn scan(wal: &[u8]) -> (usize, Option<usize>) {
    let whole = wal.len() - wal.len() % RECORD;
    let window = (wal.len() / SEGMENT).saturating_sub(1) * SEGMENT;
    let Some(bad) = (window..whole).step_by(RECORD).find(|&at| !sound(wal, at)) else {
        return (whole, None);
    };
    let after = (bad + RECORD..whole)
        .step_by(RECORD)
        .filter(|&at| sound(wal, at))
        .map(|at| at + RECORD)
        .max();
    (bad, after)
}

/// The records a fault may hit on `wal`: in the decoded window, below the
/// mark or with a sound record after them (not the last one).
fn coverable(wal: &[u8], mark: usize) -> Vec<usize> {
    let whole = wal.len() - wal.len() % RECORD;
    let window = (wal.len() / SEGMENT).saturating_sub(1) * SEGMENT;
    let last = whole.saturating_sub(RECORD);
    (window..whole)
        .step_by(RECORD)
        .filter(|&at| at < last || at + RECORD <= mark)
        .collect()
}

impl World {
    /// The two control-file copies as the acceptor's state (`load`'s
    /// choice, the stale copy rewritten); a refusal is an error.
    pub(super) fn load_control(&mut self, node: usize) -> Result<DurableState, String> {
        let n = &mut self.nodes[node];
        let loaded = ControlFile::choose(n.control[0].as_deref(), n.control[1].as_deref())
            .map_err(|e| format!("acceptor {node} cannot read its control file: {e}"))?;
        let Some(loaded) = loaded else {
            return Ok(DurableState::new(Lsn(super::WAL_START), members()));
        };
        if loaded.repaired.is_some() {
            let bytes = loaded.file.encode();
            n.control = [Some(bytes.clone()), Some(bytes)];
            self.counts.control_repairs += 1;
        }
        Ok(loaded.file.state)
    }

    /// Writes both copies (`torn`: a crash after the first).
    pub(super) fn store_control(&mut self, node: usize, state: DurableState, torn: bool) {
        let file = ControlFile {
            tenant: [1; 16],
            timeline: [2; 16],
            system_id: 1,
            segment_size: 16 << 20,
            state,
        };
        let bytes = file.encode();
        let n = &mut self.nodes[node];
        n.control[0] = Some(bytes.clone());
        if !torn {
            n.control[1] = Some(bytes);
        }
    }

    /// The faulty node's disk takes a fault while it is down.
    pub(super) fn storage_fault(&mut self, node: usize) {
        if node != self.faulty_node || !self.rng.chance(250) {
            return;
        }
        let mark = self.nodes[node]
            .control
            .iter()
            .flatten()
            .filter_map(|bytes| ControlFile::decode(bytes).ok())
            .map(|file| offset(file.state.flush_mark))
            .min()
            .unwrap_or(0);
        let kind = self.rng.range(0, 3);
        let wal = &self.nodes[node].wal;
        let targets = coverable(wal, mark);
        if kind == 3 {
            // One fault at a time: a copy flips only while the other is
            // sound and the same (not between the two writes of a store).
            let control = &self.nodes[node].control;
            if control[0].is_none() || control[0] != control[1] {
                return;
            }
            let copy = self.rng.range(0, 1) as usize;
            let at = self.rng.range(0, 80) as usize;
            if let Some(byte) = self.nodes[node].control[copy]
                .as_mut()
                .and_then(|b| b.get_mut(at))
            {
                *byte ^= 0x10;
                self.counts.control_flips += 1;
            }
            return;
        }
        if targets.is_empty() {
            return;
        }
        let pick =
            |rng: &mut crate::rng::Rng| targets[rng.range(0, targets.len() as u64 - 1) as usize];
        let at = pick(&mut self.rng);
        let wal = &mut self.nodes[node].wal;
        match kind {
            0 => {
                let bit = self.rng.range(0, RECORD as u64 * 8 - 1) as usize;
                wal[at + bit / 8] ^= 1 << (bit % 8);
                self.counts.wal_bit_flips += 1;
            }
            1 => {
                wal[at..at + RECORD].fill(0);
                self.counts.lost_writes += 1;
            }
            _ => {
                let to = pick(&mut self.rng);
                if to != at {
                    let moved: Vec<u8> = wal[at..at + RECORD].to_vec();
                    wal[at..at + RECORD].fill(0);
                    wal[to..to + RECORD].copy_from_slice(&moved);
                    self.counts.misdirected_writes += 1;
                }
            }
        }
    }

    /// A restarted node's acceptor: its log end as a restart finds it,
    /// damage noted (and its mark persisted) as the server does.
    pub(super) fn restore_acceptor(&mut self, node: usize) -> Result<Acceptor, String> {
        let state = self.load_control(node)?;
        let mark = offset(state.flush_mark);
        let (readable, after) = scan(&self.nodes[node].wal);
        let below_mark = mark > readable && mark - mark % RECORD > readable;
        let mut acceptor = Acceptor::restore(state, lsn_of(readable), node_id(node));
        let until = after.max(below_mark.then_some(mark));
        if let Some(until) = until {
            if self.trace {
                eprintln!(
                    "{:>5} acceptor {node} finds damage {}..{} (mark {})",
                    self.now,
                    lsn_of(readable),
                    lsn_of(until),
                    lsn_of(mark)
                );
            }
            self.counts.damage_found += 1;
            if let Some(state) = acceptor.note_damage(lsn_of(until)) {
                self.store_control(node, state, false);
            }
        }
        // The log is what the acceptor reads; the bytes past it stay on
        // the disk only as evidence, which the mark now records.
        let n = &mut self.nodes[node];
        n.wal.truncate(readable);
        n.durable = n.durable.min(readable);
        Ok(acceptor)
    }

    /// A damaged acceptor asks a peer for the next part of its range.
    pub(super) fn repair_fetch(&mut self, node: usize, acceptor: &Acceptor) {
        let Some((from, until)) = acceptor.damage() else {
            return;
        };
        let peer = (node + 1 + self.nodes[node].next_peer % (ACCEPTORS - 1)) % ACCEPTORS;
        self.nodes[node].next_peer += 1;
        let fetch = Payload::Fetch {
            term: acceptor.term(),
            history: acceptor.durable().history.clone(),
            from,
            to: until.min(Lsn(from.0 + CHUNK)),
        };
        self.send(node, peer, fetch);
    }

    /// Fetched repair bytes at `begin`: the sound whole records from there
    /// (and the partial record at the range's end, when all before it are
    /// sound) are written; returns whether any were.
    pub(super) fn take_repair(
        &mut self,
        node: usize,
        begin: Lsn,
        bytes: &[u8],
    ) -> Result<(), String> {
        let Some((from, until)) = self.nodes[node]
            .acceptor
            .as_ref()
            .and_then(Acceptor::damage)
        else {
            return Ok(());
        };
        if begin != from || !offset(begin).is_multiple_of(RECORD) {
            return Ok(());
        }
        let start = offset(begin);
        let mut candidate = self.nodes[node].wal.clone();
        candidate.truncate(start);
        candidate.extend_from_slice(bytes);
        let mut keep = 0;
        while keep + RECORD <= bytes.len() && sound(&candidate, start + keep) {
            keep += RECORD;
        }
        if keep + RECORD > bytes.len() && begin.0 + bytes.len() as u64 == until.0 {
            keep = bytes.len();
        }
        if keep < bytes.len() - bytes.len() % RECORD {
            self.counts.repair_refusals += 1;
        }
        let n = &mut self.nodes[node];
        let Some(write) = n
            .acceptor
            .as_mut()
            .and_then(|a| a.repair_write(begin, keep as u64))
        else {
            return Ok(());
        };
        if offset(write.at) != n.wal.len() {
            return Err(format!(
                "acceptor {node} repairs at {} but its log ends at {}",
                write.at,
                lsn_of(n.wal.len())
            ));
        }
        let skip = write.skip as usize;
        n.wal
            .extend_from_slice(&bytes[skip..skip + write.len as usize]);
        self.counts.repaired_bytes += write.len;
        Ok(())
    }

    /// Now and then, after a flush, the flush mark is persisted.
    pub(super) fn maybe_mark(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.flushes += 1;
        if !n.flushes.is_multiple_of(MARK_EVERY) {
            return;
        }
        let Some(state) = n.acceptor.as_mut().and_then(Acceptor::mark_flush) else {
            return;
        };
        self.store_control(node, state, false);
    }
}
