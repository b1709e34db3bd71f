//! The assignment function: (previous owners, live servers, P) → new owners.
//! Pure and deterministic, so every property below is checked without etcd.
//!
//! Quotas are proportional to weight; the fractional remainders go first to
//! the servers with the largest fraction and, on ties, to those that already
//! own the most partitions, so that a rebalance keeps as many owners as it can.

use protocol::{ServerId, ServerInfo};
use std::collections::BTreeMap;

pub type Owners = Vec<Option<ServerId>>;

/// Servers that may own partitions: not draining and reaching the broker.
/// When none reaches the broker, moving partitions helps nobody: then every
/// server that is not draining stays eligible, as if all reached it.
fn eligible(servers: &BTreeMap<ServerId, ServerInfo>) -> Vec<(&ServerId, u64)> {
    let pick = |reaching_only: bool| -> Vec<(&ServerId, u64)> {
        servers
            .values()
            .filter(|s| !(s.draining || reaching_only && s.broker_unreachable))
            .map(|s| (&s.server_id, u64::from(s.weight.max(1))))
            .collect()
    };
    let reaching = pick(true);
    if reaching.is_empty() {
        pick(false)
    } else {
        reaching
    }
}

fn quotas<'a>(
    eligible: &[(&'a ServerId, u64)],
    held: &BTreeMap<&ServerId, usize>,
    partitions: u32,
) -> BTreeMap<&'a ServerId, usize> {
    let p = u64::from(partitions);
    let total: u64 = eligible.iter().map(|(_, w)| w).sum();
    let mut quota: BTreeMap<&ServerId, usize> = BTreeMap::new();
    let mut order = Vec::with_capacity(eligible.len());
    let mut given = 0u64;
    for (id, w) in eligible {
        let floor = p * w / total;
        given += floor;
        quota.insert(*id, floor as usize);
        order.push((p * w % total, held.get(id).copied().unwrap_or(0), *id));
    }
    // Largest remainder first, then the current holder, then by id.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(b.2)));
    for (_, _, id) in order.into_iter().take((p - given) as usize) {
        *quota.entry(id).or_default() += 1;
    }
    quota
}

/// Every partition gets an owner whenever a live non-draining server exists.
pub fn assign(
    prev: &[Option<ServerId>],
    servers: &BTreeMap<ServerId, ServerInfo>,
    partitions: u32,
) -> Owners {
    let eligible = eligible(servers);
    if eligible.is_empty() {
        return vec![None; partitions as usize];
    }
    let is_eligible = |id: &ServerId| eligible.iter().any(|(e, _)| *e == id);
    let mut held: BTreeMap<&ServerId, usize> = BTreeMap::new();
    for id in prev.iter().take(partitions as usize).flatten() {
        if is_eligible(id) {
            *held.entry(id).or_default() += 1;
        }
    }
    let quota = quotas(&eligible, &held, partitions);
    let mut count: BTreeMap<&ServerId, usize> = BTreeMap::new();
    let mut owners: Owners = vec![None; partitions as usize];
    for (p, slot) in owners.iter_mut().enumerate() {
        let Some(Some(id)) = prev.get(p) else {
            continue;
        };
        let have = count.entry(id).or_default();
        if quota.get(id).is_some_and(|q| *have < *q) {
            *have += 1;
            *slot = Some(id.clone());
        }
    }
    for slot in owners.iter_mut().filter(|s| s.is_none()) {
        let best = quota
            .iter()
            .map(|(id, q)| (q.saturating_sub(count.get(*id).copied().unwrap_or(0)), *id))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
        if let Some((_, id)) = best {
            *count.entry(id).or_default() += 1;
            *slot = Some(id.clone());
        }
    }
    owners
}

#[cfg(test)]
mod tests;
