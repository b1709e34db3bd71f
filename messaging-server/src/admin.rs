//! `POST /admin/drain` (docs/operations.md, "Console"): the operator's
//! drain, behind `SWITCHBOARD_ADMIN_KEY`. The server hands its partitions
//! off and redirects its clients as on shutdown, then stays up owning
//! nothing (draining) until it is stopped.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use protocol::ErrorCode;
use service::http::ApiError;
use std::sync::Arc;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/admin/drain", post(drain))
}

/// The admin key in `Authorization: Bearer`, or why not.
pub fn authorize(
    keys: &crate::auth::ApiKeys,
    configured: bool,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if !configured {
        let message = "no SWITCHBOARD_ADMIN_KEY is configured: admin actions are off";
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            message,
        ));
    }
    let header = headers.get("authorization").and_then(|h| h.to_str().ok());
    keys.check_header(header)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

async fn drain(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s.admin_keys, !s.admin_keys.is_empty(), &headers)?;
    let already = s.is_draining();
    if !already {
        tracing::info!(server = %s.info.server_id, "drain asked over /admin/drain");
        let state = s.clone();
        tokio::spawn(async move { crate::hand_off(&state).await });
    }
    let body =
        serde_json::json!({"server_id": s.info.server_id, "draining": true, "already": already});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
