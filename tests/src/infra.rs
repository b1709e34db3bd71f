//! One set of real infrastructure per test run — a Kafka-protocol broker
//! (nisshi, SQLite storage), etcd and PostgreSQL — started with testcontainers from the images
//! `./dev` builds locally. Tests isolate themselves by topic, etcd prefix and
//! database instead of sharing state.
//!
//! The containers use the host network and listen on free loopback ports: the
//! broker must advertise the address clients dial, and that is only known
//! once a port is chosen, so port mapping would not do.

use crate::{free_port, wait_until};
use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use testcontainers::core::ContainerAsync;
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

pub const IMAGE_TAG: &str = "local";
pub const PG_PASSWORD: &str = "switchboard";

pub struct Infra {
    pub run_id: String,
    /// `host:port` of the Kafka-protocol broker.
    pub kafka: String,
    /// `http://host:port` of etcd.
    pub etcd: String,
    pg_port: u16,
    containers: Vec<ContainerAsync<GenericImage>>,
    counter: AtomicU64,
}

fn image(name: &str) -> GenericImage {
    GenericImage::new(format!("switchboard/{name}"), IMAGE_TAG.to_owned())
}

impl Infra {
    pub async fn start() -> anyhow::Result<Self> {
        let run_id = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let label = |r: testcontainers::ContainerRequest<GenericImage>, what: &str| {
            r.with_network("host")
                .with_label("switchboard.test-run", run_id.as_str())
                .with_container_name(format!("sb-test-{run_id}-{what}"))
        };
        let (kp, ep, pp) = (free_port()?, free_port()?, free_port()?);
        let kafka = format!("127.0.0.1:{kp}");
        let broker = label(broker_image(&kafka), "broker").start();
        let etcd_url = format!("http://127.0.0.1:{ep}");
        let etcd = label(
            image("etcd")
                .with_env_var("ETCD_LISTEN_CLIENT_URLS", etcd_url.as_str())
                .with_env_var("ETCD_ADVERTISE_CLIENT_URLS", etcd_url.as_str())
                .with_env_var(
                    "ETCD_LISTEN_PEER_URLS",
                    format!("http://127.0.0.1:{}", free_port()?),
                ),
            "etcd",
        )
        .start();
        let pg = label(
            image("postgres")
                .with_env_var("POSTGRES_PORT", pp.to_string())
                .with_cmd([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "max_connections=500",
                ]),
            "postgres",
        )
        .start();
        let (broker, etcd, pg) = tokio::join!(broker, etcd, pg);
        let containers = vec![
            broker.context("failed to start the broker container (did ./dev build the images?)")?,
            etcd.context("failed to start the etcd container")?,
            pg.context("failed to start the postgres container")?,
        ];
        wait_for_postgres(pp).await?;
        wait_for_etcd(&etcd_url).await?;
        wait_for_kafka(&kafka).await?;
        eprintln!("[infra] run {run_id}: broker (nisshi) at {kafka}, etcd at {etcd_url}, PostgreSQL at 127.0.0.1:{pp}");
        Ok(Self {
            run_id,
            kafka,
            etcd: etcd_url,
            pg_port: pp,
            containers,
            counter: AtomicU64::new(0),
        })
    }

    pub async fn stop(self) {
        for c in self.containers {
            let _ = c.rm().await;
        }
    }

    /// A PostgreSQL of its own (for tests that stop and restart it), on the
    /// host network so its port survives a restart. Returns it and its URL.
    pub async fn private_postgres(
        &self,
        name: &str,
    ) -> anyhow::Result<(ContainerAsync<GenericImage>, String)> {
        let port = free_port()?;
        let c = image("postgres")
            .with_env_var("POSTGRES_PORT", port.to_string())
            .with_env_var("POSTGRES_DB", "switchboard")
            .with_cmd(["-c", "fsync=off"])
            .with_network("host")
            .with_label("switchboard.test-run", self.run_id.as_str())
            .with_container_name(format!("sb-test-{}-{name}", self.run_id))
            .start()
            .await?;
        wait_for_postgres(port).await?;
        Ok((
            c,
            format!("postgres://switchboard:{PG_PASSWORD}@127.0.0.1:{port}/switchboard"),
        ))
    }

    /// An etcd of its own (for tests that stop and restart it), on the host
    /// network so its URL survives a restart; its data stays in the
    /// container, so a restart keeps every key and lease.
    pub async fn private_etcd(
        &self,
        name: &str,
    ) -> anyhow::Result<(ContainerAsync<GenericImage>, String)> {
        let url = format!("http://127.0.0.1:{}", free_port()?);
        let c = image("etcd")
            .with_env_var("ETCD_LISTEN_CLIENT_URLS", url.as_str())
            .with_env_var("ETCD_ADVERTISE_CLIENT_URLS", url.as_str())
            .with_env_var(
                "ETCD_LISTEN_PEER_URLS",
                format!("http://127.0.0.1:{}", free_port()?),
            )
            .with_network("host")
            .with_label("switchboard.test-run", self.run_id.as_str())
            .with_container_name(format!("sb-test-{}-{name}", self.run_id))
            .start()
            .await?;
        wait_for_etcd(&url).await?;
        Ok((c, url))
    }

    /// A broker of its own (for tests that pause, slow down or kill it), on
    /// the host network so its address survives a restart; its log is kept
    /// in SQLite inside the container, so a restart loses nothing.
    pub async fn private_broker(
        &self,
        name: &str,
    ) -> anyhow::Result<(ContainerAsync<GenericImage>, String)> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let c = broker_image(&addr)
            .with_network("host")
            .with_label("switchboard.test-run", self.run_id.as_str())
            .with_container_name(format!("sb-test-{}-{name}", self.run_id))
            .start()
            .await?;
        wait_for_kafka(&addr).await?;
        Ok((c, addr))
    }

    /// Host PID of the broker container (for CPU accounting in benchmarks).
    pub fn broker_pid(&self) -> Option<u32> {
        container_pid(self.containers.first()?.id())
    }

    /// A name unique within this run, safe for topics, databases and etcd.
    pub fn unique(&self, base: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let clean: String = base
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!(
            "{clean}_{n}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        )
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        vec![self.etcd.clone()]
    }

    /// Creates a fresh database and returns its URL.
    ///
    /// Each call opens its own connection: every test runs on its own tokio
    /// runtime, and a pooled connection created on a runtime that has since
    /// shut down fails with "Tokio context is being shutdown".
    pub async fn database(&self, base: &str) -> anyhow::Result<String> {
        let name = self.unique(base).to_lowercase();
        let mut admin = PgConnection::connect(&self.database_url("postgres"))
            .await
            .context("failed to connect to PostgreSQL as admin")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .context("failed to create test database")?;
        let _ = admin.close().await;
        Ok(self.database_url(&name))
    }

    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://switchboard:{PG_PASSWORD}@127.0.0.1:{}/{name}",
            self.pg_port
        )
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        create_topic(&self.kafka, topic, partitions).await
    }

    /// The users' topic and its `.events` (what the persister reads), as the
    /// coordinator leader would create them.
    pub async fn create_user_topics(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        create_topic(&self.kafka, topic, partitions).await?;
        create_topic(&self.kafka, &protocol::events_topic(topic), partitions).await
    }
}

/// Creates `topic` with `partitions` (replication 1) on the broker at `brokers`.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("failed to create topic {t}: {e}"))?;
    }
    Ok(())
}

impl Infra {
    /// Deletes the records of `partition` before `before`, as retention
    /// would: the partition's log start moves to `before`.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: i64,
    ) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(
            topic,
            service::kafka::to_kafka(partition),
            rdkafka::Offset::Offset(before),
        )?;
        let done = admin.delete_records(&tpl, &AdminOptions::new()).await?;
        for e in done.elements() {
            e.error().map_err(|err| {
                anyhow::anyhow!("failed to delete records of {topic}/{partition}: {err}")
            })?;
        }
        Ok(())
    }
}

/// Host PID of a container's main process.
pub fn container_pid(id: &str) -> Option<u32> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", id])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// The broker listening on (and advertising) `addr`. Its first consumer-group
/// rebalance waits 100 ms for more members instead of 3 s: tests start one
/// member at a time.
fn broker_image(addr: &str) -> testcontainers::ContainerRequest<GenericImage> {
    let url = format!("tcp://{addr}");
    image("broker")
        .with_env_var("LISTENER_URL", url.as_str())
        .with_env_var("ADVERTISED_LISTENER_URL", url.as_str())
        .with_env_var("GROUP_INITIAL_REBALANCE_DELAY", "100ms")
}

async fn wait_for_postgres(port: u16) -> anyhow::Result<()> {
    wait_for_postgres_url(&format!(
        "postgres://switchboard:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    ))
    .await
}

/// Waits until PostgreSQL at `url` accepts a connection.
pub async fn wait_for_postgres_url(url: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(anyhow::anyhow!(
                    "postgres did not accept connections within 60s: {e}"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn wait_for_etcd(url: &str) -> anyhow::Result<()> {
    let endpoints = vec![url.to_owned()];
    wait_until("etcd answers", Duration::from_secs(60), || async {
        match service::etcd::connect(&endpoints).await {
            Ok(mut c) => c.get("/ping", None).await.is_ok(),
            Err(_) => false,
        }
    })
    .await
}

pub async fn wait_for_kafka(addr: &str) -> anyhow::Result<()> {
    let addr = addr.to_owned();
    wait_until(
        "the broker answers metadata",
        Duration::from_secs(60),
        || {
            let addr = addr.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let c: Result<rdkafka::consumer::BaseConsumer, _> =
                        ClientConfig::new().set("bootstrap.servers", &addr).create();
                    c.map(|c| {
                        rdkafka::consumer::Consumer::fetch_metadata(
                            &c,
                            None,
                            Duration::from_secs(2),
                        )
                        .is_ok()
                    })
                    .unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        },
    )
    .await
}
