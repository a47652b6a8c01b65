//! Checking that io_uring buffer registration works for the configured I/O
//! memory.
//!
//! Registration pins memory and counts against `RLIMIT_MEMLOCK` unless the
//! process has `CAP_IPC_LOCK`. glommio registers each executor's I/O memory
//! with its three rings and, on failure, only logs and falls back. This
//! probe performs the same registrations on throwaway rings first, so the
//! outcome is known and reported before any executor starts.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use io_uring::IoUring;

/// Whether executors will get registered buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// The kernel accepted the registration.
    Registered,
    /// It did not; direct I/O still works, each request pinning its pages.
    Unregistered {
        /// Why.
        reason: String,
    },
}

/// Page-aligned zeroed memory, freed on drop.
struct PinnableMemory {
    pointer: *mut u8,
    layout: Layout,
}

impl PinnableMemory {
    fn new(bytes: usize) -> Option<PinnableMemory> {
        let layout = Layout::from_size_align(bytes.max(4096), 4096).ok()?;
        // SAFETY: the layout has a non-zero size; the pointer is checked for
        // null and freed with the same layout in Drop.
        let pointer = unsafe { alloc_zeroed(layout) };
        (!pointer.is_null()).then_some(PinnableMemory { pointer, layout })
    }
}

impl Drop for PinnableMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout, freed once.
        unsafe { dealloc(self.pointer, self.layout) }
    }
}

/// Registers `bytes` of memory with three io_uring instances, as glommio
/// does for each executor, and reports whether the kernel allowed it.
pub fn probe_buffer_registration(bytes: usize) -> RegistrationStatus {
    let Some(memory) = PinnableMemory::new(bytes) else {
        return RegistrationStatus::Unregistered {
            reason: format!("cannot allocate {bytes} bytes"),
        };
    };
    let iovec = libc::iovec {
        iov_base: memory.pointer.cast(),
        iov_len: memory.layout.size(),
    };
    let mut rings = Vec::new();
    for _ in 0..3 {
        let ring = match IoUring::new(8) {
            Ok(ring) => ring,
            Err(error) => {
                return RegistrationStatus::Unregistered {
                    reason: format!("io_uring_setup: {error}"),
                };
            }
        };
        // SAFETY: the iovec describes `memory`, which outlives every ring
        // (rings are dropped, unregistering it, before `memory` is freed at
        // the end of this function).
        if let Err(error) = unsafe {
            ring.submitter()
                .register_buffers(std::slice::from_ref(&iovec))
        } {
            return RegistrationStatus::Unregistered {
                reason: format!("io_uring_register(BUFFERS): {error}"),
            };
        }
        rings.push(ring);
    }
    drop(rings);
    RegistrationStatus::Registered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_registration_succeeds() {
        // 64 KiB three times fits in any memlock limit Postgres-era kernels ship.
        assert_eq!(
            probe_buffer_registration(64 * 1024),
            RegistrationStatus::Registered
        );
    }
}
