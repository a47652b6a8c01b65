//! The part of Postgres' frontend/backend protocol (version 3) a physical
//! replication client speaks, as a pure codec: bytes in, values out.
//!
//! A safekeeper is a streaming-replication standby of the compute: it
//! starts a `replication=true` session, runs `IDENTIFY_SYSTEM` and
//! `START_REPLICATION SLOT s PHYSICAL X/Y TIMELINE t`, then exchanges
//! `CopyData`: `XLogData` (`'w'`) and keepalives (`'k'`) in, standby status
//! updates (`'r'`) out. Before that, the authentication requests a
//! client may answer (cleartext, MD5, SASL) are parsed; answering them is
//! the client's business. Integers are big-endian. Messages longer than
//! [`MAX_MESSAGE`] or shorter than their layout are errors, never panics.

use quire_postgres::Lsn;

/// The longest backend message accepted (a WAL chunk is at most 128 KiB
/// from Postgres' walsender; errors and rows are far shorter).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Protocol version 3.0.
const PROTOCOL_VERSION: u32 = 196_608;

/// A message that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its layout, or a length field that lies.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// Longer than [`MAX_MESSAGE`].
    #[error("message of {0} bytes is over the limit")]
    TooLong(usize),
    /// An authentication method this client does not speak.
    #[error("the server asks for authentication method {0}, which this client does not speak")]
    Authentication(u32),
}

/// What the server asks the client to prove (`'R'` other than `AuthenticationOk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AuthenticationCleartextPassword` (3): send the password.
    Cleartext,
    /// `AuthenticationMD5Password` (5): send `md5` + hex(md5(hex(md5(password
    /// + user)) + salt)).
    Md5 {
        /// The four bytes of salt.
        salt: [u8; 4],
    },
    /// `AuthenticationSASL` (10): the mechanisms the server offers.
    Sasl(Vec<String>),
    /// `AuthenticationSASLContinue` (11): the server's SASL data.
    SaslContinue(Vec<u8>),
    /// `AuthenticationSASLFinal` (12): the server's final SASL data.
    SaslFinal(Vec<u8>),
}

impl AuthRequest {
    /// The method's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            AuthRequest::Cleartext => "password",
            AuthRequest::Md5 { .. } => "md5",
            AuthRequest::Sasl(_) | AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
                "SASL"
            }
        }
    }
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `AuthenticationOk`.
    AuthenticationOk,
    /// Any other authentication request this codec knows.
    Authentication(AuthRequest),
    /// `ReadyForQuery`.
    ReadyForQuery,
    /// `RowDescription` (column names).
    RowDescription(Vec<String>),
    /// `DataRow` (text values; `None` is SQL NULL).
    DataRow(Vec<Option<String>>),
    /// `CommandComplete`.
    CommandComplete(String),
    /// `ErrorResponse`: its fields as (code, text), e.g. `('M', message)`.
    Error(Vec<(u8, String)>),
    /// `CopyBothResponse`: the replication stream begins.
    CopyBoth,
    /// `CopyData`: a replication message.
    CopyData(Vec<u8>),
    /// `CopyDone`.
    CopyDone,
    /// Anything else (`ParameterStatus`, `BackendKeyData`, `Notice`, ...).
    Other(u8),
}

impl Backend {
    /// The error's message field, for a readable error.
    pub fn error_message(fields: &[(u8, String)]) -> String {
        let field = |code: u8| {
            fields
                .iter()
                .find(|(c, _)| *c == code)
                .map_or("", |(_, text)| text.as_str())
        };
        format!("{}: {} ({})", field(b'S'), field(b'M'), field(b'C'))
    }
}

/// A replication message inside `CopyData`, from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication<'a> {
    /// `'w'`: WAL bytes starting at `start`; the server's WAL ends at `wal_end`.
    XLogData {
        /// LSN of the first byte.
        start: Lsn,
        /// The server's flushed WAL end.
        wal_end: Lsn,
        /// The bytes.
        data: &'a [u8],
    },
    /// `'k'`: keepalive; answer at once when `reply_requested`.
    Keepalive {
        /// The server's WAL end.
        wal_end: Lsn,
        /// Whether a status update is due now.
        reply_requested: bool,
    },
}

fn be_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    be_array(bytes, at).map(u32::from_be_bytes)
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    be_array(bytes, at).map(u64::from_be_bytes)
}

/// The startup message of a physical replication session.
pub fn startup(user: &str, application_name: &str) -> Vec<u8> {
    startup_with(&[
        ("user", user),
        ("replication", "true"),
        ("application_name", application_name),
    ])
}

/// A startup message with these parameters (`user` among them; add
/// `replication` = `true` for a physical replication session).
pub fn startup_with(parameters: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    for &(key, value) in parameters {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(kind);
    out.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// A simple query (`'Q'`).
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// `Terminate`.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// `PasswordMessage` (`'p'`): a cleartext password or an MD5 answer.
pub fn password(text: &str) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    message(b'p', &body)
}

/// A standby status update (`'r'` in `CopyData`): written, flushed and
/// applied positions all set to `flush`, the only position a safekeeper
/// has (it applies nothing); `now_micros` is microseconds since
/// 2000-01-01.
pub fn status_update(flush: Lsn, now_micros: i64) -> Vec<u8> {
    standby_status(flush, now_micros, false)
}

/// [`status_update`] that asks the server to answer at once with a
/// keepalive when `reply_requested` (how a client learns that a silent
/// server is still there).
pub fn standby_status(flush: Lsn, now_micros: i64, reply_requested: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(34);
    body.push(b'r');
    for _ in 0..3 {
        body.extend_from_slice(&flush.0.to_be_bytes());
    }
    body.extend_from_slice(&now_micros.to_be_bytes());
    body.push(u8::from(reply_requested));
    message(b'd', &body)
}

/// Splits one backend message off the front of `buf`: `Ok(None)` until it
/// is whole; otherwise the message and the bytes it used.
pub fn parse_backend(buf: &[u8]) -> Result<Option<(Backend, usize)>, WireError> {
    let Some(len) = be_u32(buf, 1) else {
        return Ok(None);
    };
    let len = len as usize;
    if len < 4 {
        return Err(WireError::Malformed("length"));
    }
    if len > MAX_MESSAGE {
        return Err(WireError::TooLong(len));
    }
    let (Some(&kind), Some(body)) = (buf.first(), buf.get(5..1 + len)) else {
        return Ok(None);
    };
    let parsed = match kind {
        b'R' => parse_authentication(body)?,
        b'Z' => Backend::ReadyForQuery,
        b'T' => Backend::RowDescription(parse_row_description(body)?),
        b'D' => Backend::DataRow(parse_data_row(body)?),
        b'C' => Backend::CommandComplete(c_string(body, "command complete")?.0),
        b'E' => Backend::Error(parse_error_fields(body)?),
        b'W' => Backend::CopyBoth,
        b'd' => Backend::CopyData(body.to_vec()),
        b'c' => Backend::CopyDone,
        other => Backend::Other(other),
    };
    Ok(Some((parsed, 1 + len)))
}

fn parse_authentication(body: &[u8]) -> Result<Backend, WireError> {
    let malformed = WireError::Malformed("authentication");
    let method = be_u32(body, 0).ok_or(malformed.clone())?;
    let data = body.get(4..).unwrap_or_default();
    let request = match method {
        0 => return Ok(Backend::AuthenticationOk),
        3 => AuthRequest::Cleartext,
        5 => AuthRequest::Md5 {
            salt: be_array(body, 4).ok_or(malformed)?,
        },
        10 => {
            let mut mechanisms = Vec::new();
            let mut at = 0;
            loop {
                let (name, used) = c_string(data.get(at..).unwrap_or_default(), "authentication")?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name);
                at += used;
            }
            AuthRequest::Sasl(mechanisms)
        }
        11 => AuthRequest::SaslContinue(data.to_vec()),
        12 => AuthRequest::SaslFinal(data.to_vec()),
        other => return Err(WireError::Authentication(other)),
    };
    Ok(Backend::Authentication(request))
}

fn c_string(bytes: &[u8], what: &'static str) -> Result<(String, usize), WireError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed(what))?;
    let text = bytes.get(..end).unwrap_or_default();
    Ok((String::from_utf8_lossy(text).into_owned(), end + 1))
}

fn parse_row_description(body: &[u8]) -> Result<Vec<String>, WireError> {
    let count = body
        .get(0..2)
        .ok_or(WireError::Malformed("row description"))?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut at = 2;
    let mut names = Vec::new();
    for _ in 0..count {
        let (name, used) = c_string(body.get(at..).unwrap_or_default(), "row description")?;
        // A name, then table oid, column, type oid, size, modifier, format.
        at = at.saturating_add(used).saturating_add(18);
        if at > body.len() {
            return Err(WireError::Malformed("row description"));
        }
        names.push(name);
    }
    Ok(names)
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let count = body.get(0..2).ok_or(WireError::Malformed("data row"))?;
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut at = 2;
    let mut values = Vec::new();
    for _ in 0..count {
        let len = be_u32(body, at).ok_or(WireError::Malformed("data row"))?;
        at += 4;
        if len == u32::MAX {
            values.push(None);
            continue;
        }
        let end = at
            .checked_add(len as usize)
            .ok_or(WireError::Malformed("data row"))?;
        let value = body.get(at..end).ok_or(WireError::Malformed("data row"))?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        at = end;
    }
    Ok(values)
}

fn parse_error_fields(body: &[u8]) -> Result<Vec<(u8, String)>, WireError> {
    let mut fields = Vec::new();
    let mut at = 0;
    while let Some(&code) = body.get(at) {
        if code == 0 {
            break;
        }
        let (text, used) = c_string(body.get(at + 1..).unwrap_or_default(), "error")?;
        fields.push((code, text));
        at += 1 + used;
    }
    Ok(fields)
}

/// Reads a replication message from a `CopyData` body.
pub fn parse_replication(body: &[u8]) -> Result<Replication<'_>, WireError> {
    match body.first() {
        Some(b'w') => {
            let start = be_u64(body, 1).ok_or(WireError::Malformed("XLogData"))?;
            let wal_end = be_u64(body, 9).ok_or(WireError::Malformed("XLogData"))?;
            let data = body.get(25..).ok_or(WireError::Malformed("XLogData"))?;
            Ok(Replication::XLogData {
                start: Lsn(start),
                wal_end: Lsn(wal_end),
                data,
            })
        }
        Some(b'k') => {
            let wal_end = be_u64(body, 1).ok_or(WireError::Malformed("keepalive"))?;
            let reply = *body.get(17).ok_or(WireError::Malformed("keepalive"))?;
            Ok(Replication::Keepalive {
                wal_end: Lsn(wal_end),
                reply_requested: reply != 0,
            })
        }
        _ => Err(WireError::Malformed("replication")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_updates_carry_the_flush_position_three_times() {
        let bytes = status_update(Lsn(0x1_0000_0028), 7);
        assert_eq!(bytes[0], b'd');
        assert_eq!(be_u32(&bytes, 1), Some(38));
        assert_eq!(bytes[5], b'r');
        for i in 0..3 {
            assert_eq!(be_u64(&bytes, 6 + 8 * i), Some(0x1_0000_0028));
        }
        assert_eq!(be_u64(&bytes, 30), Some(7));
        assert_eq!(bytes.len(), 5 + 34);
    }

    #[test]
    fn backend_messages_parse_and_partial_ones_wait() {
        let mut row = vec![b'D'];
        let body = [0, 2, 0, 0, 0, 3, b'a', b'b', b'c', 0xFF, 0xFF, 0xFF, 0xFF];
        row.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        row.extend_from_slice(&body);
        for cut in 0..row.len() {
            assert_eq!(parse_backend(&row[..cut]), Ok(None));
        }
        let (message, used) = parse_backend(&row).unwrap().unwrap();
        assert_eq!(used, row.len());
        assert_eq!(message, Backend::DataRow(vec![Some("abc".into()), None]));
        let lying = [b'D', 0, 0, 0, 6, 0, 1];
        assert_eq!(parse_backend(&lying), Err(WireError::Malformed("data row")));
        assert_eq!(
            parse_backend(&[b'R', 0, 0, 0, 8, 0, 0, 0, 7]),
            Err(WireError::Authentication(7))
        );
        assert!(matches!(
            parse_backend(&[b'd', 0x7F, 0, 0, 0]),
            Err(WireError::TooLong(_))
        ));
    }

    fn check_auth(body: &[u8], expected: Result<Backend, WireError>) {
        let mut bytes = vec![b'R'];
        bytes.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        bytes.extend_from_slice(body);
        assert_eq!(
            parse_backend(&bytes).map(|m| m.map(|(m, _)| m)),
            expected.map(Some),
            "{body:?}"
        );
    }

    #[test]
    fn authentication_requests_parse_or_refuse() {
        check_auth(&[0, 0, 0, 0], Ok(Backend::AuthenticationOk));
        check_auth(
            &[0, 0, 0, 3],
            Ok(Backend::Authentication(AuthRequest::Cleartext)),
        );
        check_auth(
            &[0, 0, 0, 5, 1, 2, 3, 4],
            Ok(Backend::Authentication(AuthRequest::Md5 {
                salt: [1, 2, 3, 4],
            })),
        );
        check_auth(
            &[0, 0, 0, 5, 1, 2],
            Err(WireError::Malformed("authentication")),
        );
        check_auth(
            b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0",
            Ok(Backend::Authentication(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into(),
            ]))),
        );
        check_auth(
            b"\0\0\0\x0aSCRAM",
            Err(WireError::Malformed("authentication")),
        );
        check_auth(
            b"\0\0\0\x0br=abc",
            Ok(Backend::Authentication(AuthRequest::SaslContinue(
                b"r=abc".to_vec(),
            ))),
        );
        check_auth(&[0, 0, 0, 2], Err(WireError::Authentication(2)));
        check_auth(&[0, 0], Err(WireError::Malformed("authentication")));
        assert_eq!(password("pw")[0], b'p');
        assert_eq!(&password("pw")[5..], b"pw\0");
        let ping = standby_status(Lsn(8), 7, true);
        assert_eq!(ping.last(), Some(&1));
        assert_eq!(status_update(Lsn(8), 7).last(), Some(&0));
    }

    #[test]
    fn replication_messages_parse_or_refuse() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x10u64.to_be_bytes());
        w.extend_from_slice(&0x20u64.to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend_from_slice(b"wal");
        assert_eq!(
            parse_replication(&w),
            Ok(Replication::XLogData {
                start: Lsn(0x10),
                wal_end: Lsn(0x20),
                data: b"wal"
            })
        );
        assert!(parse_replication(&w[..20]).is_err());
        let mut k = vec![b'k'];
        k.extend_from_slice(&0x30u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_replication(&k),
            Ok(Replication::Keepalive {
                wal_end: Lsn(0x30),
                reply_requested: true
            })
        );
        assert!(parse_replication(b"?").is_err());
        assert!(parse_replication(&[]).is_err());
    }
}
