use clap::Parser;
use service::args::{in_range, millis, DatabaseArgs, KafkaArgs};
use service::{Check, ConfigError};
use std::net::SocketAddr;
use std::time::Duration;

/// Persister: one consumer group that writes chat records into PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "persister", version)]
pub struct Config {
    /// HTTP listen address (health and metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group shared by every persister replica.
    #[arg(
        long,
        env = "SWITCHBOARD_GROUP_ID",
        default_value = "switchboard-persister"
    )]
    pub group_id: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Most records in one transaction.
    #[arg(long, env = "SWITCHBOARD_BATCH_MAX", default_value_t = 5000)]
    pub batch_max: usize,
    /// Longest a record waits for its batch, in milliseconds.
    #[arg(long = "batch-ms", env = "SWITCHBOARD_BATCH_MS", default_value = "50", value_parser = millis)]
    pub batch_wait: Duration,
}

/// Checked before any socket opens; the error is one line for the operator.
impl Check for Config {
    fn check(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.database.validate()?;
        in_range("--batch-max", self.batch_max, 1, 100_000)?;
        in_range("--batch-ms", self.batch_wait.as_millis(), 1, 10_000)?;
        if self.group_id.is_empty() {
            return Err(ConfigError::new("--group-id", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_masks() {
        let c = Config::parse_from(["p", "--database-url", "postgres://u:pw@h/db"]);
        assert_eq!(c.check(), Ok(()));
        assert!(!format!("{c:?}").contains("pw@"));
        assert_eq!(c.batch_wait, Duration::from_millis(50));
        let bad = Config::parse_from(["p", "--batch-max", "0"]).check();
        assert_eq!(bad.map_err(|e| e.flag), Err("--batch-max"));
        assert!(Config::parse_from(["p", "--database-url", "mysql://x"])
            .validate()
            .is_err());
    }
}
