//! A whole Switchboard in-process: coordinator, messaging servers and
//! persister, sharing one topic, etcd prefix and database of the test run.

use crate::{coordinator_config, start_coordinator, wait_until, Infra, ServiceHandle};
use protocol::Assignment;
use std::time::Duration;

pub const JWT_SECRET: &str = "switchboard-test-secret-0123456789";

/// The infrastructure a stack runs on: the run's shared containers unless a
/// test brings its own (to pause, stop or kill them).
#[derive(Debug, Clone)]
pub struct Backing {
    pub kafka: String,
    pub etcd: Vec<String>,
    /// `None`: a fresh database on the shared PostgreSQL.
    pub database_url: Option<String>,
    /// The operator's admin key, given to the coordinator (its console).
    pub admin_key: Option<String>,
}

impl Backing {
    pub fn shared(infra: &Infra) -> Self {
        Self {
            kafka: infra.kafka.clone(),
            etcd: infra.etcd_endpoints(),
            database_url: None,
            admin_key: None,
        }
    }
    pub fn admin_key(self, key: &str) -> Self {
        Self {
            admin_key: Some(key.to_owned()),
            ..self
        }
    }
    pub fn kafka(self, kafka: &str) -> Self {
        Self {
            kafka: kafka.to_owned(),
            ..self
        }
    }
    pub fn etcd(self, url: &str) -> Self {
        Self {
            etcd: vec![url.to_owned()],
            ..self
        }
    }
    pub fn database(self, url: &str) -> Self {
        Self {
            database_url: Some(url.to_owned()),
            ..self
        }
    }
}

pub struct Stack {
    pub prefix: String,
    pub topic: String,
    pub database_url: String,
    pub partitions: u32,
    pub coordinator: ServiceHandle,
    pub servers: Vec<ServiceHandle>,
    pub persister: Option<ServiceHandle>,
    kafka: String,
    etcd: Vec<String>,
    next_server: usize,
}

impl Stack {
    pub async fn start(
        infra: &Infra,
        name: &str,
        servers: usize,
        persister: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(infra, name, servers, persister, |_| {}).await
    }

    /// Like `start`, with `tweak` applied to every messaging server's config.
    pub async fn start_with(
        infra: &Infra,
        name: &str,
        servers: usize,
        persister: bool,
        tweak: impl Fn(&mut messaging_server::Config),
    ) -> anyhow::Result<Self> {
        Self::start_on(
            infra,
            Backing::shared(infra),
            name,
            servers,
            persister,
            tweak,
        )
        .await
    }

    /// Like `start_with`, on `backing` (e.g. a private broker or etcd).
    pub async fn start_on(
        infra: &Infra,
        backing: Backing,
        name: &str,
        servers: usize,
        persister: bool,
        tweak: impl Fn(&mut messaging_server::Config),
    ) -> anyhow::Result<Self> {
        let prefix = format!("/{}", infra.unique(name));
        let topic = infra.unique(name);
        let database_url = match backing.database_url {
            Some(url) => url,
            None => infra.database(name).await?,
        };
        let partitions = 8;
        let mut coordinator_config = coordinator_config(infra, &prefix, &topic, partitions);
        coordinator_config.kafka.brokers = backing.kafka.clone();
        coordinator_config.etcd.endpoints = backing.etcd.clone();
        coordinator_config.admin_key = backing.admin_key.clone().map(Into::into);
        let coordinator = start_coordinator(&format!("{name}-coord"), coordinator_config)?;
        let mut stack = Self {
            prefix,
            topic,
            database_url,
            partitions,
            coordinator,
            servers: Vec::new(),
            persister: None,
            kafka: backing.kafka,
            etcd: backing.etcd,
            next_server: 0,
        };
        for _ in 0..servers {
            stack.add_server(&tweak)?;
        }
        if persister {
            stack.start_persister()?;
        }
        stack.wait_settled(servers).await?;
        Ok(stack)
    }

    /// The broker this stack's services use.
    pub fn brokers(&self) -> &str {
        &self.kafka
    }

    pub fn server_config(&self, id: &str) -> messaging_server::Config {
        use clap::Parser;
        let mut c = messaging_server::Config::parse_from(["messaging-server"]);
        c.listen = ([127, 0, 0, 1], 0).into();
        c.server_id = protocol::ServerId::new(id).ok();
        c.etcd.endpoints = self.etcd.clone();
        c.etcd.prefix = self.prefix.clone();
        c.lease_ttl = Duration::from_secs(2);
        c.kafka.brokers = self.kafka.clone();
        c.kafka.topic = self.topic.clone();
        c.database.url = self.database_url.clone();
        c.jwt.secret = Some(JWT_SECRET.to_owned().into());
        c.drain_timeout = Duration::from_secs(5);
        c
    }

    pub fn add_server(
        &mut self,
        tweak: impl FnOnce(&mut messaging_server::Config),
    ) -> anyhow::Result<String> {
        self.add_server_with(tweak, messaging_server::Faults::default())
    }

    /// A server whose long-lived tasks the test can make panic.
    pub fn add_server_with(
        &mut self,
        tweak: impl FnOnce(&mut messaging_server::Config),
        faults: messaging_server::Faults,
    ) -> anyhow::Result<String> {
        self.next_server += 1;
        let id = format!("ms{}", self.next_server);
        let mut config = self.server_config(&id);
        tweak(&mut config);
        let config = service::Check::validate(config)?;
        let handle = ServiceHandle::start(&id, move |l, c| {
            messaging_server::serve_with(config, l, c, faults)
        })?;
        self.servers.push(handle);
        Ok(id)
    }

    pub fn start_persister(&mut self) -> anyhow::Result<()> {
        self.start_persister_with(persister::Faults::default())
    }

    /// A persister whose consumer thread the test can make panic.
    pub fn start_persister_with(&mut self, faults: persister::Faults) -> anyhow::Result<()> {
        use clap::Parser;
        let mut c = persister::Config::parse_from(["persister"]);
        c.listen = ([127, 0, 0, 1], 0).into();
        c.kafka.brokers = self.kafka.clone();
        c.kafka.topic = self.topic.clone();
        c.group_id = format!("{}-persister", self.topic);
        c.database.url = self.database_url.clone();
        c.batch_wait = Duration::from_millis(20);
        let c = service::Check::validate(c)?;
        self.persister = Some(ServiceHandle::start("persister", move |l, cancel| {
            persister::serve_with(c, l, cancel, faults)
        })?);
        Ok(())
    }

    pub async fn assignment(&self) -> anyhow::Result<Assignment> {
        crate::assignment(&self.coordinator.url()).await
    }

    /// Waits until `n` servers own every partition and all of them are ready.
    pub async fn wait_settled(&self, n: usize) -> anyhow::Result<()> {
        let base = self.coordinator.url();
        let servers: Vec<String> = self.servers.iter().map(|s| s.url()).collect();
        wait_until("the stack is settled", Duration::from_secs(60), || async {
            let owners_live = crate::assignment(&base).await.is_ok_and(|a| a.settled(n));
            let mut ready = true;
            for s in &servers {
                ready &= reqwest::get(format!("{s}/readyz"))
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
            }
            owners_live && ready
        })
        .await
    }

    /// `(server_id, ws_url)` of the server the coordinator routes `user` to.
    pub async fn route(&self, user: &str) -> anyhow::Result<(String, String)> {
        crate::route(&self.coordinator.url(), user).await
    }

    pub fn token(user: &str) -> String {
        switchboard_client::token::mint_hs256(JWT_SECRET, user, 3600).unwrap_or_default()
    }

    /// A correctly signed token that expired an hour ago.
    pub fn expired_token(user: &str) -> String {
        switchboard_client::token::mint_hs256(JWT_SECRET, user, -3600).unwrap_or_default()
    }

    pub fn server_http(&self, id: &str) -> Option<String> {
        self.servers.iter().find(|s| s.name == id).map(|s| s.url())
    }

    /// A messaging server of this stack as a process of its own (to
    /// signal it, or read its RSS) on 127.0.0.1:`port`, with `extra`
    /// settings beside the stack's own.
    pub fn server_process(
        &self,
        id: &str,
        port: u16,
        extra: &[(&str, String)],
    ) -> anyhow::Result<crate::Process> {
        let mut env = vec![
            ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
            ("SWITCHBOARD_SERVER_ID", id.to_owned()),
            ("SWITCHBOARD_ETCD_ENDPOINTS", self.etcd.join(",")),
            ("SWITCHBOARD_ETCD_PREFIX", self.prefix.clone()),
            ("SWITCHBOARD_KAFKA_BROKERS", self.kafka.clone()),
            ("SWITCHBOARD_TOPIC", self.topic.clone()),
            ("SWITCHBOARD_DATABASE_URL", self.database_url.clone()),
            ("SWITCHBOARD_JWT_SECRET", JWT_SECRET.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        crate::Process::spawn("messaging-server", &env)
    }

    pub fn take_server(&mut self, id: &str) -> Option<ServiceHandle> {
        let i = self.servers.iter().position(|s| s.name == id)?;
        Some(self.servers.remove(i))
    }

    /// Users whose partitions are owned by two different servers.
    pub async fn users_on_distinct_servers(&self, base: &str) -> anyhow::Result<(String, String)> {
        let a = self.assignment().await?;
        let owner = |u: &str| a.owners[protocol::partition_for(u, a.partitions) as usize].clone();
        let first = format!("{base}-a");
        for i in 0..1000 {
            let u = format!("{base}-b{i}");
            if owner(&u) != owner(&first) {
                return Ok((first, u));
            }
        }
        anyhow::bail!("no two users on distinct servers")
    }

    pub async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
        if let Some(p) = self.persister {
            p.stop().await;
        }
        self.coordinator.stop().await;
    }
}
