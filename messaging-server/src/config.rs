use clap::Parser;
use protocol::ServerId;
use service::args::{in_range, secs, DatabaseArgs, EtcdArgs, KafkaArgs};
use service::{Check, ConfigError, Secret};
use std::net::SocketAddr;
use std::time::Duration;

/// Messaging server: WebSocket sessions for the users of its partitions.
#[derive(Clone, Debug, Parser)]
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
    pub server_id: Option<ServerId>,
    /// Relative capacity; the coordinator scales this server's share by it.
    #[arg(long, env = "SWITCHBOARD_WEIGHT", default_value_t = 1)]
    pub weight: u32,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Lease TTL of this server's registration, in seconds.
    #[arg(long = "lease-ttl-secs", env = "SWITCHBOARD_LEASE_TTL_SECS", default_value = "5", value_parser = secs)]
    pub lease_ttl: Duration,
    /// Extra librdkafka producer settings, `key=value`, comma separated.
    #[arg(long, env = "SWITCHBOARD_KAFKA_PRODUCER_CONFIG", value_delimiter = ',')]
    pub kafka_producer_config: Vec<String>,
    /// Longest the broker may hold the live consumer's empty fetch, in ms.
    /// The broker answers as soon as a record arrives (Apache Kafka and the
    /// development broker both do), so a longer wait costs no latency and
    /// an idle server polls less (docs/benchmarks.md, "Fan-out vs NATS").
    #[arg(long = "fetch-wait-ms", env = "SWITCHBOARD_FETCH_WAIT_MS", default_value = "100", value_parser = service::args::millis)]
    pub fetch_wait: Duration,
    /// Kafka records produced and not yet acknowledged, at most; sends past
    /// it are refused at once with `unavailable` (the broker is behind).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_PRODUCE_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub max_produce_in_flight: usize,
    /// PostgreSQL (conversations, history, resume).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// PostgreSQL connections this server opens at most; resumes' replays
    /// use half of them at a time and queue for the rest. (One more is
    /// kept for reading the persister's position.)
    #[arg(long, env = "SWITCHBOARD_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
    /// How client tokens are verified: local keys and identity providers.
    #[command(flatten)]
    pub jwt: crate::auth::JwtArgs,
    /// API keys backends publish with (`POST /v1/publish`), comma separated,
    /// each at least 32 bytes. None: the publish API answers 401.
    #[arg(long, env = "SWITCHBOARD_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<Secret>,
    /// The operator's key for `/admin/*` (the coordinator's console drains a
    /// server with it; give both the same). None: admin actions are off.
    #[arg(long, env = "SWITCHBOARD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,
    /// WebSocket connections this server holds at most; past it the upgrade
    /// is refused with 503 `unavailable` and `Retry-After`.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = 200_000)]
    pub max_connections: usize,
    /// Devices one user may have connected to this server at once; one more
    /// gets `too_many_devices` and close 4009.
    #[arg(long, env = "SWITCHBOARD_MAX_DEVICES_PER_USER", default_value_t = 32)]
    pub max_devices_per_user: usize,
    /// Channels one connection may be subscribed to at once; one more gets
    /// `too_many_channels` (the connection stays).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CHANNELS_PER_DEVICE",
        default_value_t = 128
    )]
    pub max_channels_per_device: usize,
    /// Presence channels: names or prefixes ending in `*` (`ch:room.*`),
    /// comma separated. Their subscribers may list who is subscribed and
    /// get join/leave frames (docs/protocol.md, "Presence"). None by default.
    #[arg(long, env = "SWITCHBOARD_PRESENCE_CHANNELS", value_delimiter = ',')]
    pub presence_channels: Vec<String>,
    /// Distinct users above which a presence channel sends no join/leave
    /// frames (listing and stats still work): beyond it every change would
    /// go to every subscriber (docs/benchmarks.md, "Presence").
    #[arg(long, env = "SWITCHBOARD_JOIN_LEAVE_LIMIT", default_value_t = 1_000)]
    pub join_leave_limit: usize,
    /// How long a subscriber chosen for a chat anycast publication has to
    /// answer `handled` before it goes to another (docs/protocol.md, "Anycast").
    #[arg(long = "anycast-handle-timeout-ms", env = "SWITCHBOARD_ANYCAST_HANDLE_TIMEOUT_MS", default_value = "10000", value_parser = service::args::millis)]
    pub anycast_handle_timeout: Duration,
    /// Chat anycast publications waiting per channel, at most (the oldest
    /// is given up first).
    #[arg(
        long,
        env = "SWITCHBOARD_ANYCAST_MAX_PENDING",
        default_value_t = 10_000
    )]
    pub anycast_max_pending: usize,
    /// Longest a chat anycast publication waits to be handled.
    #[arg(long = "anycast-max-wait-secs", env = "SWITCHBOARD_ANYCAST_MAX_WAIT_SECS", default_value = "3600", value_parser = secs)]
    pub anycast_max_wait: Duration,
    /// Members a group conversation may have. Each send writes one delivery
    /// row per member and one record per partition holding one; larger
    /// audiences belong in a channel (docs/benchmarks.md, "Channels").
    #[arg(long, env = "SWITCHBOARD_MAX_GROUP_MEMBERS", default_value_t = 1000)]
    pub max_group_members: usize,
    /// Conversations whose member lists are cached at most.
    #[arg(
        long,
        env = "SWITCHBOARD_MEMBER_CACHE_ENTRIES",
        default_value_t = 100_000
    )]
    pub member_cache_entries: usize,
    /// Outgoing frames queued per connection before it is closed with 4004.
    #[arg(long, env = "SWITCHBOARD_QUEUE_LEN", default_value_t = 1024)]
    pub queue_len: usize,
    /// Largest WebSocket frame accepted, in bytes (1009 above it).
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME_BYTES", default_value_t = 128 * 1024)]
    pub max_frame_bytes: usize,
    /// Bytes each WebSocket reads at a time, and keeps reserved while idle:
    /// memory per session against reads per large frame (a frame larger
    /// than this arrives in several reads).
    #[arg(long, env = "SWITCHBOARD_WS_READ_BUFFER_BYTES", default_value_t = 1024)]
    pub ws_read_buffer_bytes: usize,
    /// Sustained sends per second per connection.
    #[arg(long, env = "SWITCHBOARD_SENDS_PER_SEC", default_value_t = 100)]
    pub sends_per_sec: u32,
    /// Burst of sends allowed above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_SEND_BURST", default_value_t = 200)]
    pub send_burst: u32,
    /// Seconds a new connection has to say hello.
    #[arg(long = "hello-timeout-secs", env = "SWITCHBOARD_HELLO_TIMEOUT_SECS", default_value = "10", value_parser = secs)]
    pub hello_timeout: Duration,
    /// Seconds between pings; a peer silent for three of them is dropped.
    #[arg(long = "ping-secs", env = "SWITCHBOARD_PING_SECS", default_value = "20", value_parser = secs)]
    pub ping_interval: Duration,
    /// Longest wait, in seconds, for the coordinator to move partitions away on drain.
    #[arg(long = "drain-timeout-secs", env = "SWITCHBOARD_DRAIN_TIMEOUT_SECS", default_value = "15", value_parser = secs)]
    pub drain_timeout: Duration,
    /// Write the bound port here once listening (health checks of servers
    /// started on port 0, e.g. scaled docker-compose replicas).
    #[arg(long, env = "SWITCHBOARD_PORT_FILE")]
    pub port_file: Option<std::path::PathBuf>,
}

/// Checked before any socket opens; the error is one line for the operator.
impl Check for Config {
    fn check(&self) -> Result<(), ConfigError> {
        self.etcd.validate()?;
        self.kafka.validate()?;
        self.database.validate()?;
        in_range("--db-connections", self.db_connections, 2, 1000)?;
        self.jwt.check()?;
        service::args::check_admin_key(self.admin_key.as_ref())?;
        if self.api_keys().any(|k| k.len() < 32) {
            return Err(ConfigError::new(
                "SWITCHBOARD_API_KEYS",
                "keys must be at least 32 bytes each",
            ));
        }
        in_range("--lease-ttl-secs", self.lease_ttl.as_secs(), 1, 300)?;
        in_range("--fetch-wait-ms", self.fetch_wait.as_millis(), 1, 10_000)?;
        in_range(
            "--max-produce-in-flight",
            self.max_produce_in_flight,
            1,
            1_000_000,
        )?;
        in_range("--queue-len", self.queue_len, 16, 1 << 20)?;
        in_range("--max-connections", self.max_connections, 1, 10_000_000)?;
        in_range(
            "--max-devices-per-user",
            self.max_devices_per_user,
            1,
            10_000,
        )?;
        in_range(
            "--max-channels-per-device",
            self.max_channels_per_device,
            1,
            100_000,
        )?;
        in_range("--max-group-members", self.max_group_members, 2, 1_000_000)?;
        in_range("--join-leave-limit", self.join_leave_limit, 0, 1_000_000)?;
        in_range(
            "--anycast-handle-timeout-ms",
            self.anycast_handle_timeout.as_millis(),
            50,
            3_600_000,
        )?;
        in_range(
            "--anycast-max-pending",
            self.anycast_max_pending,
            1,
            10_000_000,
        )?;
        in_range(
            "--anycast-max-wait-secs",
            self.anycast_max_wait.as_secs(),
            1,
            30 * 86_400,
        )?;
        if let Some(bad) = self
            .presence_channels
            .iter()
            .find(|p| !p.starts_with(protocol::channel::CHANNEL_PREFIX))
        {
            return Err(ConfigError::new(
                "SWITCHBOARD_PRESENCE_CHANNELS",
                format!("{bad:?} is not a channel name or prefix (ch:…)"),
            ));
        }
        in_range(
            "--member-cache-entries",
            self.member_cache_entries,
            16,
            100_000_000,
        )?;
        in_range(
            "--max-frame-bytes",
            self.max_frame_bytes,
            protocol::MAX_BODY_BYTES + 1024,
            16 << 20,
        )?;
        in_range(
            "--ws-read-buffer-bytes",
            self.ws_read_buffer_bytes,
            256,
            1 << 20,
        )?;
        in_range("--sends-per-sec", self.sends_per_sec, 1, u32::MAX)?;
        in_range(
            "--hello-timeout-secs",
            self.hello_timeout.as_secs(),
            1,
            3600,
        )?;
        in_range("--ping-secs", self.ping_interval.as_secs(), 1, 3600)?;
        if let Some(bad) = self
            .kafka_producer_config
            .iter()
            // An empty SWITCHBOARD_KAFKA_PRODUCER_CONFIG means none.
            .filter(|kv| !kv.trim().is_empty())
            .find(|kv| kv.split_once('=').is_none_or(|(k, _)| k.trim().is_empty()))
        {
            return Err(ConfigError::new(
                "--kafka-producer-config",
                format!("entries must be key=value (got {bad:?})"),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The publish API's keys, trimmed; an empty `SWITCHBOARD_API_KEYS` means none.
    pub fn api_keys(&self) -> impl Iterator<Item = &str> {
        self.api_keys
            .iter()
            .map(|k| k.expose().trim())
            .filter(|k| !k.is_empty())
    }

    /// The configured id, or a random `ms-…` one.
    pub fn server_id(&self) -> ServerId {
        self.server_id.clone().unwrap_or_else(ServerId::random)
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
            "--api-keys",
            "backend-key-0123456789-0123456789-abc",
        ]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("0123456789abcdef")
                && !shown.contains("backend-key"),
            "{shown}"
        );
        // Derived, so every field is shown (a hand-written one drifted).
        assert!(shown.contains("require: true"), "{shown}");
        assert_eq!(c.check(), Ok(()));
        assert!(
            Config::parse_from(["ms"]).check().is_err(),
            "no secret must be refused"
        );
        assert!(Config::parse_from(["ms", "--jwt-secret", "short"])
            .validate()
            .is_err());
        let short_key = [
            "ms",
            "--jwt-secret",
            "0123456789abcdef",
            "--api-keys",
            "short",
        ];
        assert_eq!(
            Config::parse_from(short_key).check().map_err(|e| e.flag),
            Err("SWITCHBOARD_API_KEYS")
        );
        let (ws, http) = c.urls("0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            (ws.as_str(), http.as_str()),
            ("ws://127.0.0.1:9000/v1/ws", "http://127.0.0.1:9000")
        );
    }
}
