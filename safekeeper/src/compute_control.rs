//! The compute control's side: create a timeline on the safekeepers, and
//! at every compute start run the election — bump the term on a majority,
//! take the most advanced log, cut it at its last whole record, announce
//! the new history and the compute's address — and report where the new
//! compute's WAL begins.

use std::time::Duration;

use quire_postgres::Lsn;
use quire_postgres::types::is_valid_wal_segment_size;
use quire_postgres::wal::page::first_record_start;
use quire_postgres::wal::stream::WalStreamDecoder;

use crate::election::{Election, Won};
use crate::history::{Term, TermHistory};
use crate::membership::Membership;
use crate::server::conn::FramedConn;
use crate::wire::{Message, TimelineKey};

/// Why the compute control failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Too few safekeepers answered.
    #[error("{0}")]
    NoMajority(String),
    /// A safekeeper refused or failed.
    #[error("safekeeper {address}: {what}")]
    Safekeeper {
        /// Which one.
        address: String,
        /// What it said.
        what: String,
    },
    /// A WAL segment size Postgres does not accept.
    #[error("invalid WAL segment size {0}")]
    InvalidSegmentSize(u32),
    /// A safekeeper reports the last term there is: none is left to elect.
    #[error("a safekeeper is in term {0}: no higher term is left")]
    NoTermLeft(Term),
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One request on a new connection, authenticated with `token` when given.
async fn call(address: &str, token: Option<&str>, message: &Message) -> Result<Message, String> {
    let mut conn = FramedConn::connect_as(address, token)
        .await
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(CALL_TIMEOUT));
    conn.call(message).await.map_err(|e| e.to_string())
}

/// The member set of a timeline kept by `safekeepers`: the `i`-th (from 0)
/// is member `i + 1`, as its standby name `sk<i + 1>` says.
fn members_of(safekeepers: &[String]) -> Result<Membership, ControlError> {
    Membership::numbered(safekeepers)
        .map_err(|e| ControlError::NoMajority(format!("safekeepers: {e}")))
}

/// Creates the timeline on every safekeeper (all must answer), with the
/// member set they make up.
pub async fn create_timeline(
    safekeepers: &[String],
    token: Option<&str>,
    key: TimelineKey,
    wal_start: Lsn,
    segment_size: u32,
    system_id: u64,
) -> Result<(), ControlError> {
    let request = Message::CreateTimeline {
        key,
        wal_start,
        segment_size,
        system_id,
        members: members_of(safekeepers)?.members().to_vec(),
    };
    for address in safekeepers {
        match call(address, token, &request).await {
            Ok(Message::Ok) => {}
            Ok(other) => {
                return Err(ControlError::Safekeeper {
                    address: address.clone(),
                    what: format!("{other:?}"),
                });
            }
            Err(what) => {
                return Err(ControlError::Safekeeper {
                    address: address.clone(),
                    what,
                });
            }
        }
    }
    Ok(())
}

/// Elects `compute` (`host:port`) for the timeline, whose WAL segments
/// are `segment_size` bytes; returns the outcome, whose `start` is where
/// the compute's WAL must begin.
pub async fn elect(
    safekeepers: &[String],
    token: Option<&str>,
    key: TimelineKey,
    compute: &str,
    segment_size: u32,
) -> Result<Won, ControlError> {
    if !is_valid_wal_segment_size(segment_size) {
        return Err(ControlError::InvalidSegmentSize(segment_size));
    }
    let members = members_of(safekeepers)?;
    let mut highest: Term = 0;
    for address in safekeepers {
        if let Ok(Message::Status { term, .. }) =
            call(address, token, &Message::GetStatus { key }).await
        {
            highest = highest.max(term);
        }
    }
    for _attempt in 0..10 {
        let term = highest
            .checked_add(1)
            .ok_or(ControlError::NoTermLeft(highest))?;
        let mut election = Election::new(term, members.clone());
        for member in members.members() {
            let address = &member.address;
            let vote = Message::Vote {
                key,
                term: election.term(),
            };
            if let Some(response) = call(address, token, &vote)
                .await
                .ok()
                .and_then(Message::into_response)
            {
                election.on_response(member.id, &response);
            }
        }
        highest = highest.max(election.highest_term_seen());
        let Some(won) = election.outcome() else {
            continue;
        };
        let Some(donor) = members.get(won.donor).map(|m| m.address.as_str()) else {
            continue;
        };
        let donor_history = TermHistory(won.history.0[..won.history.0.len() - 1].to_vec());
        let (record_end, prev_record) = last_record_end(
            donor,
            token,
            key,
            election.term(),
            &donor_history,
            won.start,
            u64::from(segment_size),
        )
        .await?;
        let won = won.starting_at(record_end, prev_record);
        announce(safekeepers, token, key, &won, compute).await?;
        return Ok(won);
    }
    Err(ControlError::NoMajority(format!(
        "no majority of {} safekeepers voted in 10 rounds (up to term {highest})",
        members.len()
    )))
}

/// Where the donor's last whole record ends at or below `flush`, and where
/// it begins (`Lsn::INVALID` if no record lies before `flush`): decodes its
/// WAL from the first record start of the segment holding `flush` (or an
/// earlier one).
async fn last_record_end(
    donor: &str,
    token: Option<&str>,
    key: TimelineKey,
    term: Term,
    history: &TermHistory,
    flush: Lsn,
    segment_size: u64,
) -> Result<(Lsn, Lsn), ControlError> {
    let failed = |what: String| ControlError::Safekeeper {
        address: donor.to_owned(),
        what,
    };
    let Message::Status { .. } = call(donor, token, &Message::GetStatus { key })
        .await
        .map_err(failed)?
    else {
        return Err(failed("no status".into()));
    };
    let wal_start = history.0.first().map_or(flush, |e| e.start);
    let mut segment = flush.0.saturating_sub(1) / segment_size;
    loop {
        let segment_start = Lsn(segment * segment_size);
        let from = segment_start.max(wal_start);
        if from >= flush {
            return Ok((flush, Lsn::INVALID));
        }
        let bytes = fetch_range(donor, token, key, term, history, from, flush).await?;
        let start = if from == segment_start {
            first_record_start(
                &bytes,
                segment_start,
                u32::try_from(segment_size).unwrap_or(0),
            )
            .map_err(|e| failed(e.to_string()))?
        } else {
            Some(from)
        };
        let Some(start) = start else {
            if segment == 0 || from == wal_start {
                return Ok((from, Lsn::INVALID));
            }
            segment -= 1;
            continue;
        };
        let mut decoder = WalStreamDecoder::new(start, u32::try_from(segment_size).unwrap_or(0));
        let skip = usize::try_from(start.0 - from.0).unwrap_or(0);
        decoder.feed(&bytes[skip.min(bytes.len())..]);
        let mut end = start;
        let mut last_start = Lsn::INVALID;
        while let Ok(Some(record)) = decoder.next_record() {
            // The decoder refuses the LSN space's last page: this rounds.
            end = record.end.align_up(8).unwrap_or(record.end);
            last_start = record.start;
        }
        return Ok((end.min(flush), last_start));
    }
}

/// The donor's WAL `[from, to)`, fetched a frame (at most 1 MiB) at a time.
async fn fetch_range(
    donor: &str,
    token: Option<&str>,
    key: TimelineKey,
    term: Term,
    history: &TermHistory,
    from: Lsn,
    to: Lsn,
) -> Result<Vec<u8>, ControlError> {
    let failed = |what: String| ControlError::Safekeeper {
        address: donor.to_owned(),
        what,
    };
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let fetch = Message::Fetch {
            key,
            term,
            history: history.clone(),
            from: at,
            to,
        };
        match call(donor, token, &fetch).await.map_err(failed)? {
            Message::Wal { begin, bytes } if begin == at && !bytes.is_empty() => {
                at = at
                    .checked_add(bytes.len() as u64)
                    .ok_or_else(|| failed("WAL past the end of the LSN space".into()))?;
                out.extend_from_slice(&bytes);
            }
            other => return Err(failed(format!("fetch for the record end: {other:?}"))),
        }
    }
    Ok(out)
}

/// Announces the won term to every safekeeper; a majority must adopt it.
async fn announce(
    safekeepers: &[String],
    token: Option<&str>,
    key: TimelineKey,
    won: &Won,
    compute: &str,
) -> Result<(), ControlError> {
    let message = Message::Elected {
        key,
        term: won.term,
        history: won.history.clone(),
        compute: compute.to_owned(),
    };
    let mut adopted = 0;
    let mut failures = Vec::new();
    for address in safekeepers {
        match call(address, token, &message).await {
            Ok(Message::Flushed { term, .. }) if term == won.term => adopted += 1,
            Ok(other) => failures.push(format!("{address}: {other:?}")),
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    if adopted * 2 > safekeepers.len() {
        Ok(())
    } else {
        Err(ControlError::NoMajority(format!(
            "term {} adopted by {adopted} of {} safekeepers ({})",
            won.term,
            safekeepers.len(),
            failures.join("; ")
        )))
    }
}
