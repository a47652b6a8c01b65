//! The compute's relation-size messages in ingest
//! ([`quire_postgres::wal::relsize`]): a fork's size is at least what the
//! message says. It is raised to that, never lowered; blocks between the
//! old and the new size have no value (or the cut marker a truncation
//! left, [`super::cut`]) and read as zero pages (what Postgres extended
//! them with). A fork the timeline does not have (never
//! created, or dropped) is not created: the message is counted and
//! logged. So is a message off its layout. Every shard applies it, since
//! every shard keeps every fork's size ([`crate::shard_filter`]).

use anyhow::Result;
use quire_postgres::Lsn;
use quire_postgres::types::RelTag;
use quire_postgres::wal::relsize::RelSizeMalformed;

use super::WalIngest;

impl WalIngest {
    /// `rel` has at least `blocks` blocks as of the record ending at `lsn`.
    pub(super) async fn size_at_least(&mut self, rel: RelTag, blocks: u32, lsn: Lsn) -> Result<()> {
        let Some(&size) = self.sizes.get(&rel) else {
            self.stats.relsize_unknown_forks += 1;
            eprintln!(
                "ingest: warning: the relation-size message of the record ending at {lsn} names {rel} \
                 ({blocks} blocks), which the timeline does not have: ignored"
            );
            return Ok(());
        };
        self.stats.relsize_messages += 1;
        if blocks > size {
            self.stats.relsize_raised += 1;
            self.set_size(rel, blocks, lsn).await?;
        }
        Ok(())
    }

    /// A `quire.relsize` message off its layout, in the record ending at
    /// `lsn`: ignored.
    pub(super) fn relsize_malformed(&mut self, why: RelSizeMalformed, lsn: Lsn) {
        self.stats.relsize_malformed += 1;
        eprintln!(
            "ingest: warning: the relation-size message of the record ending at {lsn} is malformed \
             ({why}): ignored"
        );
    }
}

#[cfg(test)]
mod tests;
