//! The benchmark's coordinator: inside the bench's process (most benches),
//! or a process of its own (`storm --own-coordinator`). In production it is
//! its own process; a 36,000-device storm's waiting lookups would otherwise
//! share the bench's open-file limit with everything else the bench holds.

use harness::{free_port, Process, ServiceHandle};

pub enum Coordinator {
    InProcess(ServiceHandle),
    Own { process: Process, url: String },
}

impl Coordinator {
    pub fn start(config: coordinator::Config, own: bool) -> anyhow::Result<Self> {
        if !own {
            return Ok(Self::InProcess(harness::start_coordinator(
                "coord", config,
            )?));
        }
        let port = free_port()?;
        let env = [
            ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}")),
            (
                "SWITCHBOARD_ETCD_ENDPOINTS",
                config.etcd.endpoints.join(","),
            ),
            ("SWITCHBOARD_ETCD_PREFIX", config.etcd.prefix.clone()),
            ("SWITCHBOARD_KAFKA_BROKERS", config.kafka.brokers.clone()),
            ("SWITCHBOARD_TOPIC", config.kafka.topic.clone()),
            ("SWITCHBOARD_PARTITIONS", config.partitions.to_string()),
            (
                "SWITCHBOARD_CHANNEL_PARTITIONS",
                config.channel_partitions.to_string(),
            ),
            (
                "SWITCHBOARD_LEASE_TTL_SECS",
                config.lease_ttl.as_secs().to_string(),
            ),
            (
                "SWITCHBOARD_DEBOUNCE_MS",
                config.debounce.as_millis().to_string(),
            ),
            (
                "SWITCHBOARD_ROUTE_WAIT_MAX_MS",
                config.route_wait_max.as_millis().to_string(),
            ),
        ];
        Ok(Self::Own {
            process: Process::spawn("coordinator", &env)?,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    pub fn url(&self) -> String {
        match self {
            Self::InProcess(h) => h.url(),
            Self::Own { url, .. } => url.clone(),
        }
    }

    /// The process it runs in (the bench's own when in-process).
    pub fn pid(&self) -> u32 {
        match self {
            Self::InProcess(_) => std::process::id(),
            Self::Own { process, .. } => process.pid().unwrap_or(0),
        }
    }

    pub fn own(&self) -> bool {
        matches!(self, Self::Own { .. })
    }

    pub async fn stop(self) {
        match self {
            Self::InProcess(h) => h.stop().await,
            Self::Own { process, .. } => drop(process.terminate().await),
        }
    }
}
