//! The byte protocol between Quire and a `--wal-redo` process
//! (docs/redo-protocol.md): request encoding and reply framing.
//!
//! A request is a kind byte, a little-endian u32 body length and the body;
//! a reply is a status byte (`K` ok, `E` error), a u32 length and the body.
//! Requests that answer: get page (`G`), each page of a rebuild batch (`R`),
//! mask (`M`), ping (`Y`) and a sandbox probe the sandbox lets through
//! (`X`). An error reply ends the process.

use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, BlockNo, RelTag};

/// A page to rebuild: its base image (if any) and the WAL records to
/// replay on it, oldest first.
#[derive(Clone, Debug)]
pub struct PageRequest<'a> {
    /// The relation fork.
    pub rel: RelTag,
    /// The block.
    pub block: BlockNo,
    /// The base image; `None` when the first record initialises the page.
    pub image: Option<&'a [u8]>,
    /// `(start, end, record)` for each record.
    pub records: Vec<(Lsn, Lsn, &'a [u8])>,
}

fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    // Bodies are bounded by the 1 GiB limit the process enforces; a longer
    // one is refused there with a clear error.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn tag(out: &mut Vec<u8>, rel: RelTag, block: BlockNo) {
    out.extend_from_slice(&rel.spc_oid.to_le_bytes());
    out.extend_from_slice(&rel.db_oid.to_le_bytes());
    out.extend_from_slice(&rel.rel_number.to_le_bytes());
    out.push(rel.fork as u8);
    out.extend_from_slice(&block.0.to_le_bytes());
}

/// `B`: start rebuilding a page (forgets the previous one).
pub fn begin(out: &mut Vec<u8>, rel: RelTag, block: BlockNo) {
    header(out, b'B', 17);
    tag(out, rel, block);
}

/// `P`: the base image of the page begun.
pub fn push_image(out: &mut Vec<u8>, page: &[u8]) {
    header(out, b'P', page.len());
    out.extend_from_slice(page);
}

/// `A`: replay one record on the page begun.
pub fn apply(out: &mut Vec<u8>, start: Lsn, end: Lsn, record: &[u8]) {
    header(out, b'A', 16 + record.len());
    out.extend_from_slice(&start.0.to_le_bytes());
    out.extend_from_slice(&end.0.to_le_bytes());
    out.extend_from_slice(record);
}

/// `G`: reply with the page begun, then forget it.
pub fn get_page(out: &mut Vec<u8>) {
    header(out, b'G', 0);
}

/// `R`: rebuild many pages in one request; one page reply each, in order.
pub fn rebuild(out: &mut Vec<u8>, pages: &[PageRequest<'_>]) {
    let bodies: usize = pages.iter().map(rebuild_page_len).sum();
    out.reserve(REBUILD_HEADER_LEN + bodies);
    out.extend_from_slice(&rebuild_header(pages.len(), bodies));
    for page in pages {
        rebuild_page(out, page);
    }
}

/// The bytes of an `R` message before its pages: kind, length, count.
pub const REBUILD_HEADER_LEN: usize = 9;

/// The front of an `R` message of `count` pages whose encodings
/// ([`rebuild_page`]) take `bodies` bytes together.
pub fn rebuild_header(count: usize, bodies: usize) -> [u8; REBUILD_HEADER_LEN] {
    let mut out = Vec::with_capacity(REBUILD_HEADER_LEN);
    header(&mut out, b'R', 4 + bodies);
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_le_bytes());
    let mut bytes = [0u8; REBUILD_HEADER_LEN];
    bytes.copy_from_slice(&out);
    bytes
}

/// How many bytes [`rebuild_page`] writes for `page`.
pub fn rebuild_page_len(page: &PageRequest<'_>) -> usize {
    17 + 1
        + page.image.map_or(0, <[u8]>::len)
        + 4
        + page.records.iter().map(|r| 20 + r.2.len()).sum::<usize>()
}

/// One page of an `R` message, as it follows the count: tag, flags,
/// image, records.
pub fn rebuild_page(out: &mut Vec<u8>, page: &PageRequest<'_>) {
    tag(out, page.rel, page.block);
    out.push(u8::from(page.image.is_some()));
    if let Some(image) = page.image {
        out.extend_from_slice(image);
    }
    out.extend_from_slice(
        &u32::try_from(page.records.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (start, end, record) in &page.records {
        out.extend_from_slice(&start.0.to_le_bytes());
        out.extend_from_slice(&end.0.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(record.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(record);
    }
}

/// `M`: the page after resource manager `rmid`'s `rm_mask`.
pub fn mask(out: &mut Vec<u8>, rmid: u8, block: BlockNo, page: &[u8; BLCKSZ]) {
    header(out, b'M', 1 + 4 + BLCKSZ);
    out.push(rmid);
    out.extend_from_slice(&block.0.to_le_bytes());
    out.extend_from_slice(page);
}

/// `Y`: an empty reply.
pub fn ping(out: &mut Vec<u8>) {
    header(out, b'Y', 0);
}

/// A call the sandbox decides on, made by an `X` request (tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxProbe {
    /// `open("/")`: always refused.
    Open,
    /// `kill(pid, 0)`: allowed for the process's own pid only.
    Kill(i32),
    /// `mmap` of an anonymous page with these protection bits: refused with
    /// `PROT_EXEC`.
    Map(u32),
    /// `mprotect` of a fresh read-write page to these protection bits:
    /// refused with `PROT_EXEC`.
    Protect(u32),
}

/// `X`: make one call the sandbox decides on. A refused call kills the
/// process (`SIGSYS`); one let through is answered with 4 bytes, its errno
/// (0 for success).
pub fn probe_sandbox(out: &mut Vec<u8>, probe: SandboxProbe) {
    let (what, arg) = match probe {
        SandboxProbe::Open => (b'o', 0),
        SandboxProbe::Kill(pid) => (b'k', pid.cast_unsigned()),
        SandboxProbe::Map(prot) => (b'm', prot),
        SandboxProbe::Protect(prot) => (b'p', prot),
    };
    header(out, b'X', 5);
    out.push(what);
    out.extend_from_slice(&arg.to_le_bytes());
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `K`: the body (a page, or nothing for a ping).
    Ok(Vec<u8>),
    /// `E`: the process's error message; the process exits after it.
    Error(String),
}

/// The longest reply body a process may send: a page, or an error message
/// (Postgres' own messages are far shorter).
pub const MAX_REPLY: usize = 64 * 1024;

/// Splits replies off the front of `buf`; returns how many bytes they used.
pub fn parse_replies(buf: &[u8], replies: &mut Vec<Reply>) -> Result<usize, String> {
    let mut at = 0;
    while buf.len() - at >= 5 {
        let mut len = [0u8; 4];
        len.copy_from_slice(&buf[at + 1..at + 5]);
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_REPLY {
            return Err(format!(
                "reply of {len} bytes is over the {MAX_REPLY}-byte limit"
            ));
        }
        if buf.len() - at - 5 < len {
            break;
        }
        let body = &buf[at + 5..at + 5 + len];
        replies.push(match buf[at] {
            b'K' => Reply::Ok(body.to_vec()),
            b'E' => Reply::Error(String::from_utf8_lossy(body).into_owned()),
            other => return Err(format!("reply status byte 0x{other:02X}")),
        });
        at += 5 + len;
    }
    Ok(at)
}
