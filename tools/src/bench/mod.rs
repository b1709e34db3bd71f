//! Benchmarks of the messaging server against real infrastructure (see
//! docs/benchmarks.md). Build in release and run from the repository root:
//!
//!   cargo build --release --bins
//!   target/release/switchboard-bench idle --connections 10000
//!   target/release/switchboard-bench fanout --members 200 --messages 3000
//!   target/release/switchboard-bench latency --rate 5000 --seconds 20 --json docs/load/latency-5000.json
//!   target/release/switchboard-bench route --seconds 10
//!   target/release/switchboard-bench nats --subscribers 200 --messages 1000 --json docs/load/fanout-vs-nats.json
//!   target/release/switchboard-bench channels --subscribers 50000 --rate 10 --json docs/load/channels.json
//!   target/release/switchboard-bench connections --devices 100000 --servers 6 --json docs/load/connections-100k.json
//!   target/release/switchboard-bench storm --devices 36000 --json docs/load/storm.json
//!   target/release/switchboard-bench persist --records 200000 --batch-max 5000
//!   target/release/switchboard-bench broker --rate 5000 --seconds 600 --json docs/load/broker-nisshi-5000.json
//!   target/release/switchboard-bench tokens --seconds 3 --json docs/load/tokens.json

use crate::procstat::rss_bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use harness::{docker_compat, free_port, wait_until, Infra, Process, Stack};
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Extra librdkafka settings for the servers' producers, `k=v,k=v`
    /// (none by default: normal batching).
    #[arg(long, global = true, default_value = "")]
    producer_config: String,
    /// Partitions of the benchmark's topic.
    #[arg(long, global = true, default_value_t = 8)]
    partitions: u32,
    /// The servers' live-consumer fetch wait (`SWITCHBOARD_FETCH_WAIT_MS`).
    #[arg(long, global = true, default_value_t = 100)]
    fetch_wait_ms: u64,
    /// Extra environment for the messaging servers, `K=V,K=V`.
    #[arg(long, global = true, default_value = "")]
    server_env: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The settings every benchmark's servers share (the global flags).
#[derive(Debug, Clone)]
struct ServerSettings {
    producer_config: String,
    fetch_wait_ms: u64,
    partitions: u32,
    server_env: String,
}

/// The infrastructure a benchmark runs on, and its servers' settings.
pub struct Env {
    infra: Infra,
    settings: ServerSettings,
}

impl std::ops::Deref for Env {
    type Target = Infra;
    fn deref(&self) -> &Infra {
        &self.infra
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// RSS per idle WebSocket session.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds over which the server's idle CPU is measured.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
    /// Deliveries per CPU-second of the server on a group fan-out.
    Fanout {
        #[arg(long, default_value_t = 200)]
        members: usize,
        #[arg(long, default_value_t = 3000)]
        messages: usize,
    },
    /// Send→deliver latency at a fixed send rate across two servers.
    Latency {
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Also write the result as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// `/v1/route` requests per second on one core (needs `wrk`).
    Route {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The broker alone at a fixed produce rate, with a consumer attached.
    Broker(broker::BrokerArgs),
    /// Fan-out side by side with nats-server over WebSocket (paced and burst).
    Nats(nats::NatsArgs),
    /// One channel with a large audience over three servers, beside the
    /// same audience as a group conversation.
    Channels(channels::ChannelArgs),
    /// Channel presence under churn: join/leave delivered, CPU, latency, listing cost.
    Presence(presence::PresenceArgs),
    /// Anycast to a pool of subscribers over three servers: handled per
    /// second, latency, spread, CPU per publication.
    Anycast(anycast::AnycastArgs),
    /// (Internal) hold channel subscribers for `channels`, in a child process.
    #[command(hide = true)]
    WatchChannel(channels::WatchArgs),
    /// Many concurrent sessions: accept time, RSS per session, idle CPU,
    /// DM latency while all are connected.
    Connections(connections::ConnArgs),
    /// (Internal) hold devices for `connections`, in a child process.
    #[command(hide = true)]
    HoldDevices(connections::HoldArgs),
    /// Reconnect storm: kill -9 one of three servers, freeze one (SIGSTOP),
    /// a rolling restart, then a fourth server joins — with devices on the
    /// real client and chat flowing.
    Storm(storm::StormArgs),
    /// (Internal) hold client devices for `storm`, in a child process.
    #[command(hide = true)]
    StormDevices(storm::StormHoldArgs),
    /// Token verifications per second on one core, per algorithm (no infrastructure).
    Tokens(tokens::TokenArgs),
    /// Rows per second the persister writes into PostgreSQL.
    Persist {
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        #[arg(long, default_value_t = 5000)]
        batch_max: usize,
    },
}

/// The publish API key of the benchmark's servers.
const BENCH_API_KEY: &str = "bench-api-key-0123456789abcdef-0123456789";

struct Bench {
    infra: Arc<Env>,
    prefix: String,
    topic: String,
    db: String,
    coordinator: coordinator::Coordinator,
    servers: Vec<(String, Process, u16)>,
    /// Extra environment of this benchmark's servers.
    server_env: Vec<(&'static str, String)>,
}

impl Bench {
    async fn start(infra: Arc<Env>, servers: usize) -> anyhow::Result<Self> {
        Self::start_with(infra, servers, &[]).await
    }

    /// `start` with extra environment for the messaging servers.
    async fn start_with(
        infra: Arc<Env>,
        servers: usize,
        server_env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        Self::start_opts(infra, servers, server_env, false).await
    }

    /// `start_with`, the coordinator in a process of its own if `own`.
    async fn start_opts(
        infra: Arc<Env>,
        servers: usize,
        server_env: &[(&'static str, String)],
        own: bool,
    ) -> anyhow::Result<Self> {
        let (prefix, topic) = (format!("/{}", infra.unique("bench")), infra.unique("bench"));
        let db = infra.database("bench").await?;
        let config =
            harness::coordinator_config(&infra, &prefix, &topic, infra.settings.partitions);
        let coordinator = coordinator::Coordinator::start(config, own)?;
        let mut b = Self {
            infra,
            prefix,
            topic,
            db,
            coordinator,
            servers: Vec::new(),
            server_env: server_env.to_vec(),
        };
        for i in 0..servers {
            let port = free_port()?;
            let id = format!("bench{i}");
            let process = b.spawn_server(&id, port)?;
            b.servers.push((id, process, port));
        }
        b.settled().await?;
        Ok(b)
    }

    /// Waits until the coordinator has every server of `self.servers` in its
    /// assignment, every partition owned, and every server ready.
    async fn settled(&self) -> anyhow::Result<()> {
        let base = self.coordinator.url();
        let within = Duration::from_secs(60);
        harness::wait_map_settled(&base, self.servers.len(), within).await?;
        for (_, _, port) in &self.servers {
            let url = format!("http://127.0.0.1:{port}/readyz");
            wait_until("server ready", Duration::from_secs(30), || async {
                reqwest::get(&url)
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            })
            .await?;
        }
        Ok(())
    }

    /// Devices `first..first + count` of this benchmark's cluster, for a child.
    fn span(&self, first: usize, count: usize) -> child::Span {
        child::Span {
            coordinator: self.coordinator.url(),
            first,
            count,
        }
    }

    /// A persister for the benchmark's topic and database.
    fn spawn_persister(&self) -> anyhow::Result<Process> {
        Process::spawn(
            "persister",
            &[
                ("SWITCHBOARD_LISTEN", "127.0.0.1:0".to_owned()),
                ("SWITCHBOARD_KAFKA_BROKERS", self.infra.kafka.clone()),
                ("SWITCHBOARD_TOPIC", self.topic.clone()),
                ("SWITCHBOARD_DATABASE_URL", self.db.clone()),
            ],
        )
    }

    /// A messaging server process with the benchmark's settings.
    fn spawn_server(&self, id: &str, port: u16) -> anyhow::Result<Process> {
        let mut env = vec![
            ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
            ("SWITCHBOARD_SERVER_ID", id.to_owned()),
            ("SWITCHBOARD_ETCD_ENDPOINTS", self.infra.etcd.clone()),
            ("SWITCHBOARD_ETCD_PREFIX", self.prefix.clone()),
            ("SWITCHBOARD_KAFKA_BROKERS", self.infra.kafka.clone()),
            ("SWITCHBOARD_TOPIC", self.topic.clone()),
            (
                "SWITCHBOARD_KAFKA_PRODUCER_CONFIG",
                self.infra.settings.producer_config.clone(),
            ),
            ("SWITCHBOARD_DATABASE_URL", self.db.clone()),
            ("SWITCHBOARD_JWT_SECRET", harness::stack::JWT_SECRET.into()),
            ("SWITCHBOARD_SENDS_PER_SEC", "100000".into()),
            ("SWITCHBOARD_SEND_BURST", "100000".into()),
            ("SWITCHBOARD_QUEUE_LEN", "8192".into()),
            ("SWITCHBOARD_API_KEYS", BENCH_API_KEY.into()),
            // The channel benchmark compares a channel with a group of
            // the same (large) audience.
            ("SWITCHBOARD_MAX_GROUP_MEMBERS", "1000000".into()),
            (
                "SWITCHBOARD_FETCH_WAIT_MS",
                self.infra.settings.fetch_wait_ms.to_string(),
            ),
        ];
        env.extend(self.server_env.iter().cloned());
        let extra = self.infra.settings.server_env.as_str();
        env.extend(
            extra
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.to_owned())),
        );
        Process::spawn("messaging-server", &env)
    }

    async fn route(&self, user: &str) -> anyhow::Result<(String, String)> {
        harness::route(&self.coordinator.url(), user).await
    }

    /// Server `i`'s HTTP base URL.
    fn server_http(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.servers[i].2)
    }

    fn pid(&self, i: usize) -> u32 {
        self.servers[i].1.pid().unwrap_or(0)
    }

    async fn stop(self) {
        for (_, p, _) in self.servers {
            let _ = p.terminate().await;
        }
        self.coordinator.stop().await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn session(ws_url: &str, user: &str, device: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    let hello =
        serde_json::json!({"type": "hello", "token": Stack::token(user), "device_id": device});
    ws.send(Message::text(hello.to_string())).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Ok(ws),
        other => anyhow::bail!("{user}: no welcome: {other:?}"),
    }
}

async fn idle(infra: Arc<Env>, connections: usize, idle_secs: u64) -> anyhow::Result<()> {
    let b = Bench::start(infra, 1).await?;
    let (_, ws_url) = b.route("u0").await?;
    let pid = b.pid(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_bytes(pid).unwrap_or(0);
    let mut sessions = Vec::with_capacity(connections);
    for chunk in (0..connections).collect::<Vec<_>>().chunks(500) {
        let names: Vec<String> = chunk.iter().map(|i| format!("idle{i}")).collect();
        let opened =
            futures_util::future::join_all(names.iter().map(|u| session(&ws_url, u, "d"))).await;
        for s in opened {
            sessions.push(s?);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_bytes(pid).unwrap_or(0);
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    println!("idle sessions: {connections}");
    println!(
        "server RSS before {:.1} MiB, after {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "RSS per idle connection: {:.1} KB (target <= 20 KB)",
        per / 1000.0
    );
    let cpu0 = crate::procstat::cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = crate::procstat::cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    println!(
        "server CPU while idle: {idle_cpu:.3} CPU-s over {idle_secs} s ({:.2}% of a core)",
        idle_cpu * 100.0 / idle_secs as f64
    );
    drop(sessions);
    b.stop().await;
    Ok(())
}

mod anycast;
mod broker;
mod channels;
mod child;
mod connections;
mod coordinator;
mod load;
mod nats;
mod persist;
mod presence;
mod route;
mod stages;
mod storm;
mod tokens;
use load::{fanout, latency};

/// Parses the command line and runs one benchmark (or a benchmark's child).
pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Children of `channels` and `connections`: no infrastructure of their own.
    match args.cmd {
        Cmd::WatchChannel(w) => {
            return tokio::runtime::Runtime::new()?.block_on(channels::watch(w))
        }
        Cmd::HoldDevices(h) => {
            return tokio::runtime::Runtime::new()?.block_on(connections::hold(h))
        }
        Cmd::StormDevices(h) => return tokio::runtime::Runtime::new()?.block_on(storm::hold(h)),
        Cmd::Tokens(t) => return tokens::tokens(&t),
        _ => {}
    }
    let settings = ServerSettings {
        producer_config: args.producer_config.clone(),
        fetch_wait_ms: args.fetch_wait_ms,
        partitions: args.partitions,
        server_env: args.server_env.clone(),
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::env::set_var("DOCKER_HOST", docker_compat::docker_host(&dir).await?);
        let infra = Arc::new(Env {
            infra: Infra::start().await?,
            settings,
        });
        let result = match args.cmd {
            Cmd::Idle {
                connections,
                idle_secs,
            } => idle(infra.clone(), connections, idle_secs).await,
            Cmd::Fanout { members, messages } => fanout(infra.clone(), members, messages).await,
            Cmd::Latency {
                rate,
                seconds,
                pairs,
                json,
            } => latency(infra.clone(), rate, seconds, pairs, json.as_deref()).await,
            Cmd::Broker(a) => broker::broker(infra.clone(), a, &args.producer_config).await,
            Cmd::Route { seconds } => route::route(infra.clone(), seconds).await,
            Cmd::Nats(a) => nats::nats(infra.clone(), a).await,
            Cmd::Channels(a) => channels::channels(infra.clone(), a).await,
            Cmd::Presence(a) => presence::presence(infra.clone(), a).await,
            Cmd::Anycast(a) => anycast::anycast(infra.clone(), a).await,
            Cmd::Connections(a) => connections::connections(infra.clone(), a).await,
            Cmd::Storm(a) => storm::storm(infra.clone(), a).await,
            Cmd::WatchChannel(_) | Cmd::HoldDevices(_) | Cmd::StormDevices(_) | Cmd::Tokens(_) => {
                Ok(())
            }
            Cmd::Persist { records, batch_max } => {
                persist::persist(infra.clone(), records, batch_max).await
            }
        };
        if let Ok(i) = Arc::try_unwrap(infra) {
            i.infra.stop().await;
        }
        result
    })
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The `sent_us` a benchmark put in a message body.
fn sent_us(frame: &str) -> Option<u64> {
    let at = frame.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: String = frame[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Prints a benchmark's result and, when asked, writes it as JSON.
fn report<T: serde::Serialize>(result: &T, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)?;
    println!("{json}");
    if let Some(path) = path {
        std::fs::write(path, format!("{json}\n"))?;
    }
    Ok(())
}

use harness::sample as metric;
