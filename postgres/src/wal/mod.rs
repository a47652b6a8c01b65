//! Postgres 17's write-ahead log: pages, records, full-page images.
//!
//! [`stream::WalStreamDecoder`] turns raw WAL bytes into checked whole
//! records; [`record::decode_record`] splits a record into its header, block
//! references, images and data; [`image::BlockImage::restore`] rebuilds a
//! page from a full-page image; [`effects`] says what the storage must do
//! for a record ([`relsize`]: the compute's relation-size messages), and
//! [`vm`] what a heap record does to a map page it names;
//! [`writer`] lays records out on pages the
//! way Postgres does, for the segment a compute starts from and for tests.

pub mod effects;
pub mod image;
pub mod page;
pub mod pglz;
pub mod record;
pub mod relsize;
pub mod rmgr;
pub mod stream;
pub mod vm;
pub mod writer;
mod xact;
