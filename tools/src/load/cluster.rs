//! The whole system in containers from the images `./dev` builds: a broker
//! of the cluster's own (chaos kills it), then coordinators, messaging
//! servers and persisters from `switchboard/*:local`.
//!
//! Two layouts. On the host network (the default) every container listens
//! on a fixed free loopback port chosen once, and etcd and PostgreSQL are
//! the run's shared ones (see `Infra`). On a network of the run's own
//! (`Shape::network`) every process — broker, etcd, PostgreSQL and each
//! service — has an address of its own, so a link between two of them can
//! be cut; the broker is reached through a relay in this process, which
//! can slow that link. Either way a restarted service comes back at the
//! same address, as a StatefulSet pod keeps its DNS name.

use super::backing::{broker_env, Backing};
use super::net::{Container, Spec};
use anyhow::Context;
use harness::{free_port, wait_until, Infra};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Coordinator,
    Server,
    Persister,
}

impl Role {
    fn image(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Server => "messaging-server",
            Role::Persister => "persister",
        }
    }

    fn health_path(self) -> &'static str {
        match self {
            Role::Server => "/readyz",
            _ => "/healthz",
        }
    }
}

pub struct Service {
    pub name: String,
    pub role: Role,
    pub http: String,
    /// The port it listens on (its clients' port, for a server).
    pub port: u16,
    /// Its own address on the run's network (`None` on the host network).
    pub ip: Option<String>,
    pub container: Container,
}

impl Service {
    /// `kill -9` of the service's process: no drain, no lease revoke.
    pub async fn kill(&self) -> anyhow::Result<()> {
        self.container.kill().await
    }

    /// `SIGTERM` and up to `grace` for the drain, as an orchestrator stops it.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        self.container.stop(grace).await
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        self.container.start().await
    }

    pub async fn healthy(&self) -> bool {
        let url = format!("{}{}", self.http, self.role.health_path());
        let client = reqwest::Client::new();
        let got = client.get(url).timeout(Duration::from_secs(2)).send().await;
        matches!(got, Ok(r) if r.status().is_success())
    }

    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{} is healthy", self.name), within, || {
            self.healthy()
        })
        .await
    }

    /// Host PID of the service's process (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.container.pid()
    }

    /// Whether this coordinator replica currently leads.
    pub async fn is_leader(&self) -> bool {
        harness::sample(&self.http, "switchboard_coordinator_is_leader").await == Some(1.0)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Shape {
    pub coordinators: usize,
    pub servers: usize,
    pub persisters: usize,
    pub partitions: u32,
    /// Extra librdkafka settings for the servers' producers (none by default).
    pub producer_config: String,
    /// Every process on an address of its own (see the module documentation).
    pub network: bool,
    /// The servers' `SWITCHBOARD_PING_SECS`.
    pub ping_secs: u64,
}

pub struct Cluster {
    /// The shared etcd and PostgreSQL, on the host network.
    pub infra: Option<Arc<Infra>>,
    /// Whether `infra` was started for this cluster (and so is stopped with it).
    owns_infra: bool,
    pub backing: Option<Backing>,
    /// The cluster's own broker (SQLite storage inside the container, so a
    /// `kill -9` and restart keeps the log) and its address for clients.
    broker: Container,
    pub kafka: String,
    pub topic: String,
    /// As this process reaches it.
    pub database_url: String,
    pub jwt_secret: String,
    pub services: Vec<Service>,
}

struct Common {
    label: String,
    /// Distinguishes this cluster's containers from another in the same run.
    tag: String,
    env: Vec<(String, String)>,
    network: Option<String>,
    /// The next address on the network.
    next_ip: std::sync::atomic::AtomicU8,
    net_prefix: Option<String>,
}

impl Cluster {
    /// Starts the services on `infra` (isolated by topic, etcd prefix and
    /// database), or on infrastructure of its own when `infra` is `None`
    /// or the shape asks for a network of its own.
    pub async fn start(shape: &Shape, infra: Option<Arc<Infra>>) -> anyhow::Result<Self> {
        let label = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let topic = format!("load_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut cluster = if shape.network {
            Self::on_network(&label, topic).await?
        } else {
            Self::on_host(&label, topic, infra).await?
        };
        let mut common = cluster.common(&label);
        common.tag = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..4]);
        let jwt = cluster.jwt_secret.clone();
        cluster.services = common.start_all(shape, &jwt).await?;
        for s in &cluster.services {
            s.wait_healthy(Duration::from_secs(120)).await?;
        }
        Ok(cluster)
    }

    async fn on_host(
        label: &str,
        topic: String,
        infra: Option<Arc<Infra>>,
    ) -> anyhow::Result<Self> {
        let owns_infra = infra.is_none();
        let infra = match infra {
            Some(i) => i,
            None => Arc::new(Infra::start().await?),
        };
        let database_url = infra.database("load").await?;
        let kafka = format!("127.0.0.1:{}", free_port()?);
        let url = format!("tcp://{kafka}");
        let broker = Container::run(Spec {
            name: format!("sb-test-{label}-broker"),
            image: "switchboard/broker:local",
            network: "host",
            ip: None,
            label,
            env: broker_env(&url, &url),
            args: Vec::new(),
        })
        .await?;
        harness::infra::wait_for_kafka(&kafka).await?;
        Ok(Self {
            infra: Some(infra),
            owns_infra,
            backing: None,
            broker,
            kafka,
            topic,
            database_url,
            jwt_secret: uuid::Uuid::new_v4().simple().to_string(),
            services: Vec::new(),
        })
    }

    async fn on_network(label: &str, topic: String) -> anyhow::Result<Self> {
        let (backing, broker) = Backing::start(label).await?;
        Ok(Self {
            infra: None,
            owns_infra: false,
            kafka: backing.kafka.clone(),
            database_url: backing.database_url.clone(),
            backing: Some(backing),
            broker,
            topic,
            jwt_secret: uuid::Uuid::new_v4().simple().to_string(),
            services: Vec::new(),
        })
    }

    fn common(&self, label: &str) -> Common {
        let prefix = format!("/{}", self.topic);
        let (etcd, db, network, net_prefix) = match (&self.backing, &self.infra) {
            (Some(b), _) => (
                format!("http://{}:2379", b.etcd_ip),
                self.database_url.clone(),
                Some(b.net.name.clone()),
                Some(b.net.prefix.clone()),
            ),
            (None, Some(i)) => (i.etcd.clone(), self.database_url.clone(), None, None),
            (None, None) => (String::new(), String::new(), None, None),
        };
        Common {
            label: label.to_owned(),
            tag: String::new(),
            env: vec![
                ("SWITCHBOARD_ETCD_ENDPOINTS".into(), etcd),
                ("SWITCHBOARD_KAFKA_BROKERS".into(), self.kafka.clone()),
                ("SWITCHBOARD_TOPIC".into(), self.topic.clone()),
                ("SWITCHBOARD_ETCD_PREFIX".into(), prefix),
                ("SWITCHBOARD_DATABASE_URL".into(), db),
                ("SWITCHBOARD_LEASE_TTL_SECS".into(), "3".into()),
                ("RUST_LOG".into(), "info".into()),
            ],
            network,
            next_ip: std::sync::atomic::AtomicU8::new(10),
            net_prefix,
        }
    }

    /// The coordinator replicas' URLs, comma-separated (what clients take).
    pub fn coordinator_urls(&self) -> String {
        self.of(Role::Coordinator)
            .map(|s| s.http.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn of(&self, role: Role) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(move |s| s.role == role)
    }

    pub async fn leader(&self) -> Option<&Service> {
        for s in self.of(Role::Coordinator) {
            if s.is_leader().await {
                return Some(s);
            }
        }
        None
    }

    /// Every service healthy and every partition owned by a live server.
    pub async fn settled(&self, servers: usize) -> bool {
        for s in &self.services {
            if !s.healthy().await {
                return false;
            }
        }
        let urls = self.coordinator_urls();
        super::generator::assignment(&urls)
            .await
            .is_ok_and(|a| a.settled(servers))
    }

    /// (name, host PID) of the broker and every service.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        let mut out = vec![("broker (nisshi)".to_owned(), self.broker.pid())];
        out.extend(self.services.iter().map(|s| (s.name.clone(), s.pid())));
        out
    }

    /// Saves every service's log (`docker logs`) as `<dir>/<name>.log`.
    pub async fn save_logs(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for s in &self.services {
            std::fs::write(
                dir.join(format!("{}.log", s.name)),
                s.container.logs().await?,
            )?;
        }
        Ok(())
    }

    /// `kill -9` of the broker; it stays down until `start_broker`.
    pub async fn kill_broker(&self) -> anyhow::Result<()> {
        self.broker.kill().await
    }

    /// Starts the killed broker again on the same storage and address.
    pub async fn start_broker(&self) -> anyhow::Result<()> {
        self.broker
            .start()
            .await
            .context("failed to start the broker")?;
        harness::infra::wait_for_kafka(&self.kafka).await
    }

    pub async fn stop(self) {
        for s in &self.services {
            s.container.remove().await;
        }
        self.broker.remove().await;
        if let Some(b) = &self.backing {
            b.etcd.remove().await;
            b.postgres.remove().await;
            b.net.remove().await;
        }
        if self.owns_infra {
            if let Some(infra) = self.infra.and_then(|i| Arc::try_unwrap(i).ok()) {
                infra.stop().await;
            }
        }
    }
}

impl Common {
    async fn start_all(&self, shape: &Shape, jwt_secret: &str) -> anyhow::Result<Vec<Service>> {
        let mut services = Vec::new();
        for i in 0..shape.coordinators {
            let extra = [
                ("SWITCHBOARD_PARTITIONS", shape.partitions.to_string()),
                ("SWITCHBOARD_COORDINATOR_ID", format!("coord{i}")),
            ];
            services.push(
                self.start(Role::Coordinator, &format!("coord{i}"), &extra)
                    .await?,
            );
        }
        for s in &services {
            s.wait_healthy(Duration::from_secs(60)).await?;
        }
        let group = format!("persister_{}", self.tag);
        for i in 0..shape.persisters {
            let extra = [("SWITCHBOARD_GROUP_ID", group.clone())];
            services.push(
                self.start(Role::Persister, &format!("persister{i}"), &extra)
                    .await?,
            );
        }
        for i in 0..shape.servers {
            let extra = [
                ("SWITCHBOARD_SERVER_ID", format!("ms{i}")),
                ("SWITCHBOARD_JWT_SECRET", jwt_secret.to_owned()),
                (
                    "SWITCHBOARD_KAFKA_PRODUCER_CONFIG",
                    shape.producer_config.clone(),
                ),
                ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "10".into()),
                ("SWITCHBOARD_PING_SECS", shape.ping_secs.to_string()),
            ];
            services.push(self.start(Role::Server, &format!("ms{i}"), &extra).await?);
        }
        Ok(services)
    }

    async fn start(
        &self,
        role: Role,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let (network, ip, port) = match (&self.network, &self.net_prefix) {
            (Some(n), Some(prefix)) => {
                let host = self
                    .next_ip
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (n.as_str(), Some(format!("{prefix}.{host}")), 8080)
            }
            _ => ("host", None, free_port()?),
        };
        let host = ip.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let mut env = self.env.clone();
        env.push((
            "SWITCHBOARD_LISTEN".into(),
            format!(
                "{}:{port}",
                if ip.is_some() { "0.0.0.0" } else { "127.0.0.1" }
            ),
        ));
        if ip.is_some() {
            env.push(("SWITCHBOARD_ADVERTISE_HOST".into(), host.clone()));
        }
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let container = Container::run(Spec {
            name: format!("sb-test-{}-{}-{name}", self.label, self.tag),
            image: &format!("switchboard/{}:local", role.image()),
            network,
            ip: ip.as_deref(),
            label: &self.label,
            env,
            args: Vec::new(),
        })
        .await?;
        Ok(Service {
            name: name.to_owned(),
            role,
            http: format!("http://{host}:{port}"),
            port,
            ip,
            container,
        })
    }
}
