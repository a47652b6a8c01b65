//! Connection strings naming a Postgres primary, as libpq writes them:
//! keyword/value (`host=h port=5432 user=u dbname=d`, values optionally
//! single-quoted with `\'` and `\\`) or a URI
//! (`postgresql://user:password@host:port/dbname?application_name=x`,
//! percent-encoded). Pure: text in, a [`ConnInfo`] or a [`ConnInfoError`]
//! out, never a panic.
//!
//! One host only. A host starting with `/` is a Unix-socket directory (the
//! socket is `HOST/.s.PGSQL.PORT`), as in libpq. Defaults differ from
//! libpq's where libpq reads the environment: host `localhost`, port 5432,
//! user `postgres`, application name `quire`. No TLS: an `sslmode` that
//! requires it is refused, so a connection never silently goes in clear
//! text where encryption was asked for.

use std::fmt;

/// The longest connection string accepted.
pub const CONNINFO_LEN_MAX: usize = 4096;

/// A parsed connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// A host name or address, or a Unix-socket directory (starts with `/`).
    pub host: String,
    /// The TCP port, or the number in the socket's file name.
    pub port: u16,
    /// The role to log in as (needs the `REPLICATION` attribute).
    pub user: String,
    /// The password, for password or MD5 authentication.
    pub password: Option<String>,
    /// The database (ignored by a physical replication session).
    pub dbname: Option<String>,
    /// What `pg_stat_replication` shows for us.
    pub application_name: String,
    /// `connect_timeout` in seconds, if given (0: none).
    pub connect_timeout_s: Option<u32>,
}

/// What is wrong with a connection string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// Longer than [`CONNINFO_LEN_MAX`].
    #[error("connection string of {0} bytes is over the limit of {CONNINFO_LEN_MAX}")]
    TooLong(usize),
    /// A keyword without `=` or a value.
    #[error("connection string: missing \"=\" after {0:?}")]
    MissingEquals(String),
    /// A quoted value without its closing quote.
    #[error("connection string: unterminated quoted value for {0:?}")]
    Unterminated(String),
    /// A keyword this client does not know.
    #[error("connection string: unknown keyword {0:?}")]
    UnknownKeyword(String),
    /// A value that does not fit its keyword.
    #[error("connection string: invalid {keyword} {value:?}")]
    InvalidValue {
        /// The keyword.
        keyword: &'static str,
        /// What was given.
        value: String,
    },
    /// More than one host (libpq tries them in turn; this client does not).
    #[error("connection string: several hosts ({0:?}); give one")]
    SeveralHosts(String),
    /// An `sslmode` asking for TLS, which this client does not speak.
    #[error("connection string: sslmode={0} needs TLS, which this client does not speak")]
    TlsRequired(String),
    /// A value holding a NUL byte.
    #[error("connection string: the value of {0:?} holds a NUL byte")]
    Nul(String),
    /// A URI that does not parse.
    #[error("connection URI: {0}")]
    Uri(&'static str),
}

impl ConnInfo {
    /// Parses either form (a URI starts with `postgresql://` or `postgres://`).
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        if text.len() > CONNINFO_LEN_MAX {
            return Err(ConnInfoError::TooLong(text.len()));
        }
        let mut info = ConnInfo {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: None,
            application_name: "quire".into(),
            connect_timeout_s: None,
        };
        let rest = text
            .strip_prefix("postgresql://")
            .or_else(|| text.strip_prefix("postgres://"));
        match rest {
            Some(rest) => parse_uri(rest, &mut info)?,
            None => {
                for (keyword, value) in keyword_values(text)? {
                    info.set(&keyword, value)?;
                }
            }
        }
        Ok(info)
    }

    /// Whether the host is a Unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The socket's path (for a Unix-socket host) or `host:port`.
    pub fn address(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn set(&mut self, keyword: &str, value: String) -> Result<(), ConnInfoError> {
        let invalid = |keyword: &'static str, value: &str| ConnInfoError::InvalidValue {
            keyword,
            value: value.to_owned(),
        };
        // Values travel as C strings in the startup message: a NUL would
        // end one early and smuggle in a parameter of its own.
        if value.contains('\0') {
            return Err(ConnInfoError::Nul(keyword.to_owned()));
        }
        match keyword {
            "host" | "hostaddr" => {
                if value.contains(',') {
                    return Err(ConnInfoError::SeveralHosts(value));
                }
                if value.is_empty() {
                    return Err(invalid("host", &value));
                }
                self.host = value;
            }
            "port" => {
                if value.contains(',') {
                    return Err(ConnInfoError::SeveralHosts(value));
                }
                self.port = value
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| invalid("port", &value))?;
            }
            "user" => {
                if value.is_empty() {
                    return Err(invalid("user", &value));
                }
                self.user = value;
            }
            "password" => self.password = Some(value),
            "dbname" => self.dbname = Some(value),
            "application_name" => self.application_name = value,
            "connect_timeout" => {
                self.connect_timeout_s = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("connect_timeout", &value))?,
                );
            }
            "sslmode" => match value.as_str() {
                "disable" | "allow" | "prefer" => {}
                "require" | "verify-ca" | "verify-full" => {
                    return Err(ConnInfoError::TlsRequired(value));
                }
                _ => return Err(invalid("sslmode", &value)),
            },
            // Physical replication is what this client does; a session
            // asking for anything else is a mistake worth naming.
            "replication" => {
                if !matches!(value.as_str(), "true" | "on" | "yes" | "1") {
                    return Err(invalid("replication", &value));
                }
            }
            _ => return Err(ConnInfoError::UnknownKeyword(keyword.to_owned())),
        }
        Ok(())
    }
}

/// The keyword/value form, every value quoted: [`ConnInfo::parse`] of it
/// gives the same value back.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn quoted(f: &mut fmt::Formatter<'_>, keyword: &str, value: &str) -> fmt::Result {
            write!(f, "{keyword}='")?;
            for c in value.chars() {
                if c == '\'' || c == '\\' {
                    write!(f, "\\")?;
                }
                write!(f, "{c}")?;
            }
            write!(f, "' ")
        }
        quoted(f, "host", &self.host)?;
        write!(f, "port={} ", self.port)?;
        quoted(f, "user", &self.user)?;
        if let Some(password) = &self.password {
            quoted(f, "password", password)?;
        }
        if let Some(dbname) = &self.dbname {
            quoted(f, "dbname", dbname)?;
        }
        if let Some(seconds) = self.connect_timeout_s {
            write!(f, "connect_timeout={seconds} ")?;
        }
        quoted(f, "application_name", &self.application_name)
    }
}

/// Splits `keyword = value` pairs separated by white space.
fn keyword_values(text: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !c.is_whitespace()) {
            keyword.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(keyword));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::Unterminated(keyword)),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::Unterminated(keyword)),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(ConnInfoError::MissingEquals(keyword));
            }
        }
        pairs.push((keyword, value));
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits, or bytes
/// that are not UTF-8, are an error.
fn percent_decode(text: &str) -> Result<String, ConnInfoError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        if b == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(ConnInfoError::Uri("bad percent escape"))?;
            out.push(hex);
            at += 3;
        } else {
            out.push(b);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Uri("escape is not UTF-8"))
}

/// Parses what follows `postgresql://`.
fn parse_uri(rest: &str, info: &mut ConnInfo) -> Result<(), ConnInfoError> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                info.set("user", percent_decode(user)?)?;
            }
            if let Some(password) = password {
                info.set("password", percent_decode(password)?)?;
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ConnInfoError::SeveralHosts(hostport.to_owned()));
    }
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or(ConnInfoError::Uri("unclosed [ in the host"))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or(ConnInfoError::Uri("junk after the ] of the host"))?,
            ),
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        info.set("host", percent_decode(host)?)?;
    }
    if let Some(port) = port {
        info.set("port", percent_decode(port)?)?;
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        info.set("dbname", percent_decode(path)?)?;
    }
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (keyword, value) = pair
            .split_once('=')
            .ok_or_else(|| ConnInfoError::MissingEquals(pair.to_owned()))?;
        info.set(&percent_decode(keyword)?, percent_decode(value)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host, port, user, password, database.
    type Fields<'a> = (&'a str, u16, &'a str, Option<&'a str>, Option<&'a str>);

    fn check(text: &str, expected: Result<Fields<'_>, ConnInfoError>) {
        let parsed = ConnInfo::parse(text).map(|i| {
            (
                i.host.clone(),
                i.port,
                i.user.clone(),
                i.password.clone(),
                i.dbname.clone(),
            )
        });
        let expected = expected.map(|(h, p, u, pw, db)| {
            (
                h.to_owned(),
                p,
                u.to_owned(),
                pw.map(str::to_owned),
                db.map(str::to_owned),
            )
        });
        assert_eq!(parsed, expected, "{text}");
        if let Ok(info) = ConnInfo::parse(text) {
            assert_eq!(ConnInfo::parse(&info.to_string()), Ok(info), "{text}");
        }
    }

    #[test]
    fn keyword_value_strings_parse() {
        check("", Ok(("localhost", 5432, "postgres", None, None)));
        check(
            "host=127.0.0.1 port=5433 user=rep dbname=postgres",
            Ok(("127.0.0.1", 5433, "rep", None, Some("postgres"))),
        );
        check(
            "  host = /tmp\tport=6000 password='it''s' ",
            Err(ConnInfoError::MissingEquals("'s'".into())),
        );
        check(
            r"host=/tmp port=6000 password='it\'s a \\ pw'",
            Ok(("/tmp", 6000, "postgres", Some(r"it's a \ pw"), None)),
        );
        check("host=a,b", Err(ConnInfoError::SeveralHosts("a,b".into())));
        check(
            "port=0",
            Err(ConnInfoError::InvalidValue {
                keyword: "port",
                value: "0".into(),
            }),
        );
        check("host", Err(ConnInfoError::MissingEquals("host".into())));
        check("host=", Err(ConnInfoError::MissingEquals("host".into())));
        check(
            "password='x",
            Err(ConnInfoError::Unterminated("password".into())),
        );
        check(
            "colour=red",
            Err(ConnInfoError::UnknownKeyword("colour".into())),
        );
        check(
            "sslmode=require",
            Err(ConnInfoError::TlsRequired("require".into())),
        );
        check(
            "sslmode=disable replication=true",
            Ok(("localhost", 5432, "postgres", None, None)),
        );
        check(
            "replication=database",
            Err(ConnInfoError::InvalidValue {
                keyword: "replication",
                value: "database".into(),
            }),
        );
        let long = "x".repeat(CONNINFO_LEN_MAX + 1);
        check(&long, Err(ConnInfoError::TooLong(CONNINFO_LEN_MAX + 1)));
    }

    #[test]
    fn uris_parse() {
        check(
            "postgresql://rep@db.example:5433/postgres",
            Ok(("db.example", 5433, "rep", None, Some("postgres"))),
        );
        check(
            "postgres://rep:s%40cret@[::1]:6000?application_name=pager",
            Ok(("::1", 6000, "rep", Some("s@cret"), None)),
        );
        check(
            "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
            Ok(("/var/run/postgresql", 5432, "postgres", None, Some("db"))),
        );
        check(
            "postgresql://",
            Ok(("localhost", 5432, "postgres", None, None)),
        );
        check(
            "postgresql://a,b/db",
            Err(ConnInfoError::SeveralHosts("a,b".into())),
        );
        check(
            "postgresql://h:%zz",
            Err(ConnInfoError::Uri("bad percent escape")),
        );
        check(
            "postgresql://[::1",
            Err(ConnInfoError::Uri("unclosed [ in the host")),
        );
        check(
            "postgresql://h?x",
            Err(ConnInfoError::MissingEquals("x".into())),
        );
        check(
            "postgresql://h:99999",
            Err(ConnInfoError::InvalidValue {
                keyword: "port",
                value: "99999".into(),
            }),
        );
    }

    #[test]
    fn addresses_name_the_socket_or_the_host_and_port() {
        let info = |text| ConnInfo::parse(text).unwrap().address();
        assert_eq!(info("host=/tmp/ port=5433"), "/tmp/.s.PGSQL.5433");
        assert_eq!(info("host=127.0.0.1 port=5433"), "127.0.0.1:5433");
        assert_eq!(info("postgresql://[::1]:7"), "[::1]:7");
    }
}
