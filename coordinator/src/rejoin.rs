//! A new leader's grace for servers the map names but etcd no longer lists.
//!
//! etcd counts lease time while it is stalled (a slow fsync, a paused VM), so
//! a stall longer than the lease TTL expires every registration and the
//! election lease at the same moment. The leader elected after the thaw would
//! read no servers at all and publish a map without owners, closing every
//! session in the cluster for the second or so the servers need to notice and
//! register again. Instead it keeps the servers of the map it inherited for up
//! to one lease TTL: each that registers again keeps its partitions (the map
//! does not change at all), and one that does not is removed when the grace
//! ends, as after any crash. A server that really died during the leadership
//! change is therefore moved at most one TTL later than otherwise.

use protocol::{Assignment, ServerId, ServerInfo};
use std::collections::BTreeMap;
use std::time::Instant;

pub type Servers = BTreeMap<ServerId, ServerInfo>;

#[derive(Debug)]
pub struct Rejoin {
    waiting: Servers,
    until: Instant,
}

impl Rejoin {
    /// The servers `map` names that are not `registered` (draining ones
    /// were leaving anyway), awaited until `until`.
    pub fn new(map: &Assignment, registered: &Servers, until: Instant) -> Self {
        let waiting = map
            .servers
            .iter()
            .filter(|(id, info)| !info.draining && !registered.contains_key(*id))
            .map(|(id, info)| (id.clone(), info.clone()))
            .collect();
        Self { waiting, until }
    }

    /// The membership to assign from at `now`: every registered server, plus
    /// the awaited ones while the grace lasts. A server that registered again
    /// is no longer awaited, so leaving later is an ordinary removal.
    pub fn members(&mut self, registered: &Servers, now: Instant) -> Servers {
        self.waiting.retain(|id, _| !registered.contains_key(id));
        if now >= self.until {
            self.waiting.clear();
        }
        let mut members = registered.clone();
        members.extend(self.waiting.iter().map(|(k, v)| (k.clone(), v.clone())));
        members
    }

    /// Servers still awaited.
    pub fn waiting(&self) -> impl Iterator<Item = &ServerId> {
        self.waiting.keys()
    }

    /// When the grace ends, while a server is still awaited.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.waiting.is_empty()).then_some(self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn servers(ids: &[&str]) -> Servers {
        ids.iter()
            .filter_map(|id| ServerId::new(*id).ok())
            .map(|id| (id.clone(), ServerInfo::at_host(id, "h:1")))
            .collect()
    }

    fn map_of(ids: &[&str]) -> Assignment {
        Assignment {
            servers: servers(ids),
            ..Assignment::empty(4)
        }
    }

    #[test]
    fn every_server_gone_after_a_stall_keeps_the_map_until_they_return() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut r = Rejoin::new(&map_of(&["a", "b"]), &Servers::new(), until);
        assert_eq!(r.deadline(), Some(until));
        assert_eq!(r.members(&Servers::new(), t0), servers(&["a", "b"]));
        // One is back: the other is still held.
        assert_eq!(r.members(&servers(&["a"]), t0), servers(&["a", "b"]));
        assert_eq!(r.waiting().count(), 1);
        // Both back: nothing awaited, no deadline to wake for.
        assert_eq!(r.members(&servers(&["a", "b"]), t0), servers(&["a", "b"]));
        assert_eq!(r.deadline(), None);
        // a leaves after returning: an ordinary removal, not held again.
        assert_eq!(r.members(&servers(&["b"]), t0), servers(&["b"]));
    }

    #[test]
    fn a_server_that_does_not_return_is_dropped_when_the_grace_ends() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(5);
        let mut r = Rejoin::new(&map_of(&["a", "b"]), &servers(&["a"]), until);
        assert_eq!(r.members(&servers(&["a"]), t0), servers(&["a", "b"]));
        assert_eq!(r.members(&servers(&["a"]), until), servers(&["a"]));
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn draining_servers_and_a_first_term_wait_for_nobody() {
        let mut map = map_of(&["a", "b"]);
        if let Some(b) = map.servers.values_mut().nth(1) {
            b.draining = true;
        }
        let r = Rejoin::new(&map, &servers(&["a"]), Instant::now());
        assert_eq!(r.waiting().count(), 0);
        let first = Rejoin::new(&Assignment::empty(4), &servers(&["a"]), Instant::now());
        assert_eq!(first.deadline(), None);
    }

    proptest! {
        /// Whatever registers, it is always a member; nothing outside the
        /// inherited map or the registrations ever is; after the grace the
        /// members are exactly the registered servers.
        #[test]
        fn members_are_the_registered_plus_the_awaited(
            inherited in proptest::collection::btree_set(0u8..8, 0..8),
            steps in proptest::collection::vec(proptest::collection::btree_set(0u8..8, 0..8), 1..6),
        ) {
            let name = |i: &u8| format!("s{i}");
            let names = |s: &std::collections::BTreeSet<u8>| s.iter().map(name).collect::<Vec<_>>();
            let inherited_names = names(&inherited);
            let refs: Vec<&str> = inherited_names.iter().map(String::as_str).collect();
            let t0 = Instant::now();
            let until = t0 + Duration::from_secs(1);
            let mut r = Rejoin::new(&map_of(&refs), &Servers::new(), until);
            for (i, step) in steps.iter().enumerate() {
                let reg_names = names(step);
                let reg = servers(&reg_names.iter().map(String::as_str).collect::<Vec<_>>());
                let now = t0 + Duration::from_millis(300 * i as u64);
                let m = r.members(&reg, now);
                prop_assert!(reg.keys().all(|k| m.contains_key(k)));
                prop_assert!(m.keys().all(|k| reg.contains_key(k) || inherited_names.contains(&k.to_string())));
                if now >= until {
                    prop_assert_eq!(&m, &reg);
                }
            }
        }
    }
}
