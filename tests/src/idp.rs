//! A stand-in identity provider for token tests: a JWKS served over HTTP on
//! loopback whose keys, availability and request count the test controls
//! (the signing keys are made at test time with `switchboard_client::keygen`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jsonwebtoken::jwk::JwkSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct Served {
    set: RwLock<JwkSet>,
    hits: AtomicUsize,
    down: AtomicBool,
}

pub struct Provider {
    /// The `iss` its tokens carry.
    pub issuer: String,
    jwks_url: String,
    served: Arc<Served>,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    /// Serves an empty key set until [`Provider::publish`].
    pub async fn start(realm: &str) -> anyhow::Result<Self> {
        let served = Arc::new(Served::default());
        let app = axum::Router::new()
            .route("/realms/{realm}/certs", axum::routing::get(jwks))
            .with_state(served.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base = format!("http://{}/realms/{realm}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            jwks_url: format!("{base}/certs"),
            issuer: base,
            served,
            task,
        })
    }

    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// Replaces the key set the JWKS URL answers with.
    pub fn publish(&self, set: JwkSet) {
        if let Ok(mut s) = self.served.set.write() {
            *s = set;
        }
    }

    /// Requests the JWKS URL has had (answered or not).
    pub fn hits(&self) -> usize {
        self.served.hits.load(Ordering::SeqCst)
    }

    /// While down, the JWKS URL answers 503.
    pub fn set_down(&self, down: bool) {
        self.served.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks(State(served): State<Arc<Served>>) -> axum::response::Response {
    served.hits.fetch_add(1, Ordering::SeqCst);
    if served.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let set = served.set.read().map(|s| s.clone()).unwrap_or_default();
    axum::Json(set).into_response()
}
