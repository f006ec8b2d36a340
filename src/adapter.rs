//! `adapters/<dfsp>/adapter.toml`: a DFSP's endpoint, auth, limits, retry and polling policy and
//! capabilities. Secrets are `${ENV}` / `${ENV:-default}` / `file:/path` references, resolved at
//! load into [`Secret`]s that never print. This module reads configuration; it sends nothing.

use std::collections::BTreeMap;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;

/// A resolved secret value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    pub fn file_line_col(&self) -> String {
        match self {
            ConfigError::Invalid { file, message } => format!("{file}:1:1: {message}"),
            ConfigError::Parse {
                file,
                line,
                column,
                message,
            } => format!("{file}:{line}:{column}: {message}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdapterConfig {
    id: String,
    name: Option<String>,
    base_url: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    /// Requests marked `sending` that may wait for an in-flight slot (none: 8 × max_in_flight).
    #[serde(default)]
    max_staged: Option<usize>,
    /// Most requests started per second (none: no limit).
    #[serde(default)]
    rate_per_second: Option<u32>,
    #[serde(default)]
    dedupes_on_idempotency_key: bool,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    settings: toml::Table,
    /// Like `settings`, but secret (e.g. a credential a DFSP wants in the body): handed to
    /// scripts as `ctx.secrets`, never printed.
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    poll: PollPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type", default = "default_auth_type")]
    kind: String,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    header: Option<String>,
    key: Option<String>,
    token_url: Option<String>,
    /// `POST` (default: form body) or `GET` (the same parameters in the query string).
    token_method: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// No `[auth]` table means no auth (not an empty type name).
impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            kind: default_auth_type(),
            username: None,
            password: None,
            token: None,
            header: None,
            key: None,
            token_url: None,
            token_method: None,
            client_id: None,
            client_secret: None,
            scope: None,
        }
    }
}

fn default_auth_type() -> String {
    "none".into()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_max_in_flight() -> usize {
    64
}
/// Default `max_staged` per in-flight slot. A `sending` commit waits for the single writer's
/// transaction under way and its own (several milliseconds under load), while an exchange with
/// a fast DFSP takes about one. At 32 in flight the load bench moved 4,800 payments/s with 1
/// staged request per slot, 7,500 with 2, 9,300 with 4, 10,800 with 8 and 10,700–12,300 with
/// 16. The price: after a crash, staged requests are `unknown` like those in flight, which for
/// a DFSP that cannot be asked about a payment means an operator's look.
const STAGED_PER_SLOT: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub currencies: Vec<String>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub max_amount: Option<Decimal>,
    /// The DFSP takes whole units of the currency only (no cents): routing drops it for an
    /// amount with a fraction, so such a payment is never sent there.
    #[serde(default)]
    pub whole_amounts: bool,
    /// Most payments one bulk request may carry. Above 1, payments claimed together for this
    /// DFSP go out in bulk through the script's `build_batch_request`.
    #[serde(default = "one")]
    pub bulk_size: usize,
}

fn one() -> usize {
    1
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            currencies: Vec::new(),
            max_amount: None,
            whole_amounts: false,
            bulk_size: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Sends that surely did not execute (429, refused connection) are retried this many times.
    pub max_attempts: i64,
    pub backoff_ms: i64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollPolicy {
    pub first_after_ms: i64,
    pub every_ms: i64,
    pub max_polls: i64,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            first_after_ms: 5_000,
            every_ms: 10_000,
            max_polls: 100,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic {
        username: Secret,
        password: Secret,
    },
    Bearer(Secret),
    ApiKey {
        header: String,
        key: Secret,
    },
    OAuth2ClientCredentials {
        token_url: String,
        token_method: TokenMethod,
        client_id: Secret,
        client_secret: Secret,
        scope: Option<String>,
    },
}

/// How the OAuth2 token endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMethod {
    /// RFC 6749: `POST` with a form body.
    Post,
    /// `GET` with the same parameters in the query string (e.g. Safaricom Daraja).
    Get,
}

#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// A digest of the file and the secrets it resolved (never the secrets themselves).
    pub fingerprint: String,
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub max_in_flight: usize,
    /// Requests committed as `sending` that may wait for a slot among `max_in_flight`: they
    /// keep the slots busy while PIL's own commits queue, and after a crash they are `unknown`
    /// (looked up, never resent blindly) like the requests in flight.
    pub max_staged: usize,
    /// Most requests started per second; `None`: no limit.
    pub rate_per_second: Option<u32>,
    pub dedupes_on_idempotency_key: bool,
    pub auth: Auth,
    pub headers: Vec<(String, Secret)>,
    /// Non-secret settings handed to scripts as `ctx.settings`.
    pub settings: serde_json::Value,
    /// Secret settings handed to scripts as `ctx.secrets`.
    pub script_secrets: Vec<(String, Secret)>,
    pub capabilities: Capabilities,
    pub retry: RetryPolicy,
    pub poll: PollPolicy,
}

/// Resolves `${VAR}`, `${VAR:-default}` (anywhere in the value) and a whole-value `file:/path`.
pub fn resolve_references(value: &str) -> Result<String, String> {
    if let Some(path) = value.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("cannot read secret file {path}: {e}"));
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{...}} in '{value}'"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl AdapterConfig {
    pub fn load(path: &Path) -> Result<AdapterConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        AdapterConfig::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<AdapterConfig, ConfigError> {
        let raw: RawAdapterConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                file: file.to_string(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        let secret = |field: &str, v: &Option<String>| -> Result<Secret, ConfigError> {
            let v = v
                .as_ref()
                .ok_or_else(|| invalid(format!("auth.{field} is required for this auth type")))?;
            resolve_references(v)
                .map(Secret)
                .map_err(|m| invalid(format!("auth.{field}: {m}")))
        };
        let a = &raw.auth;
        let auth = match a.kind.as_str() {
            "none" => Auth::None,
            "basic" => Auth::Basic {
                username: secret("username", &a.username)?,
                password: secret("password", &a.password)?,
            },
            "bearer" => Auth::Bearer(secret("token", &a.token)?),
            "api_key" => Auth::ApiKey {
                header: a
                    .header
                    .clone()
                    .ok_or_else(|| invalid("auth.header is required for api_key".into()))?,
                key: secret("key", &a.key)?,
            },
            "oauth2_client_credentials" => Auth::OAuth2ClientCredentials {
                token_url: a.token_url.clone().ok_or_else(|| {
                    invalid("auth.token_url is required for oauth2_client_credentials".into())
                })?,
                token_method: match a.token_method.as_deref().map(str::to_ascii_uppercase) {
                    None => TokenMethod::Post,
                    Some(m) if m == "POST" => TokenMethod::Post,
                    Some(m) if m == "GET" => TokenMethod::Get,
                    Some(other) => {
                        return Err(invalid(format!(
                            "auth.token_method '{other}' is not GET or POST"
                        )));
                    }
                },
                client_id: secret("client_id", &a.client_id)?,
                client_secret: secret("client_secret", &a.client_secret)?,
                scope: a.scope.clone(),
            },
            other => {
                return Err(invalid(format!(
                    "auth.type '{other}' is not one of none, basic, bearer, api_key, oauth2_client_credentials"
                )));
            }
        };
        let base_url = resolve_references(&raw.base_url)
            .map_err(|m| invalid(format!("base_url: {m}")))?
            .trim_end_matches('/')
            .to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(format!(
                "base_url '{base_url}' must start with http:// or https://"
            )));
        }
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let v =
                resolve_references(value).map_err(|m| invalid(format!("headers.{name}: {m}")))?;
            headers.push((name.clone(), Secret(v)));
        }
        let mut settings = serde_json::Map::new();
        for (k, v) in &raw.settings {
            let v = match v {
                toml::Value::String(s) => serde_json::Value::String(
                    resolve_references(s).map_err(|m| invalid(format!("settings.{k}: {m}")))?,
                ),
                other => serde_json::to_value(other)
                    .map_err(|e| invalid(format!("settings.{k}: {e}")))?,
            };
            settings.insert(k.clone(), v);
        }
        let mut script_secrets = Vec::new();
        for (name, value) in &raw.secrets {
            let v =
                resolve_references(value).map_err(|m| invalid(format!("secrets.{name}: {m}")))?;
            script_secrets.push((name.clone(), Secret(v)));
        }
        if raw.rate_per_second == Some(0) {
            return Err(invalid(
                "rate_per_second must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if raw.max_in_flight == 0 {
            return Err(invalid("max_in_flight must be at least 1".into()));
        }
        if raw.max_staged == Some(0) {
            return Err(invalid(
                "max_staged must be at least 1 (leave it out for 8 × max_in_flight)".into(),
            ));
        }
        let mut config = AdapterConfig {
            fingerprint: String::new(),
            name: raw.name.clone().unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            base_url,
            timeout_ms: raw.timeout_ms,
            connect_timeout_ms: raw.connect_timeout_ms,
            max_in_flight: raw.max_in_flight,
            max_staged: raw
                .max_staged
                .unwrap_or(raw.max_in_flight.saturating_mul(STAGED_PER_SLOT)),
            rate_per_second: raw.rate_per_second,
            dedupes_on_idempotency_key: raw.dedupes_on_idempotency_key,
            auth,
            headers,
            settings: serde_json::Value::Object(settings),
            script_secrets,
            capabilities: raw.capabilities,
            retry: raw.retry,
            poll: raw.poll,
        };
        config.fingerprint = fingerprint(text, &config.secrets());
        Ok(config)
    }

    /// Every resolved secret value, so that logs and responses can be checked against them.
    pub fn secrets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .headers
            .iter()
            .chain(&self.script_secrets)
            .map(|(_, s)| s.expose())
            .collect();
        match &self.auth {
            Auth::None => {}
            Auth::Basic { username, password } => {
                out.extend([username.expose(), password.expose()])
            }
            Auth::Bearer(t) => out.push(t.expose()),
            Auth::ApiKey { key, .. } => out.push(key.expose()),
            Auth::OAuth2ClientCredentials {
                client_id,
                client_secret,
                ..
            } => out.extend([client_id.expose(), client_secret.expose()]),
        }
        out
    }
}

/// Changes when the file or any secret it references changes (an environment variable or a
/// mounted secret file re-read on reload), so a DFSP client is rebuilt exactly then.
fn fingerprint(text: &str, secrets: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for s in secrets {
        h.update([0u8]);
        h.update(s.as_bytes());
    }
    hex::encode(h.finalize())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_with_defaults_and_fail_when_missing() {
        assert_eq!(
            resolve_references("${PIL_TEST_SURELY_UNSET:-fallback}/x").expect("resolve"),
            "fallback/x"
        );
        let err = resolve_references("${PIL_TEST_SURELY_UNSET}").unwrap_err();
        assert!(err.contains("PIL_TEST_SURELY_UNSET"), "{err}");
        assert_eq!(resolve_references("plain").expect("resolve"), "plain");
    }

    #[test]
    fn secrets_never_print() {
        let cfg = AdapterConfig::parse(
            "a.toml",
            r#"
id = "x"
base_url = "http://127.0.0.1:1"
[auth]
type = "basic"
username = "${PIL_TEST_SURELY_UNSET:-user-123}"
password = "${PIL_TEST_SURELY_UNSET:-hunter2-secret}"
"#,
        )
        .expect("parse");
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("hunter2-secret"), "{printed}");
        assert!(cfg.secrets().contains(&"hunter2-secret"));
    }

    #[test]
    fn minimal_config_needs_no_auth_table() {
        let cfg = AdapterConfig::parse("a.toml", "id = \"x\"\nbase_url = \"http://h\"\n")
            .expect("minimal config");
        assert!(matches!(cfg.auth, Auth::None));
        assert_eq!(cfg.max_in_flight, 64);
        assert_eq!(cfg.max_staged, 8 * 64);
    }

    #[test]
    fn max_staged_is_set_or_refused_when_zero() {
        let base = "id = \"x\"\nbase_url = \"http://h\"\nmax_in_flight = 4\n";
        let cfg =
            AdapterConfig::parse("a.toml", &format!("{base}max_staged = 3\n")).expect("config");
        assert_eq!((cfg.max_in_flight, cfg.max_staged), (4, 3));
        let err = AdapterConfig::parse("a.toml", &format!("{base}max_staged = 0\n"))
            .expect_err("zero staged");
        assert!(err.to_string().contains("max_staged"), "{err}");
    }

    #[test]
    fn token_method_and_script_secrets() {
        let cfg = AdapterConfig::parse(
            "a.toml",
            r#"
id = "x"
base_url = "http://h"
[auth]
type = "oauth2_client_credentials"
token_url = "/oauth/v1/generate"
token_method = "get"
client_id = "id"
client_secret = "secret"
[secrets]
credential = "${PIL_TEST_SURELY_UNSET:-s3cr3t-credential}"
[capabilities]
whole_amounts = true
"#,
        )
        .expect("parse");
        assert!(matches!(
            cfg.auth,
            Auth::OAuth2ClientCredentials {
                token_method: TokenMethod::Get,
                ..
            }
        ));
        assert!(cfg.capabilities.whole_amounts);
        assert!(cfg.secrets().contains(&"s3cr3t-credential"));
        assert!(!format!("{cfg:?}").contains("s3cr3t-credential"));
        let err = AdapterConfig::parse(
            "a.toml",
            "id = \"x\"\nbase_url = \"http://h\"\n[auth]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"/t\"\ntoken_method = \"PUT\"\nclient_id = \"i\"\nclient_secret = \"s\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_method"), "{err}");
    }

    #[test]
    fn errors_carry_position() {
        let err = AdapterConfig::parse("adapters/x/adapter.toml", "id = \"x\"\nbase_url = 5\n")
            .unwrap_err();
        let text = err.file_line_col();
        assert!(text.starts_with("adapters/x/adapter.toml:2:"), "{text}");
        let err = AdapterConfig::parse(
            "a.toml",
            "id = \"x\"\nbase_url = \"http://h\"\n[auth]\ntype = \"magic\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
