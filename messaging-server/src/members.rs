//! Conversation members, cached for a few seconds in front of PostgreSQL:
//! every group send needs them. Direct conversations need no lookup.

use protocol::{ConversationId, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Store, StoreError};

/// How long a member list is trusted; changes made here invalidate at once.
const MEMBER_TTL: Duration = Duration::from_secs(5);

pub type Members = Arc<Vec<UserId>>;

type Entry = (Option<Members>, Instant);

pub struct MemberCache {
    store: Store,
    cache: Mutex<HashMap<ConversationId, Entry>>,
    max_entries: usize,
}

impl MemberCache {
    pub fn new(store: Store, max_entries: usize) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(2),
        }
    }

    /// The database behind the cache, for everything that is not members.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConversationId, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn invalidate(&self, id: &ConversationId) {
        self.lock().remove(id);
    }

    /// Members of a conversation; `None` if it does not exist.
    pub async fn members(&self, id: &ConversationId) -> Result<Option<Members>, StoreError> {
        if let Some((a, b)) = id.direct_members() {
            return Ok(Some(Arc::new(vec![a, b])));
        }
        let hit = self
            .lock()
            .get(id)
            .filter(|(_, at)| at.elapsed() < MEMBER_TTL)
            .map(|(m, _)| m.clone());
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let members = self.store.members(id).await?.map(Arc::new);
        let mut cache = self.lock();
        if cache.len() >= self.max_entries {
            make_room(&mut cache, self.max_entries);
        }
        cache.insert(id.clone(), (members.clone(), Instant::now()));
        Ok(members)
    }
}

/// Drops expired entries and, if that is not enough, the older half, so the
/// cost of evicting stays amortised O(log n) per insert.
fn make_room(cache: &mut HashMap<ConversationId, Entry>, max: usize) {
    cache.retain(|_, (_, at)| at.elapsed() < MEMBER_TTL);
    if cache.len() < max {
        return;
    }
    let mut ages: Vec<Instant> = cache.values().map(|(_, at)| *at).collect();
    let mid = ages.len() / 2;
    let (_, median, _) = ages.select_nth_unstable(mid);
    let median = *median;
    cache.retain(|_, (_, at)| *at > median);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_made_by_age() {
        let mut cache = HashMap::new();
        let now = Instant::now();
        for i in 0..10u64 {
            let id = ConversationId::new(format!("c{i}")).unwrap();
            cache.insert(id, (None, now + Duration::from_millis(i)));
        }
        make_room(&mut cache, 10);
        assert!(cache.len() <= 5, "{}", cache.len());
        assert!(cache.contains_key("c9") && !cache.contains_key("c0"));
    }
}
