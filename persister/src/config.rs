use clap::Parser;
use std::fmt;
use std::net::SocketAddr;

/// Persister: one consumer group that writes chat records into PostgreSQL.
#[derive(Clone, Parser)]
#[command(name = "persister", version)]
pub struct Config {
    /// HTTP listen address (health and metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: protocol::runtime::args::KafkaArgs,
    /// Consumer group shared by every persister replica.
    #[arg(
        long,
        env = "SWITCHBOARD_GROUP_ID",
        default_value = "switchboard-persister"
    )]
    pub group_id: String,
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE_URL",
        default_value = "postgres://switchboard:switchboard@127.0.0.1:5432/switchboard"
    )]
    pub database_url: String,
    /// Most records in one transaction.
    #[arg(long, env = "SWITCHBOARD_BATCH_MAX", default_value_t = 5000)]
    pub batch_max: usize,
    /// Longest a record waits for its batch, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_BATCH_MS", default_value_t = 50)]
    pub batch_ms: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = match (self.database_url.find("://"), self.database_url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!(
                "{}***{}",
                &self.database_url[..s + 3],
                &self.database_url[at..]
            ),
            _ => self.database_url.clone(),
        };
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("kafka_brokers", &self.kafka.brokers)
            .field("topic", &self.kafka.topic)
            .field("group_id", &self.group_id)
            .field("database_url", &db)
            .field("batch_max", &self.batch_max)
            .field("batch_ms", &self.batch_ms)
            .finish()
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.kafka.validate()?;
        if !(1..=100_000).contains(&self.batch_max) {
            return Err(format!(
                "--batch-max must be 1..=100000 (got {})",
                self.batch_max
            ));
        }
        if !(1..=10_000).contains(&self.batch_ms) {
            return Err(format!(
                "--batch-ms must be 1..=10000 (got {})",
                self.batch_ms
            ));
        }
        if self.group_id.is_empty() {
            return Err("--group-id must not be empty".into());
        }
        if !self.database_url.starts_with("postgres://")
            && !self.database_url.starts_with("postgresql://")
        {
            return Err("--database-url must be a postgres:// URL".into());
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
        assert_eq!(c.validate(), Ok(()));
        assert!(!format!("{c:?}").contains("pw@"));
        assert!(Config::parse_from(["p", "--batch-max", "0"])
            .validate()
            .is_err());
        assert!(Config::parse_from(["p", "--database-url", "mysql://x"])
            .validate()
            .is_err());
    }
}
