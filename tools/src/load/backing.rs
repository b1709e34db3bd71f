//! The backing services of a cluster on a network of its own: the broker,
//! etcd and PostgreSQL each at an address of its own, and the relay in this
//! process through which every Kafka client reaches the broker (so that
//! link can be slowed; the kernel here has no netem).

use super::net::{Container, Net, Spec};
use anyhow::Context;

/// The broker, etcd and PostgreSQL of a cluster on its own network.
pub struct Backing {
    pub net: Net,
    pub etcd: Container,
    pub etcd_ip: String,
    pub postgres: Container,
    pub postgres_ip: String,
    /// The relay every Kafka client of the cluster goes through.
    pub broker_relay: harness::proxy::Proxy,
    /// The relay's address, as the containers reach it.
    pub broker_relay_ip: String,
    pub broker_relay_port: u16,
    /// The broker's address for every Kafka client (the relay).
    pub kafka: String,
    /// PostgreSQL's URL, the same from the containers and from this process.
    pub database_url: String,
}

impl Backing {
    /// Starts the network, the broker (returned apart: the cluster kills
    /// and restarts it), etcd and PostgreSQL, and waits until each answers.
    pub async fn start(label: &str) -> anyhow::Result<(Self, Container)> {
        let net = Net::create(label).await?;
        let gateway = net.ip(1);
        let relay = harness::proxy::Proxy::bind_on(gateway.parse()?)
            .await
            .context("failed to bind the broker relay on the network's gateway")?;
        let relay_port = relay.addr().port();
        let kafka = format!("{gateway}:{relay_port}");
        let (broker_ip, etcd_ip, pg_ip) = (net.ip(2), net.ip(3), net.ip(4));
        relay.target(format!("{broker_ip}:9092").parse()?);
        let run = |name: &str, image: &'static str, ip: String, env, args| {
            let (name, net) = (format!("sb-test-{label}-{name}"), net.name.clone());
            async move {
                Container::run(Spec {
                    name,
                    image,
                    network: &net,
                    ip: Some(&ip),
                    label,
                    env,
                    args,
                })
                .await
            }
        };
        let broker = run(
            "broker",
            "switchboard/broker:local",
            broker_ip,
            broker_env("tcp://0.0.0.0:9092", &format!("tcp://{kafka}")),
            vec![],
        );
        let etcd_url = format!("http://{etcd_ip}:2379");
        let etcd_env = vec![
            (
                "ETCD_LISTEN_CLIENT_URLS".to_owned(),
                "http://0.0.0.0:2379".to_owned(),
            ),
            ("ETCD_ADVERTISE_CLIENT_URLS".to_owned(), etcd_url.clone()),
        ];
        let etcd = run(
            "etcd",
            "switchboard/etcd:local",
            etcd_ip.clone(),
            etcd_env,
            vec![],
        );
        let pg_env = vec![
            ("POSTGRES_PORT".to_owned(), "5432".to_owned()),
            ("POSTGRES_DB".to_owned(), "switchboard".to_owned()),
        ];
        let pg_args = ["-c", "fsync=off", "-c", "max_connections=300"]
            .map(String::from)
            .to_vec();
        let postgres = run(
            "postgres",
            "switchboard/postgres:local",
            pg_ip.clone(),
            pg_env,
            pg_args,
        );
        let (broker, etcd, postgres) = tokio::join!(broker, etcd, postgres);
        let (broker, etcd, postgres) = (broker?, etcd?, postgres?);
        let database_url = format!(
            "postgres://switchboard:{}@{pg_ip}:5432/switchboard",
            harness::infra::PG_PASSWORD
        );
        harness::infra::wait_for_postgres_url(&database_url).await?;
        harness::infra::wait_for_etcd(&etcd_url).await?;
        harness::infra::wait_for_kafka(&kafka).await?;
        eprintln!(
            "[cluster] network {}: broker {kafka} (relayed), etcd {etcd_url}, PostgreSQL {pg_ip}",
            net.name
        );
        let backing = Self {
            net,
            etcd,
            etcd_ip,
            postgres,
            postgres_ip: pg_ip,
            broker_relay: relay,
            broker_relay_ip: gateway,
            broker_relay_port: relay_port,
            kafka,
            database_url,
        };
        Ok((backing, broker))
    }
}

/// The broker listening on `listen` and telling clients to dial `advertised`.
/// Its first consumer-group rebalance waits 100 ms, not 3 s (one member at a time).
pub(super) fn broker_env(listen: &str, advertised: &str) -> Vec<(String, String)> {
    vec![
        ("LISTENER_URL".into(), listen.into()),
        ("ADVERTISED_LISTENER_URL".into(), advertised.into()),
        ("GROUP_INITIAL_REBALANCE_DELAY".into(), "100ms".into()),
    ]
}
