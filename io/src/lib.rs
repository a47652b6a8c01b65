//! Direct I/O and sockets on `io_uring`, one executor per core.
//!
//! This crate owns the runtime: every syscall on a layer or WAL file, every
//! socket, every task and timer. Nothing else in Quire names glommio or
//! `io_uring` (only this crate's manifest lists glommio), so a runtime swap
//! touches this crate alone:
//! - [`executors`]: one pinned glommio executor per core
//!   ([`run_per_core`]), started after a check that `io_uring` buffer
//!   registration works ([`registration`]), reported loudly when it does
//!   not; or a single executor ([`run_local`], [`spawn_executor`]) for
//!   tests, benchmarks and one-shot commands.
//! - [`runtime`]: on the current core, [`spawn_local`] (a [`Task`] awaited
//!   to join it, or detached), [`yield_now`], [`sleep`], [`timeout`] and
//!   [`timeout_at`].
//! - [`net`]: TCP listener (`accept` gives the stream and the peer's
//!   address) and streams (connect with a timeout, `read`/`read_exact`/
//!   `write`/`write_all`, reads bounded by a timeout or a deadline,
//!   `shutdown`, `set_nodelay`); Unix-domain listener and streams.
//! - [`handoff`]: the bounded queue (at most [`HANDOFF_QUEUE_MAX`] items)
//!   that carries a detached connection to another core; a full queue is
//!   an error value, never growth.
//! - [`block_file`]: layer files read in whole 8 KiB blocks with `O_DIRECT`
//!   (block numbers, never byte offsets, so a misaligned read cannot be
//!   expressed), several blocks per submission, and new files made durable
//!   by data fsync, rename and directory fsync. Reads return a [`ReadBuf`]
//!   ([`read_buf`]): the executor's I/O memory, lent out without a copy.
//! - [`ephemeral_file`]: the scratch file behind a timeline's in-memory
//!   layer (O_DIRECT, CRC of every block kept and checked, never fsynced).
//! - [`direct_io_probe`]: keeps glommio's poll-ring probe from enabling
//!   polled reads on a device that lacks them (it probes empty new files).
//! - [`cache`]: the per-core block cache (S3-FIFO, bounded in bytes).
//! - [`segment_file`]: preallocated files written in place, block by
//!   block, with direct I/O and `fdatasync` (the safekeeper's WAL).
//! - [`pipe`]: pipes to helper processes (the redo pool's `--wal-redo`
//!   processes) read and written as asynchronous operations, so a hung
//!   process holds up only the task awaiting it.
//! - [`child`]: child processes started on a thread of their own (a fork
//!   never stalls the core) and waited for with timers, killed after a
//!   grace period.
//!
//! It never parses a format: bytes in, bytes out. It is one of the three
//! places where `unsafe` is allowed, each block with a `// SAFETY:` line
//! (the registration probe, the pipe calls, the spawning thread's CPU
//! affinity, and the descriptor hand-over of a detached TCP stream).

pub mod block_file;
pub mod cache;
pub mod child;
pub mod direct_io_probe;
pub mod ephemeral_file;
pub mod executors;
pub mod handoff;
pub mod net;
pub mod pipe;
pub mod read_buf;
pub mod registration;
pub mod runtime;
pub mod segment_file;

pub use block_file::{
    BLOCK_SIZE, BlockFile, BlockFileWriter, FileError, remove_file, sync_directory_of,
};
pub use cache::{BlockCache, BlockKey, CacheStats, FileId};
pub use direct_io_probe::prime_device_of;
pub use ephemeral_file::EphemeralFile;
pub use executors::{
    ExecutorConfig, ExecutorError, ExecutorHandle, IO_MEMORY_BYTES_DEFAULT, LocalConfig, run_local,
    run_per_core, spawn_executor,
};
pub use handoff::{HANDOFF_QUEUE_MAX, HandoffError};
pub use read_buf::ReadBuf;
pub use registration::RegistrationStatus;
pub use runtime::{Elapsed, Task, sleep, spawn_local, timeout, timeout_at, yield_now};
pub use segment_file::SegmentFile;
