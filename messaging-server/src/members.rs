//! Conversation members, cached for a few seconds in front of PostgreSQL:
//! every group send needs them. Direct conversations need no lookup.

use protocol::{ConversationId, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Store, StoreError};

/// How long a member list is trusted; changes made here invalidate at once.
const MEMBER_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; past it the cache starts over.
const MAX_ENTRIES: usize = 100_000;

pub type Members = Arc<Vec<UserId>>;

type Entry = (Option<Members>, Instant);

pub struct MemberCache {
    store: Store,
    cache: Mutex<HashMap<ConversationId, Entry>>,
}

impl MemberCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
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
        if cache.len() >= MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(id.clone(), (members.clone(), Instant::now()));
        Ok(members)
    }
}
