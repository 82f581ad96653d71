//! Settings: `config/default.toml`, then the `--config` file, then `GATEWAY__*` variables,
//! deserialized strictly and validated before anything starts. Each section's type belongs to
//! the module that uses it (`auth`, `broker`, ...); `Settings` composes them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::policy::RoleRule;
use crate::routes::ConsoleSettings;

/// The defaults, compiled in so that the binary runs from any directory; a `config/default.toml`
/// in the working directory replaces them.
const EMBEDDED_DEFAULTS: &str = include_str!("../config/default.toml");
const DEFAULTS_PATH: &str = "config/default.toml";
/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 2] = ["cors.allowed_origins", "auth.algorithms"];

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub sse: SseSettings,
    pub history: HistorySettings,
    pub limits: LimitsSettings,
    pub policy: PolicySettings,
    pub log: LogSettings,
    pub console: ConsoleSettings,
    pub compression: CompressionSettings,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub replica_name: String,
    pub shutdown_timeout_secs: u64,
    pub workers: usize,
    /// Seconds a request body may take to arrive in full (`408` after).
    pub body_timeout_secs: u64,
}

pub use crate::auth::AuthSettings;
pub use crate::broker::{HistorySettings, RedisSettings};

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    pub allowed_origins: Vec<String>,
}

/// `[compression]`: events compressed once per replica for the connections that ask.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// Events smaller than this are sent as is.
    pub min_bytes: u32,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SseSettings {
    pub keepalive_secs: u64,
    pub retry_ms: u64,
    pub queue_capacity: usize,
    pub drain_retry_min_ms: u64,
    pub drain_retry_max_ms: u64,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub connect_rate_per_user: u32,
    pub connect_rate_per_ip: u32,
    pub trust_forwarded_for: bool,
    pub max_orgs_per_token: usize,
    pub max_event_bytes: usize,
    pub max_batch: usize,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub roles: HashMap<String, RoleRule>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not a `source`: the message already holds the whole of it.
    #[error("invalid configuration: {0}")]
    Load(String),
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl From<config::ConfigError> for SettingsError {
    fn from(error: config::ConfigError) -> Self {
        let message = error.to_string();
        Self::Load(match unknown_key_variable(&message) {
            Some(variable) if std::env::var_os(&variable).is_some() => {
                format!("{message} (set by the environment variable {variable})")
            }
            Some(variable) => format!("{message} (in a file; as a variable it would be {variable})"),
            None => message,
        })
    }
}

/// The environment variable that spells the unknown key an "unknown field `x` ... for key `a.b`"
/// error names.
fn unknown_key_variable(message: &str) -> Option<String> {
    let field = message.split("unknown field `").nth(1)?.split('`').next()?;
    let section = message.split("for key `").nth(1)?.split('`').next()?;
    Some(format!("GATEWAY__{}__{}", section.replace('.', "__"), field).to_uppercase())
}

/// `GATEWAY_*` variables that are not read: a single underscore after the prefix (the gateway
/// reads `GATEWAY__SECTION__KEY`), or a key spelt with single underscores between its parts.
pub fn ignored_variables() -> Vec<String> {
    let mut ignored: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.starts_with("GATEWAY_") && !name.starts_with("GATEWAY__") && name != "GATEWAY_CONFIG"
        })
        .collect();
    ignored.sort();
    ignored
}

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

impl Settings {
    /// Loads the layered configuration from the process environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, SettingsError> {
        Self::load_from(config_file, None)
    }

    /// Loads the layered configuration; `env` replaces the process environment (for tests).
    pub fn load_from(
        config_file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, SettingsError> {
        let defaults =
            std::fs::read_to_string(DEFAULTS_PATH).unwrap_or_else(|_| EMBEDDED_DEFAULTS.to_string());
        let mut builder = Config::builder().add_source(File::from_str(&defaults, FileFormat::Toml));
        if let Some(path) = config_file {
            builder = builder.add_source(File::from(PathBuf::from(path)).required(true));
        }
        let mut environment = Environment::with_prefix("GATEWAY")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let environment = environment.source(env);
        let mut settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.normalize();
        settings.validate()?;
        Ok(settings)
    }

    /// Drops the empty entries an empty environment list produces.
    fn normalize(&mut self) {
        self.cors.allowed_origins.retain(|o| !o.trim().is_empty());
        self.auth.algorithms.retain(|a| !a.trim().is_empty());
        if self.server.replica_name.is_empty() {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            self.server.replica_name = format!("{host}-{}", std::process::id());
        }
    }

    fn validate(&self) -> Result<(), SettingsError> {
        if self.server.host.parse::<std::net::IpAddr>().is_err() && self.server.host != "localhost" {
            return Err(invalid("server.host", "must be an IP address or localhost"));
        }
        if self.server.shutdown_timeout_secs == 0 {
            return Err(invalid("server.shutdown_timeout_secs", "must be at least 1"));
        }
        let url = self.redis.url.trim();
        if !url.is_empty()
            && !["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        {
            return Err(invalid(
                "redis.url",
                "must start with redis:// or rediss://, or be empty",
            ));
        }
        if !self.auth.public_key_pem.is_empty() && !self.auth.jwks_path.is_empty() {
            return Err(invalid(
                "auth.public_key_pem",
                "set either auth.public_key_pem or auth.jwks_path, not both",
            ));
        }
        if self.auth.cookie_name.is_empty() {
            return Err(invalid("auth.cookie_name", "must not be empty"));
        }
        for origin in &self.cors.allowed_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            if !scheme_ok || origin.ends_with('/') || origin.contains('*') {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("{origin:?} must be an exact origin such as https://app.example"),
                ));
            }
        }
        let positive: [(&'static str, u64); 10] = [
            (
                "history.max_concurrent_replays",
                self.history.max_concurrent_replays as u64,
            ),
            ("server.body_timeout_secs", self.server.body_timeout_secs),
            ("sse.keepalive_secs", self.sse.keepalive_secs),
            ("sse.queue_capacity", self.sse.queue_capacity as u64),
            ("history.retention_secs", self.history.retention_secs),
            (
                "history.max_events_per_org",
                self.history.max_events_per_org as u64,
            ),
            (
                "limits.max_connections_per_user",
                self.limits.max_connections_per_user as u64,
            ),
            ("limits.max_orgs_per_token", self.limits.max_orgs_per_token as u64),
            ("limits.max_event_bytes", self.limits.max_event_bytes as u64),
            ("limits.max_batch", self.limits.max_batch as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(invalid(key, "must be at least 1"));
        }
        if self.sse.drain_retry_min_ms > self.sse.drain_retry_max_ms {
            return Err(invalid(
                "sse.drain_retry_min_ms",
                "must not be greater than sse.drain_retry_max_ms",
            ));
        }
        if self.policy.roles.is_empty() {
            return Err(invalid("policy.roles", "must define at least one role"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    /// The embedded broker is used when no Redis URL is configured.
    pub fn uses_embedded_broker(&self) -> bool {
        self.redis.url.trim().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_spelt_as_its_environment_variable() {
        let message = "unknown field `prot`, expected one of `host`, `port` for key `server`";
        assert_eq!(
            unknown_key_variable(message).as_deref(),
            Some("GATEWAY__SERVER__PROT")
        );
        assert_eq!(
            unknown_key_variable("unknown field `x` for key `policy.roles`").as_deref(),
            Some("GATEWAY__POLICY__ROLES__X")
        );
        assert_eq!(unknown_key_variable("missing field `url`"), None);
    }

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::load_from(None, Some(env))
    }

    #[test]
    fn defaults_match_the_contract() {
        let settings = load(&[]).expect("defaults load");
        assert_eq!(settings.server.port, 8080);
        assert_eq!(settings.sse.keepalive_secs, 15);
        assert_eq!(settings.sse.retry_ms, 3000);
        assert_eq!(settings.sse.queue_capacity, 1024);
        assert_eq!(settings.history.max_events_per_org, 10000);
        assert_eq!(settings.limits.max_orgs_per_token, 64);
        assert_eq!(settings.auth.cookie_name, "access_token");
        assert!(settings.uses_embedded_broker());
        assert!(!settings.server.replica_name.is_empty());
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let settings = load(&[
            ("GATEWAY__SERVER__PORT", "9090"),
            ("GATEWAY__REDIS__URL", "redis://127.0.0.1:6379"),
            (
                "GATEWAY__CORS__ALLOWED_ORIGINS",
                "https://app.example,https://admin.example",
            ),
            ("GATEWAY__AUTH__JWT_SECRET", "12345"),
        ])
        .expect("valid settings");
        assert_eq!(settings.server.port, 9090);
        assert_eq!(settings.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(
            settings.cors.allowed_origins,
            ["https://app.example", "https://admin.example"]
        );
        use secrecy::ExposeSecret;
        assert_eq!(settings.auth.jwt_secret.expose_secret(), "12345");
    }

    #[test]
    fn unknown_keys_stop_start_up_naming_the_key() {
        let err = load(&[("GATEWAY__SERVER__PROT", "1")]).expect_err("unknown key");
        assert!(err.to_string().contains("prot"), "{err}");
    }

    #[test]
    fn invalid_values_stop_start_up_naming_the_key() {
        let err = load(&[("GATEWAY__SERVER__PORT", "http")]).expect_err("bad port");
        assert!(err.to_string().contains("port"), "{err}");
        let err = load(&[("GATEWAY__SSE__KEEPALIVE_SECS", "0")]).expect_err("zero keepalive");
        assert!(err.to_string().contains("sse.keepalive_secs"), "{err}");
        let err = load(&[("GATEWAY__REDIS__URL", "http://x")]).expect_err("bad url");
        assert!(err.to_string().contains("redis.url"), "{err}");
        let err = load(&[("GATEWAY__CORS__ALLOWED_ORIGINS", "*")]).expect_err("wildcard origin");
        assert!(err.to_string().contains("cors.allowed_origins"), "{err}");
    }
}
