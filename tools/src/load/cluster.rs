//! The whole system in containers, started with testcontainers from the
//! images `./dev` builds: etcd and PostgreSQL (see `Infra`), a broker of the
//! cluster's own (chaos kills it), then coordinators, messaging servers and
//! persisters from `switchboard/*:local`.
//!
//! Every container uses the host network on a fixed free loopback port,
//! chosen once: a restarted service comes back at the same address, as a
//! StatefulSet pod keeps its DNS name.

use anyhow::Context;
use harness::{free_port, wait_until, Infra};
use std::sync::Arc;
use std::time::Duration;
use testcontainers::core::ContainerAsync;
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

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
    container: ContainerAsync<GenericImage>,
}

impl Service {
    /// `kill -9` of the service's process: no drain, no lease revoke.
    pub async fn kill(&self) -> anyhow::Result<()> {
        docker_kill(self.container.id(), &self.name).await
    }

    /// `SIGTERM` and up to `grace` for the drain, as an orchestrator stops it.
    pub async fn stop(&self, grace: Duration) -> anyhow::Result<()> {
        self.container
            .stop_with_timeout(Some(grace.as_secs() as i32))
            .await
            .with_context(|| format!("failed to stop {}", self.name))
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        self.container
            .start()
            .await
            .with_context(|| format!("failed to start {}", self.name))
    }

    pub async fn healthy(&self) -> bool {
        let url = format!("{}{}", self.http, self.role.health_path());
        matches!(reqwest::get(url).await, Ok(r) if r.status().is_success())
    }

    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        wait_until(&format!("{} is healthy", self.name), within, || {
            self.healthy()
        })
        .await
    }

    /// Host PID of the service's process (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        harness::infra::container_pid(self.container.id())
    }

    /// Whether this coordinator replica currently leads.
    pub async fn is_leader(&self) -> bool {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.http)).await else {
            return false;
        };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .any(|l| l.trim() == "switchboard_coordinator_is_leader 1")
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
}

pub struct Cluster {
    pub infra: Arc<Infra>,
    /// The cluster's own broker (SQLite storage inside the container, so a
    /// `kill -9` and restart keeps the log) and its address.
    broker: ContainerAsync<GenericImage>,
    pub kafka: String,
    /// Whether the broker, etcd and PostgreSQL were started for this cluster
    /// (and so are removed with it).
    owns_infra: bool,
    pub database_url: String,
    pub jwt_secret: String,
    pub services: Vec<Service>,
}

struct Common {
    run_id: String,
    /// Distinguishes this cluster's containers from another in the same run.
    tag: String,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts the services on `infra` (isolated by topic, etcd prefix and
    /// database), or on infrastructure of its own when `infra` is `None`.
    pub async fn start(shape: &Shape, infra: Option<Arc<Infra>>) -> anyhow::Result<Self> {
        let owns_infra = infra.is_none();
        let infra = match infra {
            Some(i) => i,
            None => Arc::new(Infra::start().await?),
        };
        let database_url = infra.database("load").await?;
        let jwt_secret = uuid::Uuid::new_v4().simple().to_string();
        let tag = infra.unique("c");
        let (broker, kafka) = infra.private_broker(&format!("{tag}-broker")).await?;
        let common = Common {
            run_id: infra.run_id.clone(),
            tag,
            env: vec![
                ("SWITCHBOARD_ETCD_ENDPOINTS".into(), infra.etcd.clone()),
                ("SWITCHBOARD_KAFKA_BROKERS".into(), kafka.clone()),
                ("SWITCHBOARD_TOPIC".into(), infra.unique("load")),
                (
                    "SWITCHBOARD_ETCD_PREFIX".into(),
                    format!("/{}", infra.unique("load")),
                ),
                ("SWITCHBOARD_DATABASE_URL".into(), database_url.clone()),
                ("SWITCHBOARD_LEASE_TTL_SECS".into(), "3".into()),
                ("RUST_LOG".into(), "info".into()),
            ],
        };
        let mut services = Vec::new();
        for i in 0..shape.coordinators {
            let extra = [
                ("SWITCHBOARD_PARTITIONS", shape.partitions.to_string()),
                ("SWITCHBOARD_COORDINATOR_ID", format!("coord{i}")),
            ];
            services.push(
                common
                    .start(Role::Coordinator, &format!("coord{i}"), &extra)
                    .await?,
            );
        }
        let started = services.len();
        for s in &services[..started] {
            s.wait_healthy(Duration::from_secs(60)).await?;
        }
        let group = infra.unique("persister");
        for i in 0..shape.persisters {
            let extra = [("SWITCHBOARD_GROUP_ID", group.clone())];
            services.push(
                common
                    .start(Role::Persister, &format!("persister{i}"), &extra)
                    .await?,
            );
        }
        for i in 0..shape.servers {
            let extra = [
                ("SWITCHBOARD_SERVER_ID", format!("ms{i}")),
                ("SWITCHBOARD_JWT_SECRET", jwt_secret.clone()),
                (
                    "SWITCHBOARD_KAFKA_PRODUCER_CONFIG",
                    shape.producer_config.clone(),
                ),
                ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "10".into()),
            ];
            services.push(
                common
                    .start(Role::Server, &format!("ms{i}"), &extra)
                    .await?,
            );
        }
        let cluster = Self {
            infra,
            broker,
            kafka,
            owns_infra,
            database_url,
            jwt_secret,
            services,
        };
        for s in &cluster.services {
            s.wait_healthy(Duration::from_secs(120)).await?;
        }
        Ok(cluster)
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
        let Some(c) = self.of(Role::Coordinator).next() else {
            return false;
        };
        let Ok(r) = reqwest::get(format!("{}/v1/assignment", c.http)).await else {
            return false;
        };
        let Ok(a) = r.json::<protocol::Assignment>().await else {
            return false;
        };
        a.servers.values().filter(|s| !s.draining).count() == servers
            && a.owners.iter().all(Option::is_some)
    }

    /// (name, host PID) of the broker and every service.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        let broker = harness::infra::container_pid(self.broker.id());
        let mut out = vec![("broker (nisshi)".to_owned(), broker)];
        out.extend(self.services.iter().map(|s| (s.name.clone(), s.pid())));
        out
    }

    /// Saves every service's log (`docker logs`) as `<dir>/<name>.log`.
    pub async fn save_logs(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for s in &self.services {
            let out = tokio::process::Command::new("docker")
                .args(["logs", s.container.id()])
                .output()
                .await
                .context("failed to run docker logs")?;
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            std::fs::write(dir.join(format!("{}.log", s.name)), text)?;
        }
        Ok(())
    }

    /// `kill -9` of the broker; it stays down until `start_broker`.
    pub async fn kill_broker(&self) -> anyhow::Result<()> {
        docker_kill(self.broker.id(), "the broker").await
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
        for s in self.services {
            let _ = s.container.rm().await;
        }
        let _ = self.broker.rm().await;
        if self.owns_infra {
            if let Ok(infra) = Arc::try_unwrap(self.infra) {
                infra.stop().await;
            }
        }
    }
}

async fn docker_kill(id: &str, name: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("docker")
        .args(["kill", "--signal", "KILL", id])
        .output()
        .await
        .context("failed to run docker kill")?;
    anyhow::ensure!(
        out.status.success(),
        "docker kill {name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Common {
    async fn start(
        &self,
        role: Role,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let port = free_port()?;
        let mut image = GenericImage::new(format!("switchboard/{}", role.image()), "local".into())
            .with_network("host")
            .with_label("switchboard.test-run", self.run_id.as_str())
            .with_container_name(format!("sb-test-{}-{}-{name}", self.run_id, self.tag))
            .with_env_var("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"));
        for (k, v) in &self.env {
            image = image.with_env_var(k.as_str(), v.as_str());
        }
        for (k, v) in extra {
            image = image.with_env_var(*k, v.as_str());
        }
        let container = image.start().await.with_context(|| {
            format!("failed to start the {name} container (did ./dev build the images?)")
        })?;
        Ok(Service {
            name: name.to_owned(),
            role,
            http: format!("http://127.0.0.1:{port}"),
            container,
        })
    }
}
