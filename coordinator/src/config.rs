use clap::Parser;
use service::args::{in_range, millis, secs, EtcdArgs, KafkaArgs};
use service::secret::Secret;
use service::{Check, ConfigError};
use std::net::SocketAddr;
use std::time::Duration;

/// Coordinator: elects a leader in etcd, publishes the partition map, serves routes.
#[derive(Debug, Clone, Parser)]
#[command(name = "coordinator", version)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Partitions to create the topic with; an existing topic's own count wins.
    #[arg(long, env = "SWITCHBOARD_PARTITIONS", default_value_t = 12)]
    pub partitions: u32,
    /// Partitions to create the channel topic (`<topic>.channels`) with;
    /// every messaging server reads all of them.
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PARTITIONS", default_value_t = 4)]
    pub channel_partitions: u32,
    /// Replication factor when the coordinator creates the topic.
    #[arg(long, env = "SWITCHBOARD_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// This replica's id in the election (default: a random id).
    #[arg(long, env = "SWITCHBOARD_COORDINATOR_ID")]
    pub coordinator_id: Option<String>,
    /// Lease TTL of the leader's election key, in seconds; also how long a
    /// new leader keeps unregistered servers of its inherited map while they
    /// register again after an etcd stall (keep it equal to the servers').
    #[arg(long = "lease-ttl-secs", env = "SWITCHBOARD_LEASE_TTL_SECS", default_value = "5", value_parser = secs)]
    pub lease_ttl: Duration,
    /// Quiet time that folds a burst of membership changes into one epoch, in milliseconds.
    #[arg(long = "debounce-ms", env = "SWITCHBOARD_DEBOUNCE_MS", default_value = "500", value_parser = millis)]
    pub debounce: Duration,
    /// Revoke the lease of a server that clients report unreachable and whose
    /// port refuses connections when checked (a crashed process), so its
    /// partitions move at once instead of after the lease TTL. Turn off when
    /// a server's `http_url` is not its own port (a proxy that refuses for it).
    #[arg(long = "declare-dead-on-refused", env = "SWITCHBOARD_DECLARE_DEAD_ON_REFUSED", default_value_t = true, action = clap::ArgAction::Set)]
    pub declare_dead: bool,
    /// Longest a route lookup that reports an unreachable server waits for a
    /// map without it, in milliseconds (the client's `wait_ms` is capped here).
    #[arg(long = "route-wait-max-ms", env = "SWITCHBOARD_ROUTE_WAIT_MAX_MS", default_value = "30000", value_parser = millis)]
    pub route_wait_max: Duration,
    /// The operator's key (at least 32 characters): the console (`/console/`)
    /// needs it, and with it may drain a server (give the servers the same
    /// `SWITCHBOARD_ADMIN_KEY`). None: the console is read-only and open.
    #[arg(long, env = "SWITCHBOARD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
    /// Persisters' HTTP base URLs, comma separated: the console shows their lag.
    #[arg(long, env = "SWITCHBOARD_PERSISTER_URLS", value_delimiter = ',')]
    pub persister_urls: Vec<String>,
    /// An API key of the messaging servers: the console's user lookup asks
    /// their presence with it. None: the lookup shows the route only.
    #[arg(long, env = "SWITCHBOARD_CONSOLE_API_KEY", hide_env_values = true)]
    pub console_api_key: Option<Secret>,
}

/// Checked before any socket opens; the error is one line for the operator.
impl Check for Config {
    fn check(&self) -> Result<(), ConfigError> {
        self.etcd.validate()?;
        self.kafka.validate()?;
        in_range("--partitions", self.partitions, 1, 100_000)?;
        service::args::check_admin_key(self.admin_key.as_ref())?;
        in_range("--channel-partitions", self.channel_partitions, 1, 10_000)?;
        in_range("--lease-ttl-secs", self.lease_ttl.as_secs(), 1, 300)?;
        in_range("--debounce-ms", self.debounce.as_millis(), 0, 60_000)?;
        in_range(
            "--route-wait-max-ms",
            self.route_wait_max.as_millis(),
            0,
            60_000,
        )?;
        in_range("--replication-factor", self.replication_factor, 1, 100)?;
        Ok(())
    }
}

impl Config {
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
        assert_eq!(c.check(), Ok(()));
        for (args, flag) in [
            (vec!["coordinator", "--partitions", "0"], "--partitions"),
            (
                vec!["coordinator", "--etcd-prefix", "nope"],
                "--etcd-prefix",
            ),
            (
                vec!["coordinator", "--lease-ttl-secs", "0"],
                "--lease-ttl-secs",
            ),
            (
                vec!["coordinator", "--debounce-ms", "100000"],
                "--debounce-ms",
            ),
        ] {
            let err = Config::parse_from(args.clone()).check();
            assert_eq!(err.map_err(|e| e.flag), Err(flag), "{args:?}");
        }
    }
}
