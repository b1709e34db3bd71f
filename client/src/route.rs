//! Where the next session goes. After a failure the server the device could
//! not reach (or lost) is reported on the next lookup: the coordinator checks
//! it and answers with the map that moved the user elsewhere, so a device
//! follows a failover as soon as the map changes instead of backing off
//! blind (docs/protocol.md, "Failover").

use crate::http::Api;
use protocol::frames::Redirect;
use protocol::{Route, ServerId};
use rand::Rng;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a lookup that reports a server may wait for the map to move
/// the user: a few lease TTLs (the coordinator caps it).
const REPORT_WAIT: Duration = Duration::from_secs(20);

/// A server to try, and the epoch of the map that named it (said in `hello`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub server_id: ServerId,
    pub ws_url: String,
    pub epoch: u64,
}

impl From<Route> for Endpoint {
    fn from(r: Route) -> Self {
        Self {
            server_id: r.server_id,
            ws_url: r.ws_url,
            epoch: r.epoch,
        }
    }
}

impl From<Redirect> for Endpoint {
    fn from(r: Redirect) -> Self {
        Self {
            server_id: r.server_id,
            ws_url: r.ws_url,
            epoch: r.epoch,
        }
    }
}

/// The lookups of one connection task, with its backoff.
pub(crate) struct Routing {
    api: Api,
    user: String,
    /// The server the last session failed on, reported by the next lookup.
    suspect: Option<ServerId>,
    /// The last lookup failed: pause before the next.
    pause_first: bool,
    delay: Duration,
    max: Duration,
}

/// The first pause after a failure; it doubles up to the client's maximum.
const FIRST_DELAY: Duration = Duration::from_millis(100);

impl Routing {
    pub fn new(api: Api, user: &str, max: Duration) -> Self {
        Self {
            api,
            user: user.to_owned(),
            suspect: None,
            pause_first: false,
            delay: FIRST_DELAY,
            max,
        }
    }

    /// The next server to try, or `None` when no coordinator answered.
    pub async fn lookup(&mut self, cancel: &CancellationToken) -> Option<Endpoint> {
        if std::mem::take(&mut self.pause_first) {
            self.pause(cancel).await;
        }
        let Some(gone) = self.suspect.take() else {
            return self.api.route(&self.user).await.ok().map(Endpoint::from);
        };
        let route = self
            .api
            .route_avoiding(&self.user, &gone, REPORT_WAIT)
            .await;
        match &route {
            // Moved: go at once. The same server again (it answered its
            // check, or the map did not move in time): back off first.
            Ok(r) if r.server_id == gone => self.pause(cancel).await,
            Ok(_) => {}
            // No coordinator answered: report it again next time.
            Err(_) => self.suspect = Some(gone),
        }
        route.ok().map(Endpoint::from)
    }

    /// A session on `target` (or the lookup, when `None`) failed;
    /// `welcomed` says whether it had got as far as a welcome.
    pub fn failed(&mut self, target: Option<&Endpoint>, welcomed: bool) {
        if welcomed {
            self.delay = FIRST_DELAY;
        }
        match target {
            Some(t) => self.suspect = Some(t.server_id.clone()),
            None => self.pause_first = true,
        }
    }

    /// A redirect or a close that asks for a new lookup: no backoff.
    pub fn moved(&mut self) {
        self.delay = FIRST_DELAY;
        self.suspect = None;
        self.pause_first = false;
    }

    /// Sleeps the current delay (jittered), then doubles it.
    async fn pause(&mut self, cancel: &CancellationToken) {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        sleep_jittered(wait, cancel).await;
    }
}

/// Sleeps `base` plus up to 50% jitter, so devices do not come back in step.
pub(crate) async fn sleep_jittered(base: Duration, cancel: &CancellationToken) {
    let jitter = rand::rng().random_range(0.0..0.5);
    tokio::select! {
        _ = tokio::time::sleep(base.mul_f64(1.0 + jitter)) => {}
        _ = cancel.cancelled() => {}
    }
}
