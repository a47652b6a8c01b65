//! Direct I/O on `io_uring`, one executor per core.
//!
//! This crate owns every syscall that touches a layer file, and nothing else
//! in Quire names glommio or `io_uring`, so a runtime swap touches this crate
//! alone:
//! - [`executors`]: one pinned glommio executor per core, started after a
//!   check that `io_uring` buffer registration works ([`registration`]),
//!   reported loudly when it does not.
//! - [`block_file`]: layer files read in whole 8 KiB blocks with `O_DIRECT`
//!   (block numbers, never byte offsets, so a misaligned read cannot be
//!   expressed), several blocks per submission, and new files made durable
//!   by data fsync, rename and directory fsync.
//! - [`ephemeral_file`]: the scratch file behind a timeline's in-memory
//!   layer (O_DIRECT, CRC of every block kept and checked, never fsynced).
//! - [`direct_io_probe`]: keeps glommio's poll-ring probe from enabling
//!   polled reads on a device that lacks them (it probes empty new files).
//! - [`cache`]: the per-core block cache (S3-FIFO, bounded in bytes).
//! - [`segment_file`]: preallocated files written in place, block by
//!   block, with direct I/O and `fdatasync` (the safekeeper's WAL).
//! - [`pipe`]: non-blocking pipes to helper processes (the redo pool's
//!   `--wal-redo` processes), waited on with a deadline.
//!
//! It never parses a format: bytes in, bytes out. It is one of the three
//! places where `unsafe` is allowed, each block with a `// SAFETY:` line.

pub mod block_file;
pub mod cache;
pub mod direct_io_probe;
pub mod ephemeral_file;
pub mod executors;
pub mod pipe;
pub mod registration;
pub mod segment_file;

pub use block_file::{
    BLOCK_SIZE, BlockFile, BlockFileWriter, FileError, remove_file, sync_directory_of,
};
pub use cache::{BlockCache, BlockKey, CacheStats, FileId};
pub use direct_io_probe::prime_device_of;
pub use ephemeral_file::EphemeralFile;
pub use executors::{ExecutorConfig, run_per_core};
pub use registration::RegistrationStatus;
pub use segment_file::SegmentFile;
