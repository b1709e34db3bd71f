//! When a server's `broker_unreachable` mark takes effect.
//!
//! A server that cannot reach the broker says so in its registration; its
//! partitions should move to servers that can. But when the *broker* fails,
//! every server says so, each a little after the others (each notices a
//! lease TTL after its own last answer). Moving partitions to the servers
//! that have not noticed yet would close sessions for nothing and move them
//! back a moment later. So a mark counts only once it has held for a grace
//! (one lease TTL, longer than the spread between servers noticing), and
//! not at all while every server is marked.

use crate::rejoin::Servers;
use protocol::ServerId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct BrokerGrace {
    since: BTreeMap<ServerId, Instant>,
    grace: Duration,
}

impl BrokerGrace {
    pub fn new(grace: Duration) -> Self {
        Self {
            since: BTreeMap::new(),
            grace,
        }
    }

    /// The membership to assign from at `now`: marks younger than the grace
    /// are cleared, and all marks while no server is free of one.
    pub fn members(&mut self, servers: &Servers, now: Instant) -> Servers {
        self.since
            .retain(|id, _| servers.get(id).is_some_and(|s| s.broker_unreachable));
        for id in servers
            .iter()
            .filter(|(_, s)| s.broker_unreachable)
            .map(|(id, _)| id)
        {
            self.since.entry(id.clone()).or_insert(now);
        }
        let someone_reaches = servers
            .values()
            .any(|s| !s.draining && !s.broker_unreachable);
        let mut out = servers.clone();
        for (id, s) in out.iter_mut() {
            let held = self.since.get(id).is_some_and(|t| now >= *t + self.grace);
            s.broker_unreachable &= held && someone_reaches;
        }
        out
    }

    /// When the next mark takes effect (to assign again then).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        self.since
            .values()
            .map(|t| *t + self.grace)
            .filter(|d| *d > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ServerInfo;

    const GRACE: Duration = Duration::from_secs(5);

    fn fleet(marked: &[&str], all: &[&str]) -> Servers {
        all.iter()
            .filter_map(|id| ServerId::new(*id).ok())
            .map(|id| {
                let mut s = ServerInfo::at_host(id.clone(), "h:1");
                s.broker_unreachable = marked.contains(&id.as_str());
                (id, s)
            })
            .collect()
    }

    fn marked(s: &Servers) -> Vec<&str> {
        s.values()
            .filter(|s| s.broker_unreachable)
            .map(|s| s.server_id.as_str())
            .collect()
    }

    #[test]
    fn one_server_cut_off_counts_after_the_grace() {
        let all = ["a", "b", "c"];
        let mut g = BrokerGrace::new(GRACE);
        let t = Instant::now();
        let s = fleet(&["a"], &all);
        assert!(marked(&g.members(&s, t)).is_empty());
        assert_eq!(g.deadline(t), Some(t + GRACE));
        assert!(marked(&g.members(&s, t + GRACE / 2)).is_empty());
        assert_eq!(marked(&g.members(&s, t + GRACE)), vec!["a"]);
        // It answers again: its mark is forgotten at once.
        let back = fleet(&[], &all);
        assert!(marked(&g.members(&back, t + GRACE * 2)).is_empty());
        assert_eq!(g.deadline(t + GRACE * 2), None);
    }

    #[test]
    fn a_broker_down_for_everyone_moves_nothing() {
        let all = ["a", "b"];
        let mut g = BrokerGrace::new(GRACE);
        let t = Instant::now();
        g.members(&fleet(&["a"], &all), t);
        // b notices two seconds later, before a's grace ends.
        let both = fleet(&["a", "b"], &all);
        g.members(&both, t + Duration::from_secs(2));
        assert!(marked(&g.members(&both, t + GRACE)).is_empty());
        assert!(marked(&g.members(&both, t + GRACE * 3)).is_empty());
    }
}
