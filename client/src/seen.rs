//! A bounded memory of delivered msg_ids: duplicates after a resume or a
//! hand-off are dropped, and memory stays flat.

use protocol::MsgId;
use std::collections::{HashSet, VecDeque};

pub struct Seen {
    set: HashSet<MsgId>,
    order: VecDeque<MsgId>,
    cap: usize,
}

impl Seen {
    pub fn new(cap: usize) -> Self {
        // Grows with use up to `cap`: a process holding many clients (a
        // gateway, a load generator) pays for the ids each has seen, not for
        // the bound.
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// True the first time `id` is seen.
    pub fn insert(&mut self, id: MsgId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_ids_only() {
        let id = |n: u128| MsgId(uuid::Uuid::from_u128(n));
        let mut s = Seen::new(2);
        assert!(s.insert(id(1)));
        assert!(!s.insert(id(1)));
        assert!(s.insert(id(2)));
        assert!(s.insert(id(3)));
        assert!(s.insert(id(1)), "evicted ids are forgotten");
        assert!(!s.insert(id(3)));
    }
}
