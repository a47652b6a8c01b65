//! The service's own small files: each shard's and timeline's settings as
//! JSON followed by a line with the JSON's CRC-32C, replaced atomically
//! (written to `.tmp`, fsynced, renamed, directory fsynced), and read back
//! only if the checksum matches.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The line that ends every settings file, before the checksum's hex.
const CHECKSUM_PREFIX: &str = "crc32c:";

/// Writes `value` to `path` durably and atomically.
pub fn store<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value).context("encode settings")?;
    let body = format!(
        "{json}\n{CHECKSUM_PREFIX}{:08x}\n",
        quire_checksum::crc32c(json.as_bytes())
    );
    let tmp = path.with_extension("tmp");
    {
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(body.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("rename {} into place", tmp.display()))?;
    sync_dir(path)
}

/// Reads what [`store`] wrote, refusing a file whose checksum does not
/// match.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let Some((json, sum)) = trimmed.rsplit_once('\n') else {
        bail!("{}: no checksum line", path.display());
    };
    let Some(hex) = sum.strip_prefix(CHECKSUM_PREFIX) else {
        bail!("{}: the last line is not a checksum", path.display());
    };
    let expected = u32::from_str_radix(hex, 16)
        .with_context(|| format!("{}: bad checksum line {sum:?}", path.display()))?;
    let actual = quire_checksum::crc32c(json.as_bytes());
    if actual != expected {
        bail!(
            "{} is corrupt: its checksum is {actual:08x}, the file says {expected:08x}",
            path.display()
        );
    }
    serde_json::from_str(json).with_context(|| format!("decode {}", path.display()))
}

/// Fsyncs the directory holding `path`.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))
}

/// Creates `dir` and its parents, and makes the creation durable.
pub fn create_dir_durably(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Settings {
        name: String,
        core: u32,
    }

    #[test]
    fn round_trip_and_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let value = Settings {
            name: "a".into(),
            core: 3,
        };
        store(&path, &value).unwrap();
        assert_eq!(load::<Settings>(&path).unwrap(), value);
        let text = fs::read_to_string(&path).unwrap().replace("\"a\"", "\"b\"");
        fs::write(&path, text).unwrap();
        let error = load::<Settings>(&path).unwrap_err().to_string();
        assert!(error.contains("corrupt"), "{error}");
        fs::write(&path, "{}").unwrap();
        assert!(load::<Settings>(&path).is_err());
    }
}
