//! The one owner of the PostgreSQL schema: the migrations in `migrations/`
//! and every statement the persister and the messaging server run, as typed
//! functions. Partitions are `u32` here as everywhere; the `int4` columns
//! are an encoding detail of this crate.

mod audit;
mod batch;
mod conversations;
mod messages;
mod migrate;
mod offsets;
mod sessions;

pub use audit::{Counts, StoredDelivery};
pub use batch::RowBatch;
pub use messages::StoredMessage;
pub use sessions::{EventBatch, OpenSession};

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Db(#[from] sqlx::Error),
    #[error("partition {0} does not fit the schema's int4 column")]
    Partition(u32),
    /// A stored row no longer reads as the value it was written from.
    #[error("unreadable row: {0}")]
    Row(String),
}

impl StoreError {
    /// No pooled connection came free in time: PostgreSQL answers, but
    /// every connection is taken (a herd waiting its turn, not an outage).
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Db(sqlx::Error::PoolTimedOut))
    }
}

/// A pool of PostgreSQL connections and the statements run over it.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects on first use, so a service starts while PostgreSQL is down.
    /// A statement waits at most `acquire_timeout` for a connection: while
    /// PostgreSQL is down, callers get an error that soon, never a hang.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    /// Connects now (tests and tools).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            pool: PgPool::connect(url).await?,
        })
    }
}

fn db_partition(partition: u32) -> Result<i32, StoreError> {
    i32::try_from(partition).map_err(|_| StoreError::Partition(partition))
}
