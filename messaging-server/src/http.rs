//! HTTP: the WebSocket upgrade, sends over HTTP, conversations, history.

use crate::state::AppState;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use protocol::api::{
    ChannelStats, Conversation, Conversations, HistoryMessage, HistoryPage, Status,
};
use protocol::presence::PresenceState;
use protocol::{ChannelName, ConversationId, DeviceId, ErrorCode, FrameError, UserId};
use serde::Deserialize;
use service::http::{metrics_response, not_found, ApiError};
use std::sync::Arc;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/v1/messages", post(post_message))
        .route("/v1/publish", post(publish_one))
        .route("/v1/channels/{channel}/stats", get(channel_stats))
        .route("/v1/presence", get(presence))
        .route("/v1/publish/batch", post(publish_batch))
        .route(
            "/v1/conversations",
            post(create_conversation).get(my_conversations),
        )
        .route(
            "/v1/conversations/{id}/members/{user}",
            put(add_member).delete(remove_member),
        )
        .route("/v1/conversations/{id}/messages", get(history))
        .route("/healthz", get(|| async { Json(Status::ok()) }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): St| async move { metrics_response(&s.registry) }),
        )
        .merge(crate::demo::router())
        .merge(crate::admin::router())
        .fallback(not_found)
        // Bearer tokens, never cookies: any origin may call the API (the demo
        // page is served by one server and talks to the coordinator and others).
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(state)
}

async fn ws(State(s): St, upgrade: WebSocketUpgrade) -> Result<Response, ApiError> {
    let Ok(permit) = s.sockets.clone().try_acquire_owned() else {
        s.metrics.connections_refused.inc();
        return Err(
            ApiError::unavailable("server at its connection limit; try another time")
                .retry_after(5),
        );
    };
    let max = s.config.max_frame_bytes;
    // tungstenite keeps its read buffer reserved per connection (128 KiB by
    // default): 1 KiB by default here, so an idle session costs ~9 KB;
    // larger frames still arrive, in several reads.
    // Writes collect up to 16 KiB until the session flushes, so a burst of
    // queued deliveries leaves in one write (the session flushes after each
    // batch, so nothing waits for the buffer to fill).
    Ok(upgrade
        .read_buffer_size(s.config.ws_read_buffer_bytes)
        .write_buffer_size(16 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            crate::session::run(socket, s).await;
            drop(permit);
        }))
}

async fn caller(s: &AppState, headers: &HeaderMap) -> Result<crate::auth::Verified, ApiError> {
    let header = headers.get("authorization").and_then(|h| h.to_str().ok());
    s.auth
        .verify_header(header)
        .await
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

async fn user(s: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    caller(s, headers).await.map(|v| v.user)
}

fn frame_error(e: FrameError) -> ApiError {
    let status = match e.code {
        ErrorCode::NotMember | ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code, e.message)
}

fn db(e: store::StoreError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

fn conversation(id: &str) -> Result<ConversationId, ApiError> {
    ConversationId::new(id).map_err(|e| ApiError::invalid(e.to_string()))
}

async fn post_message(
    State(s): St,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let sender = caller(&s, &headers).await?;
    let send: protocol::frames::Send = self::body(&body)?;
    let device = DeviceId::new("http").map_err(|e| ApiError::internal(e.to_string()))?;
    let msg_id = crate::send::send(&s, &sender, &device, send)
        .await
        .map_err(frame_error)?;
    Ok(Json(protocol::Accepted { msg_id }).into_response())
}

/// Backends only: an API key, never a user token.
fn backend(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers.get("authorization").and_then(|h| h.to_str().ok());
    s.api_keys
        .check_header(header)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

fn body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::BadJson
        } else {
            ErrorCode::InvalidField
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

async fn publish_one(State(s): St, headers: HeaderMap, text: String) -> Result<Response, ApiError> {
    backend(&s, &headers)?;
    let item: protocol::Publish = body(&text)?;
    let msg_id = crate::publish::one(&s, item).await.map_err(frame_error)?;
    Ok(Json(protocol::Accepted { msg_id }).into_response())
}

async fn publish_batch(
    State(s): St,
    headers: HeaderMap,
    text: String,
) -> Result<Response, ApiError> {
    backend(&s, &headers)?;
    let batch: protocol::PublishBatch = body(&text)?;
    let max = protocol::api::MAX_PUBLISH_BATCH;
    if batch.items.is_empty() || batch.items.len() > max {
        return Err(ApiError::invalid(format!(
            "items must hold 1 to {max} publications"
        )));
    }
    let results = crate::publish::batch(&s, batch.items).await;
    Ok(Json(protocol::api::PublishBatchResults { results }).into_response())
}

async fn create_conversation(
    State(s): St,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let creator = user(&s, &headers).await?;
    let req: protocol::api::CreateConversation =
        serde_json::from_str(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
    let id = match req.conversation_id {
        Some(id) => conversation(&id)?,
        None => conversation(&format!("c-{}", uuid::Uuid::new_v4().simple()))?,
    };
    if id.is_direct() {
        return Err(ApiError::invalid(
            "direct conversations (dm:a,b) exist implicitly",
        ));
    }
    let mut members = vec![creator.clone()];
    for m in req.members {
        let u = UserId::new(m).map_err(|e| ApiError::invalid(e.to_string()))?;
        if !members.contains(&u) {
            members.push(u);
        }
    }
    check_group_size(&s, members.len())?;
    let store = s.members.store();
    if !store
        .create_conversation(&id, &creator, &members)
        .await
        .map_err(db)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("conversation {id} exists"),
        ));
    }
    s.members.invalidate(&id);
    let body = Conversation {
        conversation_id: id,
        members,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `SWITCHBOARD_MAX_GROUP_MEMBERS`: beyond it an audience belongs in a channel.
fn check_group_size(s: &AppState, members: usize) -> Result<(), ApiError> {
    let max = s.config.max_group_members;
    if members > max {
        return Err(ApiError::invalid(format!(
            "a group conversation has at most {max} members; publish to a channel for larger audiences"
        )));
    }
    Ok(())
}

async fn require_member(s: &AppState, id: &ConversationId, u: &UserId) -> Result<(), ApiError> {
    match s.members.members(id).await.map_err(db)? {
        None => Err(ApiError::not_found(format!("no conversation {id}"))),
        Some(m) if m.contains(u) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotMember,
            format!("not a member of {id}"),
        )),
    }
}

/// Who may change a conversation's members, and which change: the caller
/// must be a member, and direct conversations never change.
async fn member_change(
    s: &AppState,
    headers: &HeaderMap,
    (id, member): (String, String),
) -> Result<(ConversationId, UserId), ApiError> {
    let caller = user(s, headers).await?;
    let id = conversation(&id)?;
    let member = UserId::new(member).map_err(|e| ApiError::invalid(e.to_string()))?;
    if id.is_direct() {
        return Err(ApiError::invalid("direct conversations have fixed members"));
    }
    require_member(s, &id, &caller).await?;
    Ok((id, member))
}

async fn add_member(
    State(s): St,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, member) = member_change(&s, &headers, path).await?;
    if let Some(now) = s.members.members(&id).await.map_err(db)? {
        if !now.contains(&member) {
            check_group_size(&s, now.len() + 1)?;
        }
    }
    s.members
        .store()
        .add_member(&id, &member)
        .await
        .map_err(db)?;
    s.members.invalidate(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    State(s): St,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, member) = member_change(&s, &headers, path).await?;
    let removed = s.members.store().remove_member(&id, &member).await;
    s.members.invalidate(&id);
    if !removed.map_err(db)? {
        return Err(ApiError::not_found(format!(
            "{member} is not a member of {id}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn my_conversations(State(s): St, headers: HeaderMap) -> Result<Response, ApiError> {
    let u = user(&s, &headers).await?;
    let list = s.members.store().conversations_of(&u).await.map_err(db)?;
    let conversations = list
        .into_iter()
        .map(|(conversation_id, members)| Conversation {
            conversation_id,
            members,
        })
        .collect();
    Ok(Json(Conversations { conversations }).into_response())
}

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    local: bool,
}

/// Backends only: a channel's subscribers and distinct users over every
/// server in the map (`?local=true`: this server's share).
async fn channel_stats(
    State(s): St,
    headers: HeaderMap,
    Path(channel): Path<String>,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ChannelStats>, ApiError> {
    backend(&s, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::invalid(e.body_text()))?;
    let channel = ChannelName::new(channel).map_err(|e| ApiError::invalid(e.to_string()))?;
    let local = s.channels.stats(&channel);
    if q.local {
        return Ok(Json(local));
    }
    let me = &s.info.server_id;
    let peers: Vec<String> = s.assignment().map_or_else(Vec::new, |a| {
        a.servers
            .values()
            .filter(|p| p.server_id != *me)
            .map(|p| p.http_url.trim_end_matches('/').to_owned())
            .collect()
    });
    let auth = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    crate::channel_stats::total(local, &peers, &channel, auth)
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

#[derive(Deserialize)]
struct PresenceQuery {
    /// Comma-separated user ids.
    users: String,
}

/// Backends only: the presence of up to 100 users, from this server's
/// table of the cluster's sessions (any server answers for every user).
async fn presence(
    State(s): St,
    headers: HeaderMap,
    q: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PresenceState>, ApiError> {
    backend(&s, &headers)?;
    let Query(q) = q.map_err(|e| ApiError::invalid(e.body_text()))?;
    let users = q
        .users
        .split(',')
        .filter(|u| !u.is_empty())
        .map(UserId::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let max = protocol::presence::MAX_PRESENCE_USERS;
    if users.is_empty() || users.len() > max {
        return Err(ApiError::invalid(format!("users names 1 to {max} users")));
    }
    if !s.presence.wait_loaded(crate::presence::LOAD_WAIT).await {
        return Err(ApiError::unavailable("presence is loading; retry").retry_after(1));
    }
    let state = s.presence.state(&users);
    let users = crate::session::with_last_seen(s.members.store(), state)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(PresenceState { id: None, users }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    before: Option<String>,
    limit: Option<i64>,
}

fn parse_before(token: &str) -> Result<(i64, uuid::Uuid), ApiError> {
    let bad = || ApiError::invalid("before must be a next_before token from a previous page");
    let (at, id) = token.split_once('_').ok_or_else(bad)?;
    Ok((
        at.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

async fn history(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let u = user(&s, &headers).await?;
    let Query(q) = q.map_err(|e| ApiError::invalid(e.body_text()))?;
    let id = conversation(&id)?;
    require_member(&s, &id, &u).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1..=500"));
    }
    let before = q.before.as_deref().map(parse_before).transpose()?;
    let rows = async {
        let rows = s
            .members
            .store()
            .history(&id, before, limit)
            .await
            .map_err(db)?;
        rows.iter()
            .map(crate::frame::history_message)
            .collect::<Result<_, _>>()
            .map_err(|e| ApiError::internal(e.to_string()))
    };
    let limit = usize::try_from(limit).unwrap_or(0);
    let messages = crate::history::page(rows, unstored(&s, &u, &id), before, limit).await?;
    let next = (messages.len() == limit)
        .then(|| {
            messages
                .last()
                .map(|m| format!("{}_{}", m.sent_at_ms, m.msg_id.0))
        })
        .flatten();
    let page = HistoryPage {
        messages,
        next_before: next,
    };
    Ok(Json(page).into_response())
}

/// What the caller's partition holds of `id` past the persister (an
/// acknowledged send the persister has not written yet). Without a map or
/// a broker the page is PostgreSQL's alone, as before.
async fn unstored(s: &AppState, user: &UserId, id: &ConversationId) -> Vec<HistoryMessage> {
    let Some(partitions) = s.assignment().map(|a| a.partitions) else {
        return Vec::new();
    };
    let partition = protocol::partition_for(user.as_str(), partitions);
    let source = crate::session::StateSource(s);
    let read = async {
        let log_end = s.log.watermarks(partition).await?.1;
        crate::history::unstored(&source, user, partition, id, log_end).await
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!(partition, error = %e, "history without the log's unstored tail");
        Vec::new()
    })
}

async fn readyz(State(s): St) -> Result<Json<Status>, ApiError> {
    match s.not_ready() {
        None => Ok(Json(Status {
            server_id: Some(s.info.server_id.clone()),
            partitions: Some(s.metrics.owned_partitions.get()),
            ..Status::ready()
        })),
        Some(why) => Err(ApiError::unavailable(why)),
    }
}
