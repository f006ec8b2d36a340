//! Configuration: built-in defaults (no file needed), then an optional `pil.toml`, then `PIL_*`
//! environment variables (one per key, e.g. `PIL_LISTEN`, `PIL_DATABASE_URL`). It reads
//! settings; it starts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the API listens on.
    pub listen: String,
    /// `sqlite:<path>`.
    pub database_url: String,
    pub rules_dir: PathBuf,
    pub adapters_dir: PathBuf,
    /// Base URL DFSPs reach PIL at, for callback URLs. Default: `http://<listen address>`.
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_batch_payments: usize,
    /// Largest accepted amount of one payment (decimal string), any currency.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub max_amount: Option<Decimal>,
    /// Run the dispatcher and poller in this process (false: API only).
    pub dispatch: bool,
    /// Watch `rules_dir` and `adapters_dir` and swap in changed scripts that pass every check.
    pub watch_scripts: bool,
    /// Dispatch workers claiming groups concurrently.
    pub workers: usize,
    /// Payments per claimed group.
    pub claim_size: i64,
    /// Payments claimed and not yet answered, across workers.
    pub max_outstanding: usize,
    pub idle_ms: u64,
    pub claim_lease_ms: i64,
    /// How long a `sending` mark is trusted before the payment is presumed interrupted.
    pub sending_lease_ms: i64,
    /// This instance's stable name; on start it takes back what it held before a crash.
    pub instance_id: String,
    /// tracing filter, e.g. `info` or `pil=debug`.
    pub log: String,
    /// The sender id batches of the legacy PIL API (`POST /disbursement`) are stored under.
    pub legacy_sender_id: String,
    /// How long `POST /disbursement` waits for final statuses before answering with what it
    /// has (the OpenG2P module gives up after about 20 s and never polls).
    pub legacy_deadline_ms: u64,
    /// The old way: one plaintext bearer token, accepted only by the directory import
    /// (`POST /admin/directory`), where it acts as an operator named `admin_token`. Prefer
    /// `admin_tokens`.
    pub admin_token: Option<String>,
    /// Admin API tokens by name (`[admin_tokens.<name>]` in pil.toml), stored as the SHA-256
    /// of the token (`pil hash-token`), never the token itself. The name is the actor the
    /// audit log records.
    pub admin_tokens: BTreeMap<String, AdminToken>,
    /// G2P Connect senders allowed to submit, by `sender_id` (`[senders.<id>]` in pil.toml).
    pub senders: BTreeMap<String, SenderSettings>,
    /// PIL's own private key (PKCS#8 PEM) signing the callbacks it sends; created (Ed25519)
    /// on first start when the file does not exist.
    pub signing_key_file: PathBuf,
    /// How long `/disburse/sync/disburse` waits for final statuses before answering.
    pub g2p_sync_wait_ms: u64,
    /// How often the history is scanned for status changes to push to senders.
    pub notify_interval_ms: u64,
    /// Delivery attempts per callback before it is given up (0: never give up).
    pub callback_max_attempts: i64,
    /// First retry delay of a failed callback; doubles per attempt, capped at 5 minutes.
    pub callback_backoff_ms: i64,
}

/// What an admin token may do. Every role can read (scripts, their status and history, the
/// audit log, dry runs); beyond that the roles are not hierarchical: an editor cannot pause a
/// DFSP and an operator cannot change a script unless the token has both roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read, and operations: pause/resume a DFSP or a batch, retry, cancel.
    Operator,
    /// Read, and change scripts (write, roll back, reload).
    Editor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Editor => "editor",
        }
    }
}

/// One admin token: `sha256 = "<64 hex digits>"`, `roles = ["viewer" | "operator" | "editor"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Hex SHA-256 digest of the token (`echo -n "$TOKEN" | pil hash-token`).
    pub sha256: String,
    pub roles: Vec<Role>,
}

impl AdminToken {
    /// The digest as bytes; `None` unless it is 64 hex digits (checked at load).
    pub fn digest(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.sha256.trim(), &mut out).ok()?;
        Some(out)
    }

    /// Every role reads; the others must be granted.
    pub fn allows(&self, need: Role) -> bool {
        need == Role::Viewer || self.roles.contains(&need)
    }
}

/// One G2P Connect sender. Values may be `${ENV}` / `${ENV:-default}` / `file:/path`
/// references, resolved when PIL starts.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderSettings {
    /// The bearer token the sender presents.
    pub token: String,
    /// PEM public key (SPKI) checking the sender's message signatures. When set, every
    /// message must carry a valid signature.
    pub public_key: Option<String>,
    /// Bearer token PIL presents on callbacks to this sender.
    pub callback_token: Option<String>,
    /// Callback base URL when a message has no `sender_uri`.
    pub callback_url: Option<String>,
}

impl std::fmt::Debug for SenderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderSettings")
            .field("token", &"***")
            .field("public_key", &self.public_key.is_some())
            .field(
                "callback_token",
                &self.callback_token.as_ref().map(|_| "***"),
            )
            .field("callback_url", &self.callback_url)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite:data/pil.db".into(),
            rules_dir: "rules".into(),
            adapters_dir: "adapters".into(),
            public_url: None,
            max_body_bytes: 5 * 1024 * 1024,
            max_batch_payments: 100_000,
            max_amount: None,
            dispatch: true,
            watch_scripts: true,
            workers: 2,
            claim_size: 200,
            max_outstanding: 4_000,
            idle_ms: 100,
            claim_lease_ms: 60_000,
            sending_lease_ms: 600_000,
            instance_id: "pil".into(),
            log: "info".into(),
            legacy_sender_id: "openg2p".into(),
            legacy_deadline_ms: 15_000,
            admin_token: None,
            admin_tokens: BTreeMap::new(),
            senders: BTreeMap::new(),
            signing_key_file: "data/signing-key.pem".into(),
            g2p_sync_wait_ms: 10_000,
            notify_interval_ms: 250,
            callback_max_attempts: 0,
            callback_backoff_ms: 1_000,
        }
    }
}

/// Every key, for `PIL_<KEY>` overrides.
const KEYS: &[&str] = &[
    "listen",
    "database_url",
    "rules_dir",
    "adapters_dir",
    "public_url",
    "max_body_bytes",
    "max_batch_payments",
    "max_amount",
    "dispatch",
    "watch_scripts",
    "workers",
    "claim_size",
    "max_outstanding",
    "idle_ms",
    "claim_lease_ms",
    "sending_lease_ms",
    "instance_id",
    "log",
    "legacy_sender_id",
    "legacy_deadline_ms",
    "admin_token",
    "signing_key_file",
    "g2p_sync_wait_ms",
    "notify_interval_ms",
    "callback_max_attempts",
    "callback_backoff_ms",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Defaults, then `file` (or `./pil.toml` if present), then `PIL_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, std::env::vars())
    }

    pub fn load_from(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let default_file = Path::new("pil.toml");
        let path = file.or(default_file.exists().then_some(default_file));
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix("PIL_").map(str::to_ascii_lowercase) else {
                continue;
            };
            if !KEYS.contains(&key.as_str()) {
                continue;
            }
            let v = match (value.parse::<i64>(), value.as_str()) {
                (Ok(n), _) if key != "max_amount" => toml::Value::Integer(n),
                (_, "true") => toml::Value::Boolean(true),
                (_, "false") => toml::Value::Boolean(false),
                _ => toml::Value::String(value),
            };
            table.insert(key, v);
        }
        let settings: Settings = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if settings.claim_size < 1 || settings.workers < 1 {
            return Err(ConfigError::Invalid(
                "workers and claim_size must be at least 1".into(),
            ));
        }
        settings.check_admin_tokens()?;
        Ok(settings)
    }

    /// Refuses tokens that could never match or whose name would be ambiguous in the audit
    /// log, at start rather than at the first request.
    fn check_admin_tokens(&self) -> Result<(), ConfigError> {
        for (name, token) in &self.admin_tokens {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
            if !name_ok {
                return Err(ConfigError::Invalid(format!(
                    "admin_tokens.{name}: a token name may hold only letters, digits, '-', '_', '.' and '@'"
                )));
            }
            if token.digest().is_none() {
                return Err(ConfigError::Invalid(format!(
                    "admin_tokens.{name}.sha256 must be the 64 hex digits of the token's SHA-256 (pil hash-token), not the token"
                )));
            }
            if token.roles.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "admin_tokens.{name}.roles is empty: give viewer, operator and/or editor"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file_and_env_overrides_each_key() {
        let s = Settings::load_from(None, std::iter::empty()).expect("defaults");
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.database_url, "sqlite:data/pil.db");
        let env = [
            ("PIL_LISTEN", "127.0.0.1:9999"),
            ("PIL_DATABASE_URL", "sqlite:/tmp/x.db"),
            ("PIL_RULES_DIR", "/r"),
            ("PIL_ADAPTERS_DIR", "/a"),
            ("PIL_WORKERS", "3"),
            ("PIL_MAX_AMOUNT", "1000"),
            ("PIL_UNRELATED", "x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let s = Settings::load_from(None, env.into_iter()).expect("env");
        assert_eq!(s.listen, "127.0.0.1:9999");
        assert_eq!(s.database_url, "sqlite:/tmp/x.db");
        assert_eq!(s.rules_dir, PathBuf::from("/r"));
        assert_eq!(s.adapters_dir, PathBuf::from("/a"));
        assert_eq!(s.workers, 3);
        assert_eq!(s.max_amount, Some(Decimal::from(1000)));
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pil.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:1\"\nclaim_size = 7\n").expect("write");
        let env = [("PIL_LISTEN".to_string(), "127.0.0.1:2".to_string())];
        let s = Settings::load_from(Some(&f), env.into_iter()).expect("load");
        assert_eq!(s.listen, "127.0.0.1:2");
        assert_eq!(s.claim_size, 7);
        std::fs::write(&f, "lisen = \"typo\"\n").expect("write");
        assert!(Settings::load_from(Some(&f), std::iter::empty()).is_err());
    }

    #[test]
    fn admin_tokens_are_digests_with_roles() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pil.toml");
        let digest = "a".repeat(64);
        std::fs::write(
            &f,
            format!("[admin_tokens.alice]\nsha256 = \"{digest}\"\nroles = [\"editor\"]\n"),
        )
        .expect("write");
        let s = Settings::load_from(Some(&f), std::iter::empty()).expect("load");
        let alice = &s.admin_tokens["alice"];
        assert_eq!(alice.roles, vec![Role::Editor]);
        assert!(alice.allows(Role::Viewer) && alice.allows(Role::Editor));
        assert!(!alice.allows(Role::Operator));
        for bad in [
            "[admin_tokens.alice]\nsha256 = \"plaintext-token\"\nroles = [\"viewer\"]\n"
                .to_string(),
            format!("[admin_tokens.alice]\nsha256 = \"{digest}\"\nroles = []\n"),
            format!("[admin_tokens.alice]\nsha256 = \"{digest}\"\nroles = [\"admin\"]\n"),
            format!("[admin_tokens.\"a b\"]\nsha256 = \"{digest}\"\nroles = [\"viewer\"]\n"),
        ] {
            std::fs::write(&f, &bad).expect("write");
            assert!(
                Settings::load_from(Some(&f), std::iter::empty()).is_err(),
                "{bad}"
            );
        }
    }
}
