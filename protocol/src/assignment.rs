//! The partition → server map the coordinator publishes (docs/protocol.md, "Assignment").

use crate::ids::ServerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A messaging server's registration, stored leased under `servers/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server_id: ServerId,
    pub ws_url: String,
    pub http_url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub draining: bool,
    /// The server cannot reach the broker: the coordinator moves its
    /// partitions to servers that can (when one can).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broker_unreachable: bool,
    /// This registration (a new one for each lease the server takes):
    /// connection events name it, so a session whose registration is gone
    /// is reported `disconnected` by the partition's next owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<uuid::Uuid>,
}

impl ServerInfo {
    /// A server at `host` (`name[:port]`) with the usual paths, weight 1,
    /// not draining.
    pub fn at_host(server_id: ServerId, host: &str) -> Self {
        Self {
            server_id,
            ws_url: format!("ws://{host}/v1/ws"),
            http_url: format!("http://{host}"),
            weight: 1,
            draining: false,
            broker_unreachable: false,
            incarnation: None,
        }
    }
}

fn default_weight() -> u32 {
    1
}

/// `owners[p]` is the server owning partition `p`, `None` when nobody can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub epoch: u64,
    /// The topic incarnation cursors refer to (see `EtcdLayout::log_epoch_key`).
    #[serde(default)]
    pub log_epoch: String,
    pub partitions: u32,
    pub owners: Vec<Option<ServerId>>,
    pub servers: BTreeMap<ServerId, ServerInfo>,
}

impl Assignment {
    pub fn empty(partitions: u32) -> Self {
        Self {
            epoch: 0,
            log_epoch: String::new(),
            partitions,
            owners: vec![None; partitions as usize],
            servers: BTreeMap::new(),
        }
    }

    /// A cluster of `servers` live servers has settled: exactly that many
    /// are in the map and not draining, and every partition has an owner.
    /// (Tests, benchmarks and `./dev` wait for this before sending.)
    pub fn settled(&self, servers: usize) -> bool {
        self.servers.values().filter(|s| !s.draining).count() == servers
            && self.owners.iter().all(Option::is_some)
    }

    pub fn owner(&self, partition: u32) -> Option<&ServerInfo> {
        let id = self.owners.get(partition as usize)?.as_ref()?;
        self.servers.get(id)
    }

    /// The partitions `server_id` owns, ascending.
    pub fn partitions_of(&self, server_id: &ServerId) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.owners[*p as usize].as_ref() == Some(server_id))
            .collect()
    }

    /// Whether `server_id` owns `partition` in this map.
    pub fn is_owner(&self, partition: u32, server_id: &ServerId) -> bool {
        self.owners.get(partition as usize).and_then(Option::as_ref) == Some(server_id)
    }

    /// Partitions per server, for logs and metrics.
    pub fn loads(&self) -> BTreeMap<&ServerId, usize> {
        let mut loads: BTreeMap<&ServerId, usize> = self.servers.keys().map(|k| (k, 0)).collect();
        for id in self.owners.iter().flatten() {
            *loads.entry(id).or_default() += 1;
        }
        loads
    }

    /// Partitions whose owner differs between `self` and `next`.
    pub fn moved_to(&self, next: &Assignment) -> Vec<u32> {
        (0..next.partitions)
            .filter(|p| self.owners.get(*p as usize) != next.owners.get(*p as usize))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_answers_queries() {
        let mut a = Assignment::empty(3);
        let s1 = ServerId::new("s1").unwrap();
        a.servers.insert(
            s1.clone(),
            ServerInfo {
                server_id: s1.clone(),
                ws_url: "ws://x/v1/ws".into(),
                http_url: "http://x".into(),
                weight: 1,
                draining: false,
                broker_unreachable: false,
                incarnation: None,
            },
        );
        a.owners = vec![Some(s1.clone()), None, Some(s1.clone())];
        let back: Assignment = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.partitions_of(&s1), vec![0, 2]);
        assert!(a.is_owner(2, &s1) && !a.is_owner(1, &s1) && !a.is_owner(9, &s1));
        assert!(a.owner(1).is_none());
        assert_eq!(a.owner(0).map(|s| s.ws_url.as_str()), Some("ws://x/v1/ws"));
        assert_eq!(a.loads()[&s1], 2);
        let mut b = a.clone();
        b.owners[1] = Some(s1);
        assert_eq!(a.moved_to(&b), vec![1]);
    }

    #[test]
    fn registration_defaults() {
        let s: ServerInfo =
            serde_json::from_str(r#"{"server_id":"a","ws_url":"w","http_url":"h"}"#).unwrap();
        assert_eq!((s.weight, s.draining), (1, false));
    }
}
