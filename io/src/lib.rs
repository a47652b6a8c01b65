//! Direct I/O on `io_uring`, one executor per core.
//!
//! This crate will own every syscall that touches a layer file: the pinned
//! per-core glommio executors (with a loud start-up check that buffer
//! registration worked), aligned buffers whose types make a misaligned
//! `O_DIRECT` read impossible, batched reads, the per-core block cache, and the
//! fsync discipline (data fsync, rename, directory fsync). Nothing else in
//! Quire names glommio or `io_uring`, so a runtime swap touches this crate
//! alone. It must never parse a format: bytes in, bytes out.
//!
//! It is one of the three places where `unsafe` is allowed, each block with a
//! `// SAFETY:` line.
