//! Command-line and environment settings every service shares, flattened
//! into each service's own `Config` so flags and variables are spelled once.

use clap::Args;
use std::fmt;
use std::time::Duration;

/// A setting that cannot work; the process exits with this one line before
/// it opens any socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {reason}")]
pub struct ConfigError {
    /// The flag (or variable) at fault, e.g. `--lease-ttl-secs`.
    pub flag: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            reason: reason.into(),
        }
    }
}

/// A service's settings and the checks they must pass before anything
/// starts.
pub trait Check: Sized {
    fn check(&self) -> Result<(), ConfigError>;

    /// The settings, checked once: what `run` takes.
    fn validate(self) -> Result<Valid<Self>, ConfigError> {
        self.check()?;
        Ok(Valid(self))
    }
}

/// Settings that passed [`Check::check`]; only [`Check::validate`] makes one.
#[derive(Debug, Clone)]
pub struct Valid<T>(T);

impl<T> Valid<T> {
    /// The checked settings, for state built once at start.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Valid<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// `Ok` when `value` lies in `lo..=hi`, else the error naming `flag`.
pub fn in_range<T: PartialOrd + fmt::Display>(
    flag: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::new(
            flag,
            format!("must be {lo}..={hi} (got {value})"),
        ));
    }
    Ok(())
}

/// `SWITCHBOARD_ADMIN_KEY`, shared by the coordinator and the servers: at
/// least 32 characters when set; empty (an unset compose variable) is none.
pub fn check_admin_key(key: Option<&crate::secret::Secret>) -> Result<(), ConfigError> {
    if key.is_some_and(|k| (1..32).contains(&k.expose().trim().len())) {
        return Err(ConfigError::new(
            "SWITCHBOARD_ADMIN_KEY",
            "must be at least 32 characters",
        ));
    }
    Ok(())
}

fn whole(s: &str, unit: &str, to: fn(u64) -> Duration) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(to)
        .map_err(|e| format!("expected whole {unit}: {e}"))
}

/// Parses a whole number of seconds (`--*-secs` flags) into a `Duration`.
pub fn secs(s: &str) -> Result<Duration, String> {
    whole(s, "seconds", Duration::from_secs)
}

/// Parses a whole number of milliseconds (`--*-ms` flags) into a `Duration`.
pub fn millis(s: &str) -> Result<Duration, String> {
    whole(s, "milliseconds", Duration::from_millis)
}

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(
        long = "etcd-endpoints",
        env = "SWITCHBOARD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of every Switchboard key in etcd.
    #[arg(
        long = "etcd-prefix",
        env = "SWITCHBOARD_ETCD_PREFIX",
        default_value = "/switchboard"
    )]
    pub prefix: String,
}

impl EtcdArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(ConfigError::new(
                "--etcd-endpoints",
                "must name at least one endpoint",
            ));
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Err(ConfigError::new(
                "--etcd-prefix",
                format!("must start with '/' (got {:?})", self.prefix),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-brokers",
        env = "SWITCHBOARD_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The message topic.
    #[arg(
        long,
        env = "SWITCHBOARD_TOPIC",
        default_value = "switchboard.messages"
    )]
    pub topic: String,
}

impl KafkaArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new("--kafka-brokers", "must not be empty"));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::new("--topic", "must not be empty"));
        }
        Ok(())
    }
}

/// The PostgreSQL connection; its password never reaches a log.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long = "database-url",
        env = "SWITCHBOARD_DATABASE_URL",
        default_value = "postgres://switchboard:switchboard@127.0.0.1:5432/switchboard"
    )]
    pub url: String,
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") {
            return Err(ConfigError::new(
                "--database-url",
                "must be a postgres:// URL",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::mask_url(&self.url))
    }
}

#[cfg(test)]
mod admin_key_tests {
    use super::check_admin_key;
    use crate::secret::Secret;

    #[test]
    fn an_admin_key_is_none_empty_or_long_enough() {
        let key = |s: &str| Secret::from(s.to_owned());
        assert!(check_admin_key(None).is_ok());
        assert!(
            check_admin_key(Some(&key("  "))).is_ok(),
            "empty means none"
        );
        assert!(check_admin_key(Some(&key(&"k".repeat(32)))).is_ok());
        let short = check_admin_key(Some(&key("short")));
        assert_eq!(short.map_err(|e| e.flag), Err("SWITCHBOARD_ADMIN_KEY"));
    }
}
