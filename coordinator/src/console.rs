//! The operator console (docs/operations.md, "Console"): a page at
//! `/console/` that draws the partition map and what every server and
//! persister says of itself, a user lookup, and one action — drain a
//! server — behind `SWITCHBOARD_ADMIN_KEY`. With no admin key configured
//! the console is read-only and open (it shows what `/v1/assignment` and
//! the services' `/metrics` already show); with one, every console call
//! needs it.

use crate::http::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::console::{Overview, PersisterView, ServerStats, ServerView, UserView};
use protocol::{partition_for, ErrorCode, ServerInfo, UserId};
use service::http::ApiError;
use service::keys::Keys;
use service::prom;
use service::secret::Secret;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the console waits for a service's own endpoints.
const ASK: Duration = Duration::from_secs(1);

/// What the console needs beyond the map.
#[derive(Clone)]
pub struct Console {
    pub admin: std::sync::Arc<Keys>,
    pub admin_key: Option<Secret>,
    /// Persisters' base URLs (`SWITCHBOARD_PERSISTER_URLS`).
    pub persisters: Vec<String>,
    /// An API key of the servers, for the user lookup's presence.
    pub api_key: Option<Secret>,
    pub http: reqwest::Client,
}

impl Console {
    pub fn new(
        admin_key: Option<Secret>,
        persisters: Vec<String>,
        api_key: Option<Secret>,
    ) -> Self {
        // Empty (an unset compose variable) means none.
        let set = |k: Option<Secret>| k.filter(|k| !k.expose().trim().is_empty());
        let (admin_key, api_key) = (set(admin_key), set(api_key));
        let persisters = persisters
            .into_iter()
            .filter(|u| !u.trim().is_empty())
            .collect();
        Self {
            admin: std::sync::Arc::new(Keys::new(admin_key.iter().map(Secret::expose))),
            admin_key,
            persisters,
            api_key,
            http: reqwest::Client::builder()
                .timeout(ASK)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Reads need the admin key only when one is configured.
    fn may_read(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.admin.is_empty() {
            return Ok(());
        }
        self.may_act(headers)
    }

    fn may_act(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.admin.is_empty() {
            let message = "no SWITCHBOARD_ADMIN_KEY is configured: the console is read-only";
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                message,
            ));
        }
        let header = headers.get("authorization").and_then(|h| h.to_str().ok());
        self.admin
            .check_header(header)
            .map_err(|e| ApiError::unauthorized(format!("admin key: {e}")))
    }
}

pub fn router() -> Router<std::sync::Arc<AppState>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { Html(include_str!("console.html")) }),
        )
        .route("/console/api/overview", get(overview))
        .route("/console/api/users/{user}", get(user))
        .route("/console/api/servers/{server}/drain", post(drain))
}

fn current(s: &AppState) -> Result<std::sync::Arc<protocol::Assignment>, ApiError> {
    s.assignment
        .borrow()
        .clone()
        .ok_or_else(|| ApiError::unavailable("no assignment published yet"))
}

async fn overview(
    State(s): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Overview>, ApiError> {
    s.console.may_read(&headers)?;
    let a = current(&s)?;
    let servers = futures_util::future::join_all(a.servers.values().map(|info| {
        let partitions = a.partitions_of(&info.server_id);
        server_view(&s.console.http, info, partitions)
    }))
    .await;
    let persisters = futures_util::future::join_all(
        s.console
            .persisters
            .iter()
            .map(|u| persister_view(&s.console.http, u)),
    )
    .await;
    let owners = (0..a.partitions)
        .map(|p| a.owner(p).map(|o| o.server_id.to_string()))
        .collect();
    Ok(Json(Overview {
        epoch: a.epoch,
        partitions: a.partitions,
        owners,
        servers,
        persisters,
        can_drain: !s.console.admin.is_empty(),
        at_ms: now_ms(),
    }))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn get_text(http: &reqwest::Client, url: &str) -> Option<(bool, String)> {
    let r = http.get(url).send().await.ok()?;
    let ok = r.status().is_success();
    Some((ok, r.text().await.ok()?))
}

async fn server_view(
    http: &reqwest::Client,
    info: &ServerInfo,
    partitions: Vec<u32>,
) -> ServerView {
    let base = info.http_url.trim_end_matches('/');
    let (metrics_url, ready_url) = (format!("{base}/metrics"), format!("{base}/readyz"));
    let (metrics, ready) = tokio::join!(get_text(http, &metrics_url), get_text(http, &ready_url));
    let stats = metrics.filter(|(ok, _)| *ok).map(|(_, text)| {
        let v = |name: &str| prom::value(&text, name).unwrap_or(0.0);
        ServerStats {
            sessions: v("switchboard_server_connections"),
            channel_subscriptions: v("switchboard_server_channel_subscriptions"),
            channels: v("switchboard_server_channels"),
            deliveries_total: v("switchboard_server_deliveries_total"),
            channel_deliveries_total: v("switchboard_server_channel_deliveries_total"),
            sends_total: v("switchboard_server_sends_total"),
            consumer_lag: prom::sum(&text, "switchboard_server_consumer_lag"),
            produce_in_flight: v("switchboard_server_produce_in_flight"),
        }
    });
    ServerView {
        server_id: info.server_id.to_string(),
        http_url: info.http_url.clone(),
        draining: info.draining,
        broker_unreachable: info.broker_unreachable,
        partitions,
        ready: ready.map(|(ok, _)| ok),
        stats,
    }
}

async fn persister_view(http: &reqwest::Client, url: &str) -> PersisterView {
    let base = url.trim_end_matches('/');
    let text = get_text(http, &format!("{base}/metrics")).await;
    let lag: BTreeMap<u32, f64> = text
        .as_ref()
        .filter(|(ok, _)| *ok)
        .map(|(_, t)| {
            prom::samples(t)
                .filter(|s| s.name == "switchboard_persister_lag")
                .filter_map(|s| Some((s.label("partition")?.parse().ok()?, s.value)))
                .collect()
        })
        .unwrap_or_default();
    PersisterView {
        url: base.to_owned(),
        up: text.is_some_and(|(ok, _)| ok),
        lag,
    }
}

async fn user(
    State(s): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    s.console.may_read(&headers)?;
    let user = UserId::new(user).map_err(|e| ApiError::invalid(e.to_string()))?;
    let a = current(&s)?;
    let partition = partition_for(user.as_str(), a.partitions);
    let owner = a.owner(partition).cloned();
    let mut view = UserView {
        user_id: user.to_string(),
        partition,
        server_id: owner.as_ref().map(|o| o.server_id.to_string()),
        epoch: a.epoch,
        presence: None,
        presence_error: None,
    };
    match (&s.console.api_key, owner) {
        (Some(key), Some(o)) => match presence(&s.console.http, &o.http_url, key, &user).await {
            Ok(p) => view.presence = Some(p),
            Err(e) => view.presence_error = Some(e),
        },
        (None, _) => {
            view.presence_error = Some("no SWITCHBOARD_CONSOLE_API_KEY: presence not asked".into())
        }
        (_, None) => view.presence_error = Some("the partition has no owner".into()),
    }
    Ok(Json(view))
}

async fn presence(
    http: &reqwest::Client,
    base: &str,
    key: &Secret,
    user: &UserId,
) -> Result<protocol::presence::UserPresence, String> {
    let url = format!("{}/v1/presence", base.trim_end_matches('/'));
    let r = http
        .get(url)
        .query(&[("users", user.as_str())])
        .bearer_auth(key.expose())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let state: protocol::presence::PresenceState = r
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    state
        .users
        .into_iter()
        .next()
        .ok_or_else(|| "no answer for the user".into())
}

/// Asks the server to drain itself (`POST /admin/drain` with the same key).
async fn drain(
    State(s): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    Path(server): Path<String>,
) -> Result<Response, ApiError> {
    s.console.may_act(&headers)?;
    let a = current(&s)?;
    let info = a
        .servers
        .values()
        .find(|i| i.server_id.as_str() == server)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("no server {server} in the map"),
            )
        })?;
    let key = s
        .console
        .admin_key
        .as_ref()
        .map(Secret::expose)
        .unwrap_or_default();
    let url = format!("{}/admin/drain", info.http_url.trim_end_matches('/'));
    let r = s
        .console
        .http
        .post(&url)
        .bearer_auth(key)
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("{url}: {e}")))?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ApiError::unavailable(format!(
            "{server} refused the drain ({status}): {body}"
        )));
    }
    tracing::info!(%server, "drain asked from the console");
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
