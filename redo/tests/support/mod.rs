//! What the redo pool's integration tests share: an executor to run a test
//! on, the relation their pages belong to, and pages that name a number.

use anyhow::Result;
use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BLCKSZ, ForkNumber, RelTag};

/// Runs `test` on a local executor.
pub fn on_executor<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + 'static,
{
    run_local(&LocalConfig::default(), test).map_err(|e| anyhow::anyhow!("{e}"))?
}

/// The relation of the tests' pages.
pub fn rel() -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16_384,
        fork: ForkNumber::Main,
    }
}

/// A valid empty heap page whose contents name `n`.
pub fn page(n: u32) -> Vec<u8> {
    let mut page = vec![0u8; BLCKSZ];
    page[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
    page[14..16].copy_from_slice(&8192u16.to_le_bytes()); // pd_upper
    page[16..18].copy_from_slice(&8192u16.to_le_bytes()); // pd_special
    page[18..20].copy_from_slice(&0x2004u16.to_le_bytes()); // version 4, 8 KiB
    page[100..104].copy_from_slice(&n.to_le_bytes());
    page
}
