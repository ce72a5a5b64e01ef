//! Provider API keys. In the cluster the operator mounts each provider Secret at
//! `<secrets dir>/<secret name>/<key>`; the file is re-read when its modification time or size
//! changes, so a rotated Secret takes effect without a restart. In dev mode a key may also come
//! from `AGENTRY_PROVIDER_<NAME>_API_KEY`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

/// Default directory of mounted provider Secrets.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/agentry/providers";

/// Environment variable overriding [`DEFAULT_SECRETS_DIR`].
pub const SECRETS_DIR_ENV: &str = "AGENTRY_PROVIDER_SECRETS_DIR";

/// The dev-mode environment variable holding the key of provider `name`:
/// `AGENTRY_PROVIDER_<NAME>_API_KEY`, the name upper-cased with every character that is not a
/// letter or digit replaced by `_` (provider `open-ai` → `AGENTRY_PROVIDER_OPEN_AI_API_KEY`).
pub fn dev_key_env(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("AGENTRY_PROVIDER_{name}_API_KEY")
}

/// Where a provider's key comes from.
#[derive(Debug)]
pub enum ApiKey {
    /// No key: no `Authorization` header (local servers that need none).
    None,
    /// A fixed value (dev mode, from the environment).
    Fixed(String),
    /// A mounted file, re-read when it changes.
    File(KeyFile),
}

impl ApiKey {
    /// The key now: `Ok(None)` when there is none, `Err` (a message naming the path, never the
    /// key) when the file cannot be read.
    pub fn current(&self) -> Result<Option<String>, String> {
        match self {
            ApiKey::None => Ok(None),
            ApiKey::Fixed(key) => Ok(Some(key.clone())),
            ApiKey::File(file) => file.current().map(Some),
        }
    }
}

#[derive(Debug, Default)]
struct Cached {
    key: Option<String>,
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
}

/// A key in a file, cached, with a cheap change check (`stat`) at most once per interval.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    recheck: Duration,
    cached: Mutex<Cached>,
}

impl KeyFile {
    /// A key read from `path`, checked for changes at most every `recheck`.
    pub fn new(path: PathBuf, recheck: Duration) -> Self {
        Self {
            path,
            recheck,
            cached: Mutex::new(Cached::default()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Result<String, String> {
        let mut cached = self.cached.lock();
        let now = Instant::now();
        let fresh = cached
            .checked
            .is_some_and(|at| now.duration_since(at) < self.recheck);
        if fresh && let Some(key) = &cached.key {
            return Ok(key.clone());
        }
        // Kubernetes swaps a mounted Secret through a symlink; metadata() follows it, so the
        // stamp changes when the Secret does. A stat is a few microseconds and never blocks on
        // the network, so it is done inline.
        let meta = std::fs::metadata(&self.path)
            .map_err(|e| format!("API key file {}: {e}", self.path.display()))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        cached.checked = Some(now);
        if cached.stamp != Some(stamp) || cached.key.is_none() {
            let text = std::fs::read_to_string(&self.path)
                .map_err(|e| format!("API key file {}: {e}", self.path.display()))?;
            let key = text.trim().to_owned();
            if key.is_empty() {
                return Err(format!("API key file {} is empty", self.path.display()));
            }
            cached.key = Some(key);
            cached.stamp = Some(stamp);
        }
        cached
            .key
            .clone()
            .ok_or_else(|| format!("API key file {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(dev_key_env("openai"), "AGENTRY_PROVIDER_OPENAI_API_KEY");
        assert_eq!(
            dev_key_env("open-ai.2"),
            "AGENTRY_PROVIDER_OPEN_AI_2_API_KEY"
        );
    }

    #[test]
    fn rereads_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first\n").unwrap();
        let key = ApiKey::File(KeyFile::new(path.clone(), Duration::ZERO));
        assert_eq!(key.current().unwrap().as_deref(), Some("first"));
        // Different length, so the stamp changes even on a coarse-mtime filesystem.
        std::fs::write(&path, "second-key").unwrap();
        assert_eq!(key.current().unwrap().as_deref(), Some("second-key"));
        std::fs::remove_file(&path).unwrap();
        let err = key.current().unwrap_err();
        assert!(err.contains("API key file") && !err.contains("second-key"));
    }
}
