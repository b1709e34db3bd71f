use clap::Parser;
use std::fmt;
use std::net::SocketAddr;

/// Messaging server: WebSocket sessions for the users of its partitions.
#[derive(Clone, Parser)]
#[command(name = "messaging-server", version)]
pub struct Config {
    /// HTTP and WebSocket listen address (port 0 picks a free port).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Host (or host:port) clients use to reach this server; the bound port is
    /// added when no port is given. Default: the listen address.
    #[arg(long, env = "SWITCHBOARD_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// This server's id in etcd (default: a random id).
    #[arg(long, env = "SWITCHBOARD_SERVER_ID")]
    pub server_id: Option<String>,
    /// Relative capacity; the coordinator scales this server's share by it.
    #[arg(long, env = "SWITCHBOARD_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    #[command(flatten)]
    pub kafka: protocol::runtime::args::KafkaArgs,
    #[command(flatten)]
    pub etcd: protocol::runtime::args::EtcdArgs,
    /// Lease TTL of this server's registration, in seconds.
    #[arg(long, env = "SWITCHBOARD_LEASE_TTL_SECS", default_value_t = 5)]
    pub lease_ttl_secs: i64,
    /// Extra librdkafka producer settings, `key=value`, comma separated.
    #[arg(long, env = "SWITCHBOARD_KAFKA_PRODUCER_CONFIG", value_delimiter = ',')]
    pub kafka_producer_config: Vec<String>,
    /// Kafka records produced and not yet acknowledged, at most; sends past
    /// it are refused at once with `unavailable` (the broker is behind).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_PRODUCE_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub max_produce_in_flight: usize,
    /// PostgreSQL URL (conversations, history, resume).
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE_URL",
        default_value = "postgres://switchboard:switchboard@127.0.0.1:5432/switchboard"
    )]
    pub database_url: String,
    /// HS256 secret for client JWTs.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 client JWTs (instead of a secret).
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// Outgoing frames queued per connection before it is closed with 4004.
    #[arg(long, env = "SWITCHBOARD_QUEUE_LEN", default_value_t = 1024)]
    pub queue_len: usize,
    /// Largest WebSocket frame accepted, in bytes (1009 above it).
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 128 * 1024)]
    pub max_frame_bytes: usize,
    /// Sustained sends per second per connection.
    #[arg(long, env = "SWITCHBOARD_SENDS_PER_SEC", default_value_t = 100)]
    pub sends_per_sec: u32,
    /// Burst of sends allowed above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_SEND_BURST", default_value_t = 200)]
    pub send_burst: u32,
    /// Seconds a new connection has to say hello.
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT_SECS", default_value_t = 10)]
    pub hello_timeout_secs: u64,
    /// Seconds between pings; a peer silent for three of them is dropped.
    #[arg(long, env = "SWITCHBOARD_PING_SECS", default_value_t = 20)]
    pub ping_secs: u64,
    /// Longest wait for the coordinator to move partitions away on drain.
    #[arg(long, env = "SWITCHBOARD_DRAIN_TIMEOUT_SECS", default_value_t = 15)]
    pub drain_timeout_secs: u64,
    /// Write the bound port here once listening (health checks of servers
    /// started on port 0, e.g. scaled docker-compose replicas).
    #[arg(long, env = "SWITCHBOARD_PORT_FILE")]
    pub port_file: Option<std::path::PathBuf>,
    /// Refuse to start without a JWT key (production).
    #[arg(long, env = "SWITCHBOARD_REQUIRE_JWT_SECRET", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_jwt_secret: bool,
}

fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("advertise_host", &self.advertise_host)
            .field("server_id", &self.server_id)
            .field("weight", &self.weight)
            .field("etcd_endpoints", &self.etcd.endpoints)
            .field("etcd_prefix", &self.etcd.prefix)
            .field("lease_ttl_secs", &self.lease_ttl_secs)
            .field("kafka_brokers", &self.kafka.brokers)
            .field("topic", &self.kafka.topic)
            .field("kafka_producer_config", &self.kafka_producer_config)
            .field("max_produce_in_flight", &self.max_produce_in_flight)
            .field("database_url", &mask_url(&self.database_url))
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "***"))
            .field(
                "jwt_public_key",
                &self.jwt_public_key.as_ref().map(|_| "(set)"),
            )
            .field("queue_len", &self.queue_len)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("sends_per_sec", &self.sends_per_sec)
            .field("send_burst", &self.send_burst)
            .field("hello_timeout_secs", &self.hello_timeout_secs)
            .field("ping_secs", &self.ping_secs)
            .field("drain_timeout_secs", &self.drain_timeout_secs)
            .field("port_file", &self.port_file)
            .finish()
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        self.etcd.validate()?;
        self.kafka.validate()?;
        if self.require_jwt_secret && self.jwt_secret.is_none() && self.jwt_public_key.is_none() {
            return Err("set SWITCHBOARD_JWT_SECRET (or SWITCHBOARD_JWT_PUBLIC_KEY); refusing to start without one".into());
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err("SWITCHBOARD_JWT_SECRET must be at least 16 bytes".into());
        }
        if !(1..=300).contains(&self.lease_ttl_secs) {
            return Err(format!(
                "--lease-ttl-secs must be 1..=300 (got {})",
                self.lease_ttl_secs
            ));
        }
        if !(1..=1_000_000).contains(&self.max_produce_in_flight) {
            return Err(format!(
                "--max-produce-in-flight must be 1..=1000000 (got {})",
                self.max_produce_in_flight
            ));
        }
        if self.queue_len < 16 {
            return Err("--queue-len must be at least 16".into());
        }
        if self.max_frame_bytes < protocol::MAX_BODY_BYTES + 1024 {
            return Err(format!(
                "--max-frame-bytes must exceed the 64 KiB body limit (got {})",
                self.max_frame_bytes
            ));
        }
        if self.sends_per_sec == 0 || self.hello_timeout_secs == 0 || self.ping_secs == 0 {
            return Err(
                "--sends-per-sec, --hello-timeout-secs and --ping-secs must be positive".into(),
            );
        }
        if let Some(bad) = self
            .kafka_producer_config
            .iter()
            // An empty SWITCHBOARD_KAFKA_PRODUCER_CONFIG means none.
            .filter(|kv| !kv.trim().is_empty())
            .find(|kv| kv.split_once('=').is_none_or(|(k, _)| k.trim().is_empty()))
        {
            return Err(format!(
                "--kafka-producer-config entries must be key=value (got {bad:?})"
            ));
        }
        if let Some(id) = &self.server_id {
            protocol::UserId::new(id.as_str())
                .map_err(|_| format!("--server-id {id:?} must use the id alphabet"))?;
        }
        Ok(())
    }

    pub fn server_id(&self) -> String {
        self.server_id
            .clone()
            .unwrap_or_else(|| format!("ms-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]))
    }

    /// The ws and http URLs clients use, given the address actually bound.
    pub fn urls(&self, bound: SocketAddr) -> (String, String) {
        let host = match &self.advertise_host {
            Some(h) if h.contains(':') => h.clone(),
            Some(h) => format!("{h}:{}", bound.port()),
            None if bound.ip().is_unspecified() => format!("127.0.0.1:{}", bound.port()),
            None => bound.to_string(),
        };
        (format!("ws://{host}/v1/ws"), format!("http://{host}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_config_is_checked() {
        let c = Config::parse_from([
            "ms",
            "--jwt-secret",
            "0123456789abcdef-secret",
            "--database-url",
            "postgres://u:hunter2@db/x",
        ]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        assert_eq!(c.validate(), Ok(()));
        assert!(
            Config::parse_from(["ms"]).validate().is_err(),
            "no secret must be refused"
        );
        assert!(Config::parse_from(["ms", "--jwt-secret", "short"])
            .validate()
            .is_err());
        let (ws, http) = c.urls("0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            (ws.as_str(), http.as_str()),
            ("ws://127.0.0.1:9000/v1/ws", "http://127.0.0.1:9000")
        );
    }
}
