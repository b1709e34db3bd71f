//! An issuer's JWKS, fetched and cached: refreshed on a timer, refetched
//! early for an unknown `kid` at most once per interval (forged `kid`s cannot
//! make a storm), and kept when the provider is down.

use super::fetch::JwksClient;
use super::keys::{from_jwk_set, Allowed, VerifyKey};
use super::AuthMetrics;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A JWKS document larger than this is refused (a real one is a few KB).
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] super::fetch::GetError),
    #[error("not a JWKS document: {0}")]
    Document(#[from] super::keys::KeyError),
}

/// At most one fetch per `min` interval (pure, for tests).
#[derive(Debug)]
pub struct Limiter {
    min: Duration,
    last: Option<Instant>,
}

impl Limiter {
    pub fn new(min: Duration) -> Self {
        Self { min, last: None }
    }

    /// Whether a fetch may start at `now`; if so, it counts from `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let free = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.min);
        if free {
            self.last = Some(now);
        }
        free
    }
}

pub struct RemoteKeys {
    issuer: String,
    url: String,
    allowed: Allowed,
    http: JwksClient,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    limiter: Mutex<Limiter>,
    /// Held for the length of a fetch: callers with an unknown `kid` wait
    /// for the fetch under way instead of starting another.
    fetching: tokio::sync::Mutex<()>,
    metrics: AuthMetrics,
}

impl RemoteKeys {
    pub fn new(
        issuer: &str,
        url: &str,
        allowed: Allowed,
        min_refetch: Duration,
        http: JwksClient,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            allowed,
            http,
            keys: RwLock::new(Arc::new(Vec::new())),
            limiter: Mutex::new(Limiter::new(min_refetch)),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The keys of the last successful fetch.
    pub fn current(&self) -> Arc<Vec<VerifyKey>> {
        self.keys
            .read()
            .map_or_else(|p| p.into_inner().clone(), |k| k.clone())
    }

    /// The keys after a refetch for a `kid` they lack, if the interval
    /// allows one; otherwise the keys as they are.
    pub async fn refetch_for(&self, kid: &str) -> Arc<Vec<VerifyKey>> {
        let _fetching = self.fetching.lock().await;
        let keys = self.current();
        if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) || !self.take() {
            return keys;
        }
        let _ = self.fetch_locked().await;
        self.current()
    }

    /// Fetches now (the refresh timer); counts against the refetch interval.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let _fetching = self.fetching.lock().await;
        self.take();
        self.fetch_locked().await
    }

    fn take(&self) -> bool {
        self.limiter
            .lock()
            .is_ok_and(|mut l| l.try_take(Instant::now()))
    }

    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        let result = self.download().await.and_then(|doc| {
            let (keys, skipped) = from_jwk_set(&doc, &self.allowed)?;
            Ok((keys, skipped))
        });
        self.metrics.fetched(&self.issuer, result.is_ok());
        match result {
            Ok((keys, skipped)) => {
                for s in &skipped {
                    warn!(issuer = %self.issuer, key = %s, "JWKS key left out");
                }
                let n = keys.len();
                self.metrics.keys(&self.issuer, n);
                if let Ok(mut current) = self.keys.write() {
                    *current = Arc::new(keys);
                }
                Ok(n)
            }
            Err(e) => {
                warn!(issuer = %self.issuer, url = %self.url, error = %e, "JWKS fetch failed; the cached keys stay");
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<Vec<u8>, FetchError> {
        Ok(self
            .http
            .get(&self.url, MAX_DOCUMENT, FETCH_TIMEOUT)
            .await?)
    }

    /// Fetches at once, then every `every` (sooner, backing off from one
    /// second, while no fetch has succeeded yet), until `shutdown`.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut loaded = false;
        let mut retry = Duration::from_secs(1);
        loop {
            let wait = match self.refresh().await {
                Ok(n) => {
                    if !loaded {
                        info!(issuer = %self.issuer, keys = n, "JWKS loaded");
                    }
                    loaded = true;
                    every
                }
                Err(_) if loaded => every,
                Err(_) => {
                    retry = (retry * 2).min(every);
                    retry / 2
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_lets_one_fetch_through_per_interval() {
        let start = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(30));
        assert!(l.try_take(start));
        for s in [0, 1, 29] {
            assert!(!l.try_take(start + Duration::from_secs(s)), "at {s}s");
        }
        assert!(l.try_take(start + Duration::from_secs(30)));
        assert!(!l.try_take(start + Duration::from_secs(59)));
        assert!(l.try_take(start + Duration::from_secs(61)));
    }
}
