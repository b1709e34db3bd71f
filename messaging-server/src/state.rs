use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::producer::Producers;
use crate::store::Store;
use crate::Config;
use prometheus_client::registry::Registry;
use protocol::runtime::etcd::AssignmentRx;
use protocol::{Assignment, ServerInfo};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Everything a session or handler needs, shared behind one `Arc`.
pub struct AppState {
    pub config: Config,
    pub info: ServerInfo,
    pub auth: Authenticator,
    pub store: Store,
    /// The Kafka producer, replaced by its supervisor after a fatal error.
    pub producer: Arc<Producers>,
    pub topic: String,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub assignment_rx: AssignmentRx,
    pub log_epoch: Arc<RwLock<String>>,
    /// True while our registration lease is alive.
    pub registered: watch::Sender<bool>,
    pub draining: AtomicBool,
    /// Ends sessions and background tasks once the drain is over.
    pub stop: CancellationToken,
}

impl AppState {
    pub fn assignment(&self) -> Option<Arc<Assignment>> {
        self.assignment_rx.borrow().clone()
    }

    pub fn log_epoch(&self) -> String {
        self.log_epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Serving means registered, not draining, holding a partition map and
    /// a working producer.
    pub fn is_ready(&self) -> bool {
        *self.registered.borrow()
            && !self.is_draining()
            && self.assignment().is_some()
            && self.producer.is_healthy()
    }
}
