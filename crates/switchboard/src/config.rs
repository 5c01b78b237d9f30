//! Configuration in layers: the commented defaults embedded in the binary
//! (`config.default.toml`), then an optional TOML file, then `SWITCHBOARD_*` environment
//! variables. Validated once at start; an invalid value fails with the key's name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};

/// The defaults, with a comment on every key. Also printed by `switchboard config-defaults`.
pub const DEFAULTS_TOML: &str = include_str!("../config.default.toml");

const ENV_PREFIX: &str = "SWITCHBOARD_";

/// Keys that have no default value and are strings when set.
const OPTIONAL_KEYS: [&str; 9] = [
    "database_url",
    "admin_token",
    "public_url",
    "app_id",
    "metrics_token",
    "smtp_listen",
    "smtp_hostname",
    "smtp_tls_cert",
    "smtp_tls_key",
];

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
    /// When set, `/metrics` needs `Authorization: Bearer <metrics_token>`.
    pub metrics_token: Option<String>,
    pub public_url: Option<String>,
    /// Proxies (addresses or networks) whose `X-Forwarded-Proto` and `X-Forwarded-Host` are
    /// believed; from anyone else they are ignored.
    #[serde(deserialize_with = "de_networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub app_id: Option<String>,
    pub allow_private_targets: bool,
    pub log: String,
    pub max_body_bytes: usize,
    /// Largest mail the e-mail routes take (their body limit instead of `max_body_bytes`).
    pub max_email_bytes: usize,
    /// The SMTP listener's address; None: no SMTP listener.
    pub smtp_listen: Option<String>,
    pub smtp_hostname: Option<String>,
    pub smtp_tls_cert: Option<PathBuf>,
    pub smtp_tls_key: Option<PathBuf>,
    pub smtp_max_connections: usize,
    pub smtp_max_connections_per_client: usize,
    pub smtp_max_recipients: usize,
    #[serde(deserialize_with = "de_duration")]
    pub smtp_idle_timeout: Duration,
    pub smtp_max_line_bytes: usize,
    #[serde(deserialize_with = "de_dns_servers")]
    pub smtp_dns_servers: Vec<std::net::SocketAddr>,
    pub smtp_refuse_dmarc_rejects: bool,
    pub max_mails_per_conversation_per_minute: u32,
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_buffered_body_bytes: usize,
    pub max_buffered_body_bytes_per_client: usize,
    pub sqlite_synchronous: SqliteSynchronous,
    #[serde(deserialize_with = "de_duration")]
    pub sqlite_busy_timeout: Duration,
    pub role: Role,
    pub database_max_connections: u32,
    #[serde(deserialize_with = "de_duration")]
    pub delivery_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub slow_attempt_after: Duration,
    #[serde(deserialize_with = "de_durations")]
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter: f64,
    #[serde(deserialize_with = "de_duration")]
    pub delivery_lease: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub poll_interval: Duration,
    pub dispatcher_concurrency: usize,
    pub call_recording_wait_seconds: u64,
    #[serde(deserialize_with = "de_duration")]
    pub attachment_url_ttl: Duration,
    pub max_attachment_bytes: usize,
    pub breaker_threshold: u32,
    #[serde(deserialize_with = "de_duration")]
    pub breaker_cooldown: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub auto_disable_after: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Per provider, the origins its credentials may be sent to, replacing the channel's own
    /// list (TOML only: `[credential_hosts]` `<provider> = ["https://api.example.com", …]`).
    #[serde(default)]
    pub credential_hosts: std::collections::HashMap<String, Vec<String>>,
    #[serde(default)]
    pub dns_overrides: std::collections::HashMap<String, Vec<std::net::IpAddr>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the admin token.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("public_url", &self.public_url)
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

/// What this node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Provider routes, the API and the dispatcher (the default).
    All,
    /// Provider routes and the API; deliveries are left to dispatcher nodes.
    Api,
    /// Only sends deliveries (and answers /healthz, /readyz, /metrics).
    Dispatcher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

impl Config {
    /// Defaults < `file` < environment < `flags` (environment-style names; `None` = not given).
    pub fn load_with<const N: usize>(
        file: Option<&Path>,
        flags: [(&str, Option<String>); N],
    ) -> anyhow::Result<Config> {
        let file_text = match file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?,
            ),
            None => None,
        };
        let flags = flags
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name.to_owned(), v)));
        Self::from_layers(file_text.as_deref(), std::env::vars().chain(flags))
    }

    /// Defaults < `file` < environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with(file, [])
    }

    /// The built-in defaults alone (tests start from these).
    pub fn defaults() -> Config {
        Self::from_layers(None, std::iter::empty()).expect("embedded defaults are valid")
    }

    fn from_layers(
        file: Option<&str>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = DEFAULTS_TOML.parse().expect("embedded defaults parse");
        if let Some(text) = file {
            let overlay: toml::Table = text.parse().context("config file is not valid TOML")?;
            for (key, value) in overlay {
                if !table.contains_key(&key)
                    && !OPTIONAL_KEYS.contains(&key.as_str())
                    && key != "dns_overrides"
                    && key != "credential_hosts"
                {
                    bail!("config file: unknown key `{key}`");
                }
                table.insert(key, value);
            }
        }
        for (name, raw) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            let value = match table.get(&key) {
                Some(default) => env_value(default, &raw)
                    .with_context(|| format!("environment variable {name}: invalid value"))?,
                None if OPTIONAL_KEYS.contains(&key.as_str()) => toml::Value::String(raw),
                // Other SWITCHBOARD_* variables belong to other tools; they are ignored.
                None => continue,
            };
            table.insert(key, value);
        }
        let config: Config = Config::deserialize(table).context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..1.0).contains(&self.retry_jitter) {
            bail!("retry_jitter must be at least 0 and below 1");
        }
        if self.delivery_lease <= self.delivery_timeout {
            bail!("delivery_lease must be longer than delivery_timeout");
        }
        if self.slow_attempt_after.is_zero() {
            bail!("slow_attempt_after must be above zero");
        }
        if self.breaker_threshold == 0 {
            bail!("breaker_threshold must be at least 1");
        }
        if self.dispatcher_concurrency == 0 {
            bail!("dispatcher_concurrency must be at least 1");
        }
        if self.poll_interval.is_zero() {
            bail!("poll_interval must be above zero");
        }
        if self.request_timeout.is_zero() {
            bail!("request_timeout must be above zero");
        }
        if self.header_timeout.is_zero() || self.header_timeout > self.request_timeout {
            bail!("header_timeout must be above zero and at most request_timeout");
        }
        if self.write_timeout.is_zero() {
            bail!("write_timeout must be above zero");
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            bail!("max_connections and max_connections_per_client must be at least 1");
        }
        let largest_body = self.max_body_bytes.max(self.max_email_bytes);
        if self.max_buffered_body_bytes < largest_body {
            bail!("max_buffered_body_bytes must be at least max_body_bytes and max_email_bytes");
        }
        if self.max_buffered_body_bytes_per_client < largest_body
            || self.max_buffered_body_bytes_per_client > self.max_buffered_body_bytes
        {
            bail!("max_buffered_body_bytes_per_client must be at least max_body_bytes and max_email_bytes, and at most max_buffered_body_bytes");
        }
        if self.smtp_tls_cert.is_some() != self.smtp_tls_key.is_some() {
            bail!("smtp_tls_cert and smtp_tls_key are set together or not at all");
        }
        if self.smtp_max_connections == 0 || self.smtp_max_connections_per_client == 0 {
            bail!("smtp_max_connections and smtp_max_connections_per_client must be at least 1");
        }
        if self.smtp_max_recipients == 0 {
            bail!("smtp_max_recipients must be at least 1");
        }
        if self.smtp_idle_timeout.is_zero() {
            bail!("smtp_idle_timeout must be above zero");
        }
        if self.smtp_max_line_bytes < 512 {
            bail!("smtp_max_line_bytes must be at least 512 (RFC 5321)");
        }
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url).context("public_url is not a URL")?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                bail!("public_url must be an http(s) URL with a host");
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                bail!("public_url must not have a query or fragment");
            }
        }
        if let Some(token) = &self.admin_token {
            if token.len() < 16 {
                bail!("admin_token must be at least 16 characters");
            }
        }
        if let Some(token) = &self.metrics_token {
            if token.len() < 16 {
                bail!("metrics_token must be at least 16 characters");
            }
        }
        if let Some(url) = &self.database_url {
            if !url.starts_with("sqlite:") && !crate::startup::is_postgres(url) {
                bail!("database_url must be sqlite://PATH or postgres://…");
            }
            if self.role != Role::All && !crate::startup::is_postgres(url) {
                bail!("role api or dispatcher needs a shared PostgreSQL database_url");
            }
        } else if self.role != Role::All {
            bail!("role api or dispatcher needs a shared PostgreSQL database_url");
        }
        if self.database_max_connections < 2 {
            bail!("database_max_connections must be at least 2");
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("switchboard.db").display()
            ),
        }
    }
}

/// `url` with its password (if any) replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL we can read: keep only its scheme.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".to_owned(),
        },
    }
}

/// Convert an environment string to the type of the key's default.
fn env_value(default: &toml::Value, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match default {
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => bail!(
                    "`{}` is not a boolean (true/false, 1/0, yes/no, on/off)",
                    raw.trim()
                ),
            })
        }
        toml::Value::Integer(_) => toml::Value::Integer(raw.trim().parse()?),
        toml::Value::Float(_) => toml::Value::Float(raw.trim().parse()?),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

/// A duration as the README writes them (`500ms`, `10s`, `2m`, `1h`, `1h30m`); the error says
/// so in those terms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("`{s}` is not a duration: write a number and a unit, such as 500ms, 10s, 2m, 1h or 1h30m")
    })
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// DNS servers: `10.0.0.53` (port 53) or `10.0.0.53:5353`, `[fd00::53]:53`.
fn de_dns_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a DNS server address (10.0.0.53 or 10.0.0.53:5353)"
                    ))
                })
        })
        .collect()
}

/// Addresses (`10.0.0.7`) or networks (`10.0.0.0/8`, `fd00::/8`).
fn de_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not an IP address or network (10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/switchboard"),
            "postgres://app:***@db.internal:5432/switchboard"
        );
        assert_eq!(
            redact_url("postgres://db.internal/switchboard"),
            "postgres://db.internal/switchboard"
        );
        assert!(!redact_url("postgres://a:b@[bad").contains('b'));
    }

    #[test]
    fn defaults_match_the_issue() {
        let c = Config::defaults();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert_eq!(c.retry_schedule.len(), 12);
        assert_eq!(c.retry_schedule[0], Duration::from_secs(5));
        assert!(!c.allow_private_targets);
        assert_eq!(c.database_url(), "sqlite://switchboard-data/switchboard.db");
        assert_eq!(c.call_recording_wait_seconds, 120);
        assert_eq!(c.request_timeout, Duration::from_secs(75));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    }

    #[test]
    fn environment_beats_file_beats_defaults() {
        let file = "listen = \"0.0.0.0:9000\"\nlog = \"debug\"\nretry_schedule = [\"1s\"]\n";
        let c = Config::from_layers(
            Some(file),
            env(&[
                ("SWITCHBOARD_LISTEN", "127.0.0.1:9999"),
                ("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "true"),
                ("SWITCHBOARD_RETRY_JITTER", "0.1"),
                ("SWITCHBOARD_PUBLIC_URL", "https://hooks.example.com"),
                ("SWITCHBOARD_UNRELATED_TOOL", "x"),
                ("OTHER", "y"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.log, "debug");
        assert_eq!(c.retry_schedule, vec![Duration::from_secs(1)]);
        assert!(c.allow_private_targets);
        assert_eq!(c.retry_jitter, 0.1);
        assert_eq!(c.public_url.as_deref(), Some("https://hooks.example.com"));
    }

    #[test]
    fn lists_from_environment_are_comma_separated() {
        let c =
            Config::from_layers(None, env(&[("SWITCHBOARD_RETRY_SCHEDULE", "100ms, 2s")])).unwrap();
        assert_eq!(
            c.retry_schedule,
            vec![Duration::from_millis(100), Duration::from_secs(2)]
        );
    }

    #[test]
    fn booleans_from_environment_ignore_case() {
        for (raw, expected) in [
            ("TRUE", true),
            ("on", true),
            ("Yes", true),
            ("1", true),
            ("Off", false),
            ("FALSE", false),
            ("no", false),
        ] {
            let c = Config::from_layers(None, env(&[("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", raw)]))
                .unwrap_or_else(|e| panic!("{raw}: {e:#}"));
            assert_eq!(c.allow_private_targets, expected, "{raw}");
        }
        let err = Config::from_layers(None, env(&[("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "maybe")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("on/off"), "{err:#}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Config::from_layers(None, env(&[("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "maybe")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("SWITCHBOARD_ALLOW_PRIVATE_TARGETS"));
        let err = Config::from_layers(Some("lisen = \"x\""), std::iter::empty()).unwrap_err();
        assert!(format!("{err:#}").contains("lisen"));
        let err = Config::from_layers(None, env(&[("SWITCHBOARD_DELIVERY_TIMEOUT", "soon")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("soon"), "{err:#}");
        // In the README's terms, not the parsing library's.
        for raw in ["10", "10x"] {
            let err = Config::from_layers(None, env(&[("SWITCHBOARD_DELIVERY_TIMEOUT", raw)]))
                .unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("such as 500ms, 10s, 2m, 1h"), "{text}");
            assert!(
                !text.contains("sec") && !text.contains("variations"),
                "{text}"
            );
        }
        let err =
            Config::from_layers(None, env(&[("SWITCHBOARD_PUBLIC_URL", "ftp://x")])).unwrap_err();
        assert!(format!("{err:#}").contains("public_url"));
        let err =
            Config::from_layers(None, env(&[("SWITCHBOARD_DELIVERY_LEASE", "5s")])).unwrap_err();
        assert!(format!("{err:#}").contains("delivery_lease"));
        let err =
            Config::from_layers(None, env(&[("SWITCHBOARD_REQUEST_TIMEOUT", "0s")])).unwrap_err();
        assert!(format!("{err:#}").contains("request_timeout"));
        let err =
            Config::from_layers(None, env(&[("SWITCHBOARD_SMTP_TLS_CERT", "/x.pem")])).unwrap_err();
        assert!(format!("{err:#}").contains("smtp_tls_key"), "{err:#}");
        let err = Config::from_layers(None, env(&[("SWITCHBOARD_SMTP_MAX_LINE_BYTES", "100")]))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("smtp_max_line_bytes"),
            "{err:#}"
        );
    }
}
