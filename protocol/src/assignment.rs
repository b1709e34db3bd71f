//! The partition → server map the coordinator publishes (DESIGN.md §5, §7).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A messaging server's registration, stored leased under `servers/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server_id: String,
    pub ws_url: String,
    pub http_url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub draining: bool,
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
    pub owners: Vec<Option<String>>,
    pub servers: BTreeMap<String, ServerInfo>,
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

    pub fn owner(&self, partition: u32) -> Option<&ServerInfo> {
        let id = self.owners.get(partition as usize)?.as_ref()?;
        self.servers.get(id)
    }

    /// The partitions `server_id` owns, ascending.
    pub fn partitions_of(&self, server_id: &str) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.owners[*p as usize].as_deref() == Some(server_id))
            .collect()
    }

    /// Partitions per server, for logs and metrics.
    pub fn loads(&self) -> BTreeMap<&str, usize> {
        let mut loads: BTreeMap<&str, usize> =
            self.servers.keys().map(|k| (k.as_str(), 0)).collect();
        for id in self.owners.iter().flatten() {
            *loads.entry(id.as_str()).or_default() += 1;
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
        a.servers.insert(
            "s1".into(),
            ServerInfo {
                server_id: "s1".into(),
                ws_url: "ws://x/v1/ws".into(),
                http_url: "http://x".into(),
                weight: 1,
                draining: false,
            },
        );
        a.owners = vec![Some("s1".into()), None, Some("s1".into())];
        let back: Assignment = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.partitions_of("s1"), vec![0, 2]);
        assert!(a.owner(1).is_none());
        assert_eq!(a.owner(0).map(|s| s.ws_url.as_str()), Some("ws://x/v1/ws"));
        assert_eq!(a.loads()["s1"], 2);
        let mut b = a.clone();
        b.owners[1] = Some("s1".into());
        assert_eq!(a.moved_to(&b), vec![1]);
    }

    #[test]
    fn registration_defaults() {
        let s: ServerInfo =
            serde_json::from_str(r#"{"server_id":"a","ws_url":"w","http_url":"h"}"#).unwrap();
        assert_eq!((s.weight, s.draining), (1, false));
    }
}
