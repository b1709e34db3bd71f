//! HTTP API, served by every replica from the watch-maintained cache.

use crate::metrics::Metrics;
use crate::probe::{Deaths, Verdict};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use protocol::api::{RouteQuery, Status};
use protocol::{partition_for, Assignment, ServerId, ServerInfo, UserId};
use serde::Deserialize;
use service::etcd::AssignmentRx;
use service::http::{metrics_response, not_found, rejection, ApiError};
use std::sync::Arc;
use std::time::Duration;

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct AppState {
    pub assignment: AssignmentRx,
    pub deaths: Deaths,
    /// Cap on a route lookup's `wait_ms`.
    pub route_wait_max: Duration,
    pub metrics: Metrics,
    pub registry: Arc<Registry>,
    pub console: crate::console::Console,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/route", get(route))
        .route("/v1/assignment", get(assignment))
        .route("/healthz", get(|| async { Json(Status::ok()) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::console::router())
        .fallback(not_found)
        .layer(tower_http::cors::CorsLayer::permissive())
        // Shared, not cloned per request: the state holds etcd clients,
        // whose clone (a dozen gRPC channels) showed in a lookup herd's profile.
        .with_state(Arc::new(state))
}

/// With `unreachable` naming the user's current owner, the owner is checked
/// first (`probe.rs`); unless it answers, the answer waits (up to `wait_ms`)
/// for a map in which another server owns the user's partition.
async fn route(
    State(s): State<Arc<AppState>>,
    q: Result<Query<RouteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| rejection(e.status(), e.body_text()))?;
    let user = UserId::new(q.user_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    s.metrics.route_requests.inc();
    if let Some(gone) = &q.unreachable {
        let a = current(&s)?;
        let owner = a
            .owner(partition_for(user.as_str(), a.partitions))
            .filter(|o| &o.server_id == gone)
            .cloned();
        if let Some(owner) = owner {
            let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(s.route_wait_max);
            await_move(&s, &user, &owner, wait).await;
        }
    }
    let a = current(&s)?;
    let partition = partition_for(user.as_str(), a.partitions);
    let owner = a
        .owner(partition)
        .ok_or_else(|| ApiError::unavailable(format!("partition {partition} has no owner")))?;
    Ok(Json(protocol::Route {
        user_id: user,
        partition,
        server_id: owner.server_id.clone(),
        ws_url: owner.ws_url.clone(),
        epoch: a.epoch,
    })
    .into_response())
}

/// How often a waiting lookup checks the server again (the check itself is
/// shared by every lookup of that second): a process being torn down may
/// still hold its port open at the first check and refuse at the next.
const RECHECK: Duration = Duration::from_secs(1);

/// Waits (up to `wait`) until a map gives `user`'s partition to a server
/// other than `owner`, unless the first check finds `owner` alive or cannot
/// be made. After an unresponsive first check the wait also ends when
/// `owner`'s lease, as etcd counted it then, should have ended — if etcd
/// still holds its registration then: the lease was renewed, so the server
/// is slow, not gone. A registration gone by then means a move is coming
/// (the leader's debounce and a new map are still ahead): the lookup waits
/// for it, or it would send the device straight back to the silent server.
/// Later checks only look for a death (a dead verdict revokes the lease, and
/// the map moves): a server that was unresponsive and answers again was
/// slow, and sending its devices straight back would feed the overload — in
/// a reconnect herd of 36,000 devices that made every second's recheck a
/// retry storm on the survivors.
async fn await_move(s: &AppState, user: &UserId, owner: &ServerInfo, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = s.assignment.clone();
    let moved = |a: &Option<Arc<Assignment>>| !owned_by(a, user, &owner.server_id);
    let first = s.deaths.check(owner).await;
    let mut lease_end = match first.verdict {
        Verdict::Alive | Verdict::Unchecked => return,
        Verdict::Dead => None,
        Verdict::Unresponsive => first.lease_ends.map(tokio::time::Instant::from_std),
    };
    loop {
        let now = tokio::time::Instant::now();
        if lease_end.is_some_and(|end| end <= now) {
            match at_lease_end(s.deaths.lease_left(owner).await) {
                LeaseAtEnd::Renewed => return,
                LeaseAtEnd::Ending => lease_end = Some(now + RECHECK),
                LeaseAtEnd::Gone => lease_end = None,
            }
        }
        let until = lease_end.map_or(deadline, |end| end.min(deadline));
        let left = until.saturating_duration_since(now);
        if left.is_zero() {
            return;
        }
        if let Ok(_changed_or_closed) =
            tokio::time::timeout(left.min(RECHECK), rx.wait_for(moved)).await
        {
            return;
        }
        s.deaths.check(owner).await;
    }
}

/// What etcd says of a silent server's lease once it should have ended.
#[derive(Debug, PartialEq, Eq)]
enum LeaseAtEnd {
    /// Renewed since the first check: the server is slow, not gone.
    Renewed,
    /// Past its end but not yet removed (etcd reports 0 s left): the move
    /// is still coming — answering now sent the device back to the silent
    /// server.
    Ending,
    /// No registration: the move is coming.
    Gone,
}

/// Reads etcd's remaining TTL (whole seconds) at the moment the lease, as
/// counted at the first check plus a second, should have ended: had it not
/// been renewed it would be at most 0 now.
fn at_lease_end(left: Option<u64>) -> LeaseAtEnd {
    match left {
        Some(0) => LeaseAtEnd::Ending,
        Some(_) => LeaseAtEnd::Renewed,
        None => LeaseAtEnd::Gone,
    }
}

fn current(s: &AppState) -> Result<Arc<Assignment>, ApiError> {
    s.assignment
        .borrow()
        .clone()
        .ok_or_else(|| ApiError::unavailable("no assignment published yet"))
}

/// Whether `a` (still) gives `user`'s partition to `server`, or to nobody.
fn owned_by(a: &Option<Arc<Assignment>>, user: &UserId, server: &ServerId) -> bool {
    let Some(a) = a else { return true };
    a.owner(partition_for(user.as_str(), a.partitions))
        .is_none_or(|o| &o.server_id == server)
}

#[derive(Deserialize)]
struct AssignmentQuery {
    after_epoch: Option<u64>,
    wait_ms: Option<u64>,
}

/// With `after_epoch`, waits (up to `wait_ms`) for a newer epoch; on time-out
/// it answers with the current map, whose epoch tells the client nothing changed.
async fn assignment(
    State(s): State<Arc<AppState>>,
    q: Result<Query<AssignmentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| rejection(e.status(), e.body_text()))?;
    let mut rx = s.assignment.clone();
    if let Some(after) = q.after_epoch {
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000)).min(MAX_WAIT);
        let newer =
            |a: &Option<Arc<protocol::Assignment>>| a.as_ref().is_some_and(|a| a.epoch > after);
        let _ = tokio::time::timeout(wait, rx.wait_for(newer)).await;
    }
    let a = rx
        .borrow()
        .clone()
        .ok_or_else(|| ApiError::unavailable("no assignment published yet"))?;
    Ok(Json(&*a).into_response())
}

async fn readyz(State(s): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    match s.assignment.borrow().as_ref() {
        Some(a) => Ok(Json(Status {
            epoch: Some(a.epoch),
            ..Status::ready()
        })),
        None => Err(ApiError::unavailable("no assignment yet")),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    metrics_response(&s.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_past_its_end_is_ending_not_renewed() {
        assert_eq!(at_lease_end(Some(0)), LeaseAtEnd::Ending);
        assert_eq!(at_lease_end(Some(1)), LeaseAtEnd::Renewed);
        assert_eq!(at_lease_end(Some(5)), LeaseAtEnd::Renewed);
        assert_eq!(at_lease_end(None), LeaseAtEnd::Gone);
    }
}
