use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use protocol::Assignment;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub epoch: Gauge,
    pub servers: Gauge,
    pub partitions_owned: Family<ServerLabel, Gauge>,
    pub unowned_partitions: Gauge,
    pub reassigned: Counter,
    pub published: Counter,
    pub is_leader: Gauge,
    pub awaited_servers: Gauge,
    pub route_requests: Counter,
    pub probes: Family<VerdictLabel, Counter>,
    pub declared_dead: Counter,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("switchboard_coordinator");
        r.register(
            "epoch",
            "Epoch of the assignment this replica serves",
            self.epoch.clone(),
        );
        r.register(
            "servers",
            "Live messaging servers in the assignment",
            self.servers.clone(),
        );
        r.register(
            "partitions_owned",
            "Partitions owned per server",
            self.partitions_owned.clone(),
        );
        r.register(
            "unowned_partitions",
            "Partitions without an owner",
            self.unowned_partitions.clone(),
        );
        r.register(
            "reassigned_partitions",
            "Partitions whose owner changed (leader only)",
            self.reassigned.clone(),
        );
        r.register(
            "assignments_published",
            "Assignments written by this replica as leader",
            self.published.clone(),
        );
        r.register(
            "is_leader",
            "1 while this replica leads",
            self.is_leader.clone(),
        );
        r.register(
            "awaited_servers",
            "Servers of the inherited map a new leader keeps for one lease TTL while they register again (leader only)",
            self.awaited_servers.clone(),
        );
        r.register(
            "route_requests",
            "GET /v1/route requests served",
            self.route_requests.clone(),
        );
        // Every verdict from the start: a dashboard's rate is 0, not absent.
        for v in crate::probe::Verdict::ALL {
            let _ = self
                .probes
                .get_or_create(&VerdictLabel { verdict: v.label() });
        }
        r.register(
            "probes",
            "Checks of servers that clients reported unreachable, by verdict",
            self.probes.clone(),
        );
        r.register(
            "declared_dead",
            "Servers whose lease this replica revoked because their port refused connections",
            self.declared_dead.clone(),
        );
    }

    pub fn probe(&self, v: crate::probe::Verdict) {
        self.probes
            .get_or_create(&VerdictLabel { verdict: v.label() })
            .inc();
    }

    pub fn observe(&self, a: &Assignment) {
        self.epoch.set(a.epoch as i64);
        self.servers.set(a.servers.len() as i64);
        self.partitions_owned.clear();
        for (server, n) in a.loads() {
            self.partitions_owned
                .get_or_create(&ServerLabel {
                    server: server.to_string(),
                })
                .set(n as i64);
        }
        self.unowned_partitions
            .set(a.owners.iter().filter(|o| o.is_none()).count() as i64);
    }
}
