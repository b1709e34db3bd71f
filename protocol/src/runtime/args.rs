//! Command-line and environment settings every service shares, flattened
//! into each service's own `Config` so flags and variables are spelled once.

use clap::Args;

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
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err("--etcd-endpoints must name at least one endpoint".into());
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return Err(format!(
                "--etcd-prefix must start with '/' (got {:?})",
                self.prefix
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
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() || self.topic.trim().is_empty() {
            return Err("--kafka-brokers and --topic must not be empty".into());
        }
        Ok(())
    }
}
