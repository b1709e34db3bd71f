//! Schema migrations (`migrations/`), applied by every service that uses
//! PostgreSQL. sqlx holds an advisory lock while migrating, so replicas that
//! start together are safe.

use crate::Store;
use service::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

impl Store {
    /// Applies the migrations, retrying while the database is unreachable.
    /// Returns false if cancelled first.
    pub async fn migrate(&self, cancel: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match sqlx::migrate!("../migrations").run(&self.pool).await {
                Ok(()) => return true,
                Err(e) => warn!(error = %e, "database not ready for migrations, retrying"),
            }
            if !backoff.wait(cancel).await {
                return false;
            }
        }
    }
}
