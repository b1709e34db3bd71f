use clap::Parser;
use std::net::SocketAddr;

/// Coordinator: elects a leader in etcd, publishes the partition map, serves routes.
#[derive(Debug, Clone, Parser)]
#[command(name = "coordinator", version)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: protocol::runtime::args::KafkaArgs,
    #[command(flatten)]
    pub etcd: protocol::runtime::args::EtcdArgs,
    /// Partitions to create the topic with; an existing topic's own count wins.
    #[arg(long, env = "SWITCHBOARD_PARTITIONS", default_value_t = 12)]
    pub partitions: u32,
    /// Replication factor when the coordinator creates the topic.
    #[arg(long, env = "SWITCHBOARD_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// This replica's id in the election (default: a random id).
    #[arg(long, env = "SWITCHBOARD_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Lease TTL of the leader's election key, in seconds.
    #[arg(long, env = "SWITCHBOARD_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: i64,
    /// Quiet time that folds a burst of membership changes into one epoch.
    #[arg(long, env = "SWITCHBOARD_DEBOUNCE_MS", default_value_t = 500)]
    pub debounce_ms: u64,
}

impl Config {
    /// Checked before any socket opens; the error is one line for the operator.
    pub fn validate(&self) -> Result<(), String> {
        self.etcd.validate()?;
        self.kafka.validate()?;
        if !(1..=100_000).contains(&self.partitions) {
            return Err(format!(
                "--partitions must be 1..=100000 (got {})",
                self.partitions
            ));
        }
        if !(1..=300).contains(&self.lease_ttl_secs) {
            return Err(format!(
                "--lease-ttl-secs must be 1..=300 (got {})",
                self.lease_ttl_secs
            ));
        }
        if self.debounce_ms > 60_000 {
            return Err(format!(
                "--debounce-ms must be at most 60000 (got {})",
                self.debounce_ms
            ));
        }
        if self.replication_factor < 1 {
            return Err("--replication-factor must be at least 1".into());
        }
        Ok(())
    }

    pub fn coordinator_id(&self) -> String {
        self.coordinator_id.clone().unwrap_or_else(|| {
            format!(
                "coordinator-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_refused() {
        let c = Config::parse_from(["coordinator"]);
        assert_eq!(c.validate(), Ok(()));
        for args in [
            vec!["coordinator", "--partitions", "0"],
            vec!["coordinator", "--etcd-prefix", "nope"],
            vec!["coordinator", "--lease-ttl-secs", "0"],
            vec!["coordinator", "--debounce-ms", "100000"],
        ] {
            assert!(
                Config::parse_from(args.clone()).validate().is_err(),
                "{args:?}"
            );
        }
    }
}
