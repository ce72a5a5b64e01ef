//! Where tool header secrets come from.
//!
//! In the cluster the operator mounts every Secret a tenant's tools reference into the runtime
//! at `/etc/agentry/secrets/<name>/<key>` (`AGENTRY_SECRETS_DIR` moves it); values are read at
//! call time, so a rotated Secret takes effect without a restart. Dev mode reads
//! `AGENTRY_SECRET_<NAME>_<KEY>` from the environment. Tests use [`StaticSecrets`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Default mount point of tool Secrets.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/agentry/secrets";

/// Looks up one key of one Secret.
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The value, or `None` when the Secret or key does not exist.
    fn get(&self, name: &str, key: &str) -> Option<String>;
}

/// Secrets mounted as files, `<dir>/<name>/<key>`.
#[derive(Clone, Debug)]
pub struct MountedSecrets {
    dir: PathBuf,
}

impl MountedSecrets {
    /// Reads below `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Reads below `AGENTRY_SECRETS_DIR`, or [`DEFAULT_SECRETS_DIR`].
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os("AGENTRY_SECRETS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS_DIR)),
        )
    }
}

/// A Secret name or key usable as one path component: no separators, not `.` or `..`.
fn is_path_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl SecretSource for MountedSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        if !is_path_component(name) || !is_path_component(key) {
            return None;
        }
        // Secret files are tiny and live on tmpfs; a blocking read is cheaper than a hop to
        // the blocking pool.
        let value = std::fs::read_to_string(self.dir.join(name).join(key)).ok()?;
        // A trailing newline is almost always an accident of `kubectl create secret
        // --from-file` and is never valid in a header value.
        Some(value.trim_end_matches(['\n', '\r']).to_owned())
    }
}

/// Secrets from environment variables `AGENTRY_SECRET_<NAME>_<KEY>` (upper-cased, `-` and
/// `.` become `_`).
#[derive(Clone, Copy, Debug, Default)]
pub struct EnvSecrets;

impl EnvSecrets {
    /// The variable that holds `name`/`key`.
    pub fn variable(name: &str, key: &str) -> String {
        let part = |s: &str| {
            s.chars()
                .map(|c| match c {
                    '-' | '.' => '_',
                    c => c.to_ascii_uppercase(),
                })
                .collect::<String>()
        };
        format!("AGENTRY_SECRET_{}_{}", part(name), part(key))
    }
}

impl SecretSource for EnvSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        std::env::var(Self::variable(name, key)).ok()
    }
}

/// Secrets held in memory.
#[derive(Clone, Debug, Default)]
pub struct StaticSecrets {
    values: HashMap<(String, String), String>,
}

impl StaticSecrets {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name`/`key` = `value`.
    pub fn with(mut self, name: &str, key: &str, value: &str) -> Self {
        self.values
            .insert((name.to_owned(), key.to_owned()), value.to_owned());
        self
    }
}

impl SecretSource for StaticSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        self.values.get(&(name.to_owned(), key.to_owned())).cloned()
    }
}

/// The first source that has the value wins.
#[derive(Clone, Debug, Default)]
pub struct ChainedSecrets(pub Vec<Arc<dyn SecretSource>>);

impl SecretSource for ChainedSecrets {
    fn get(&self, name: &str, key: &str) -> Option<String> {
        self.0.iter().find_map(|s| s.get(name, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_secrets_read_files_and_refuse_traversal() {
        let dir = std::env::temp_dir().join(format!("agentry-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("acme-api")).unwrap();
        std::fs::write(dir.join("acme-api").join("token"), "Bearer s3cret\n").unwrap();
        std::fs::write(dir.join("outside"), "nope").unwrap();
        let secrets = MountedSecrets::new(&dir);
        assert_eq!(
            secrets.get("acme-api", "token").as_deref(),
            Some("Bearer s3cret")
        );
        assert_eq!(secrets.get("acme-api", "missing"), None);
        assert_eq!(secrets.get("acme-api", "../outside"), None);
        assert_eq!(secrets.get("..", "outside"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn env_variable_names() {
        assert_eq!(
            EnvSecrets::variable("acme-api", "tls.key"),
            "AGENTRY_SECRET_ACME_API_TLS_KEY"
        );
    }

    #[test]
    fn chain_takes_the_first_hit() {
        let a = StaticSecrets::new().with("s", "k", "a");
        let b = StaticSecrets::new().with("s", "k", "b").with("s", "j", "b");
        let chain = ChainedSecrets(vec![Arc::new(a), Arc::new(b)]);
        assert_eq!(chain.get("s", "k").as_deref(), Some("a"));
        assert_eq!(chain.get("s", "j").as_deref(), Some("b"));
        assert_eq!(chain.get("s", "x"), None);
    }
}
