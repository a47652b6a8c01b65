//! The settings compute control gives a compute: the lines appended to
//! the basebackup's `postgresql.conf` and `pg_hba.conf`. Pure text, no I/O.
//!
//! The WAL settings make Postgres' own quorum commit the safekeepers'
//! protocol: each safekeeper is a streaming-replication client whose
//! standby name is `sk<i + 1>` for the `i`-th safekeeper given (the member
//! numbering of `Membership::numbered`), and a commit waits for a majority
//! of them (`ANY k (...)`).

use std::fmt::Write as _;

/// What the settings are made from.
#[derive(Clone, Debug)]
pub struct ComputeSettings {
    /// The loopback port Postgres listens on.
    pub port: u16,
    /// How many safekeepers there are (their standby names `sk1`..`skN`).
    pub safekeepers: usize,
    /// `shared_buffers`, as Postgres reads it (`128MB`).
    pub shared_buffers: String,
    /// `quire.local_cache_size`: shared memory for pages that left shared
    /// buffers (`256MB`; `0` for none).
    pub local_cache_size: String,
    /// The page service, `host:port`.
    pub pageserver: String,
    /// The tenant (32 hex digits).
    pub tenant: String,
    /// The timeline (32 hex digits).
    pub timeline: String,
    /// The tenant's shards.
    pub shard_count: u32,
    /// The tenant's shard stripe, in pages.
    pub stripe_blocks: u32,
    /// The token the page service checks, if it checks tokens.
    pub page_token: Option<String>,
    /// Load `quire_smgr` (the plain basebackup: relations read from the
    /// pageserver); off for a full basebackup, whose relation files are
    /// local.
    pub preload_quire_smgr: bool,
}

/// Why settings cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value would break out of its quotes in `postgresql.conf`.
    #[error("the {name} setting {value:?} holds a quote, backslash or line break")]
    Unquotable {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// No safekeeper to commit to.
    #[error("a compute needs at least one safekeeper")]
    NoSafekeepers,
}

/// `synchronous_standby_names` for `count` safekeepers: a majority of
/// `sk1`..`sk<count>`.
pub fn standby_names(count: usize) -> String {
    let names: Vec<String> = (1..=count).map(|i| format!("sk{i}")).collect();
    format!("ANY {} ({})", count / 2 + 1, names.join(", "))
}

fn quoted(name: &'static str, value: &str) -> Result<String, SettingsError> {
    if value.contains(['\'', '\\', '\n', '\r']) {
        return Err(SettingsError::Unquotable {
            name,
            value: value.to_owned(),
        });
    }
    Ok(format!("'{value}'"))
}

/// The lines appended to `postgresql.conf` (the last occurrence of a
/// setting wins, so they override what the file holds).
pub fn postgresql_conf(settings: &ComputeSettings) -> Result<String, SettingsError> {
    if settings.safekeepers == 0 {
        return Err(SettingsError::NoSafekeepers);
    }
    let mut lines: Vec<(&str, String)> = vec![
        ("listen_addresses", "'127.0.0.1'".to_owned()),
        ("port", settings.port.to_string()),
        // TCP only: a socket path under a deep directory can pass the
        // 107-byte limit, and the default directory may not be writable.
        ("unix_socket_directories", "''".to_owned()),
        (
            "shared_buffers",
            quoted("shared_buffers", &settings.shared_buffers)?,
        ),
        ("wal_level", "replica".to_owned()),
        // One sender per safekeeper, with room for a reconnect racing the
        // old sender's exit and for a pg_basebackup.
        (
            "max_wal_senders",
            (settings.safekeepers * 2 + 2).to_string(),
        ),
        ("max_replication_slots", "10".to_owned()),
        // A safekeeper that was away streams again from its own flush
        // position: the compute keeps that much WAL for it (further back,
        // it recovers from a peer at the next election).
        ("wal_keep_size", "'1GB'".to_owned()),
        (
            "synchronous_standby_names",
            format!("'{}'", standby_names(settings.safekeepers)),
        ),
        ("synchronous_commit", "on".to_owned()),
        // The compute's disk holds no durable state: a commit is
        // acknowledged once a quorum of safekeepers has flushed it (the
        // synchronous standbys above; fsync does not change that wait),
        // and a compute is never recovered in place but started anew
        // from a basebackup (restart_after_crash off, `quire compute
        // start` wants an empty directory). So the local WAL need only
        // reach the kernel, from where the walsenders read it; an fsync
        // of it would only sit in series before the safekeepers' own.
        ("fsync", "off".to_owned()),
        // A crashed compute is replaced from a basebackup, never recovered
        // in place: its shared caches of sizes and LSNs died with it.
        ("restart_after_crash", "off".to_owned()),
        ("wal_sender_timeout", "'10s'".to_owned()),
        (
            "quire.pageserver",
            quoted("quire.pageserver", &settings.pageserver)?,
        ),
        ("quire.tenant", quoted("quire.tenant", &settings.tenant)?),
        (
            "quire.timeline",
            quoted("quire.timeline", &settings.timeline)?,
        ),
        ("quire.shard_count", settings.shard_count.to_string()),
        ("quire.stripe_blocks", settings.stripe_blocks.to_string()),
    ];
    if settings.preload_quire_smgr {
        lines.push(("shared_preload_libraries", "'quire_smgr'".to_owned()));
        lines.push((
            "quire.local_cache_size",
            quoted("quire.local_cache_size", &settings.local_cache_size)?,
        ));
    }
    if let Some(token) = &settings.page_token {
        lines.push(("quire.auth_token", quoted("quire.auth_token", token)?));
    }
    let mut text = String::from("\n# Written by quire compute start.\n");
    for (name, value) in lines {
        let _ = writeln!(text, "{name} = {value}");
    }
    Ok(text)
}

/// The lines appended to `pg_hba.conf`: the safekeepers' replication
/// connections over loopback (the basebackup's `all` does not match the
/// `replication` pseudo-database).
pub fn pg_hba_conf() -> &'static str {
    "\n# Written by quire compute start: the safekeepers stream WAL over loopback.\nhost replication all 127.0.0.1/32 trust\nhost replication all ::1/128 trust\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ComputeSettings {
        ComputeSettings {
            port: 55432,
            safekeepers: 3,
            shared_buffers: "128MB".to_owned(),
            local_cache_size: "256MB".to_owned(),
            pageserver: "127.0.0.1:6400".to_owned(),
            tenant: "11".repeat(16),
            timeline: "22".repeat(16),
            shard_count: 1,
            stripe_blocks: 32768,
            page_token: None,
            preload_quire_smgr: true,
        }
    }

    fn check(count: usize, expected: &str) {
        assert_eq!(standby_names(count), expected);
    }

    #[test]
    fn a_majority_of_the_safekeepers_by_their_standby_names() {
        check(1, "ANY 1 (sk1)");
        check(2, "ANY 2 (sk1, sk2)");
        check(3, "ANY 2 (sk1, sk2, sk3)");
        check(5, "ANY 3 (sk1, sk2, sk3, sk4, sk5)");
    }

    #[test]
    fn the_conf_names_every_setting_once_and_the_library_only_when_asked() -> anyhow::Result<()> {
        let text = postgresql_conf(&settings())?;
        for line in [
            "port = 55432",
            "synchronous_standby_names = 'ANY 2 (sk1, sk2, sk3)'",
            "shared_preload_libraries = 'quire_smgr'",
            "quire.pageserver = '127.0.0.1:6400'",
            "quire.stripe_blocks = 32768",
            "wal_level = replica",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(!text.contains("quire.auth_token"));
        let local = postgresql_conf(&ComputeSettings {
            preload_quire_smgr: false,
            page_token: Some("tok.en".to_owned()),
            ..settings()
        })?;
        assert!(!local.contains("shared_preload_libraries"));
        assert!(local.contains("quire.auth_token = 'tok.en'"));
        Ok(())
    }

    #[test]
    fn values_that_would_break_their_quotes_are_refused() {
        for bad in ["1'; fsync = off", "a\\b", "x\ny"] {
            let refused = postgresql_conf(&ComputeSettings {
                shared_buffers: bad.to_owned(),
                ..settings()
            });
            assert!(
                matches!(refused, Err(SettingsError::Unquotable { .. })),
                "{bad:?}"
            );
        }
        let none = postgresql_conf(&ComputeSettings {
            safekeepers: 0,
            ..settings()
        });
        assert!(matches!(none, Err(SettingsError::NoSafekeepers)));
    }
}
