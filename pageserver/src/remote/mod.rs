//! The pageserver's side of object storage (`docs/format/remote-storage.md`):
//! [`Uploader`] brings one timeline's remote copy up to a version of its
//! local metadata. Not yet wired into the service: nothing on the serving
//! or ingest path calls it.

mod uploader;

pub use uploader::{SyncOutcome, Uploader, UploaderError};
