//! The HTTP side: routes from the coordinator, conversations, history, and
//! sends over HTTP — errors keep the server's `{"code","message"}`.

use protocol::api::{
    Conversation, Conversations, CreateConversation, HistoryPage, PublishBatchResults,
};
use protocol::{
    Accepted, ClientMsgId, ErrorBody, ErrorCode, Kind, MsgId, Publish, PublishBatch, PublishResult,
    Target,
};
use serde_json::value::RawValue;
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message} ({}, HTTP {status})", code.map_or("no code", ErrorCode::as_str))]
    Server {
        status: u16,
        /// `None` when the answer was not `{"code","message"}` (a proxy's page).
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("cannot reach {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
}

pub use protocol::Route;

/// A page of history: `GET /v1/conversations/{id}/messages`.
pub type Page = HistoryPage;

#[derive(Debug, Clone)]
pub struct Api {
    /// Coordinator replicas; any of them answers routes.
    coordinators: Vec<String>,
    /// The replica that answered last, tried first next time.
    preferred: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// `coordinators` is one base URL or several separated by commas (the
    /// replicas of the coordinator); a route falls over to the next replica
    /// when one cannot be reached.
    pub fn new(coordinators: &str, token: &str) -> Self {
        Self::build(coordinators, token, true, None)
    }

    /// For the connection task's route lookups, made once per (re)connect:
    /// no idle connection to the coordinator is kept between them, so a
    /// process holding many clients holds no socket per client there, and a
    /// reconnect storm leaves no idle sockets behind on the coordinator.
    pub(crate) fn for_routing(coordinators: &str, token: &str, local: Option<IpAddr>) -> Self {
        Self::build(coordinators, token, false, local)
    }

    fn build(coordinators: &str, token: &str, keep_alive: bool, local: Option<IpAddr>) -> Self {
        let coordinators = coordinators
            .split(',')
            .map(|c| c.trim().trim_end_matches('/').to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        let idle = if keep_alive { usize::MAX } else { 0 };
        // Without keep-alive the coordinator closes first, right after its
        // answer: its side keeps the TIME_WAIT, not a process holding many
        // clients, whose ports toward the coordinator are the scarce ones.
        let mut headers = reqwest::header::HeaderMap::new();
        if !keep_alive {
            let close = reqwest::header::HeaderValue::from_static("close");
            headers.insert(reqwest::header::CONNECTION, close);
        }
        Self {
            coordinators,
            preferred: Default::default(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .timeout(std::time::Duration::from_secs(30))
                .pool_max_idle_per_host(idle)
                .default_headers(headers)
                .local_address(local)
                .build()
                .unwrap_or_default(),
        }
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<Option<Value>, ApiError> {
        let resp = req.send().await.map_err(|source| ApiError::Transport {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| ApiError::Transport {
            url: url.to_owned(),
            source,
        })?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => (Some(e.code), e.message),
                Err(_) => (None, text),
            };
            return Err(ApiError::Server {
                status: status.as_u16(),
                code,
                message,
            });
        }
        Ok(serde_json::from_str(&text).ok())
    }

    fn decode<T: serde::de::DeserializeOwned>(url: &str, v: Option<Value>) -> Result<T, ApiError> {
        serde_json::from_value(v.unwrap_or(Value::Null)).map_err(|e| ApiError::Decode {
            url: url.to_owned(),
            detail: e.to_string(),
        })
    }

    pub async fn route(&self, user: &str) -> Result<Route, ApiError> {
        self.coordinator_get("/v1/route", &[("user_id", user)])
            .await
    }

    /// A route lookup that reports `unreachable` (the server this user's
    /// device could not reach or just lost): the coordinator checks it and
    /// answers (within `wait`) with the map that moved the user elsewhere,
    /// or, when the server answers its check, with the same route at once.
    pub async fn route_avoiding(
        &self,
        user: &str,
        unreachable: &protocol::ServerId,
        wait: std::time::Duration,
    ) -> Result<Route, ApiError> {
        let wait = wait.as_millis().to_string();
        let query = [
            ("user_id", user),
            ("unreachable", unreachable.as_str()),
            ("wait_ms", wait.as_str()),
        ];
        self.coordinator_get("/v1/route", &query).await
    }

    /// The partition map (`GET /v1/assignment`) from any coordinator replica.
    pub async fn assignment(&self) -> Result<protocol::Assignment, ApiError> {
        self.coordinator_get("/v1/assignment", &[]).await
    }

    /// `GET path` from the replica that answered last, falling over to the
    /// next one when a replica cannot be reached.
    async fn coordinator_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        use std::sync::atomic::Ordering;
        let n = self.coordinators.len().max(1);
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            let base = self.coordinators.get(at).map_or("", String::as_str);
            let url = format!("{base}{path}");
            match self.call(self.http.get(&url).query(query), &url).await {
                Ok(body) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Self::decode(&url, body);
                }
                Err(e @ ApiError::Transport { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ApiError::Decode {
            url: String::new(),
            detail: "no coordinator URL given".into(),
        }))
    }

    /// REST calls go to the server that serves `user` (any server would do).
    async fn server(&self, user: &str) -> Result<String, ApiError> {
        Ok(self.route(user).await?.http_base())
    }

    pub async fn send(
        &self,
        user: &str,
        client_msg_id: &str,
        to: &Target,
        body: Value,
        kind: Kind,
    ) -> Result<MsgId, ApiError> {
        let url = format!("{}/v1/messages", self.server(user).await?);
        let bad = |detail: String| ApiError::Decode {
            url: url.clone(),
            detail,
        };
        let req = protocol::frames::Send {
            id: None,
            client_msg_id: ClientMsgId::new(client_msg_id).map_err(|e| bad(e.to_string()))?,
            to: to.clone(),
            body: RawValue::from_string(body.to_string()).map_err(|e| bad(e.to_string()))?,
            kind,
            anycast: false,
            key: None,
        };
        let v = self
            .call(
                self.http.post(&url).bearer_auth(&self.token).json(&req),
                &url,
            )
            .await?;
        Self::decode::<Accepted>(&url, v).map(|a| a.msg_id)
    }

    /// `POST /v1/publish`: this `Api`'s token must be an API key of the
    /// servers. Any server takes it; the one serving `from` is asked.
    pub async fn publish(&self, item: &Publish) -> Result<MsgId, ApiError> {
        let url = format!("{}/v1/publish", self.server(item.from.as_str()).await?);
        let req = self.http.post(&url).bearer_auth(&self.token).json(item);
        let v = self.call(req, &url).await?;
        Self::decode::<Accepted>(&url, v).map(|a| a.msg_id)
    }

    /// `GET /v1/channels/{channel}/stats`: the channel's audience over every
    /// server (this `Api`'s token must be an API key). Any server answers.
    pub async fn channel_stats(
        &self,
        channel: &protocol::ChannelName,
    ) -> Result<protocol::api::ChannelStats, ApiError> {
        // Any server answers for every server: ask the one a fixed id routes to.
        let base = self.server("system:stats").await?;
        let url = format!("{base}/v1/channels/{channel}/stats");
        let v = self
            .call(self.http.get(&url).bearer_auth(&self.token), &url)
            .await?;
        Self::decode(&url, v)
    }

    /// `GET /v1/presence`: the presence of up to 100 users (this `Api`'s
    /// token must be an API key). Any server answers for every user.
    pub async fn presence(
        &self,
        users: &[protocol::UserId],
    ) -> Result<Vec<protocol::presence::UserPresence>, ApiError> {
        let base = self.server("system:presence").await?;
        let names: Vec<&str> = users.iter().map(protocol::UserId::as_str).collect();
        let url = format!("{base}/v1/presence");
        let req = self.http.get(&url).query(&[("users", names.join(","))]);
        let v = self.call(req.bearer_auth(&self.token), &url).await?;
        Self::decode::<protocol::presence::PresenceState>(&url, v).map(|s| s.users)
    }

    /// `POST /v1/publish/batch` (up to 1,000 items): one result per item.
    pub async fn publish_batch(&self, items: &[Publish]) -> Result<Vec<PublishResult>, ApiError> {
        let from = items.first().map_or("system:batch", |p| p.from.as_str());
        let url = format!("{}/v1/publish/batch", self.server(from).await?);
        let body = PublishBatch {
            items: items.to_vec(),
        };
        let req = self.http.post(&url).bearer_auth(&self.token).json(&body);
        let v = self.call(req, &url).await?;
        Self::decode::<PublishBatchResults>(&url, v).map(|r| r.results)
    }

    pub async fn create_conversation(
        &self,
        user: &str,
        id: Option<&str>,
        members: &[String],
    ) -> Result<Conversation, ApiError> {
        let url = format!("{}/v1/conversations", self.server(user).await?);
        let req = CreateConversation {
            conversation_id: id.map(str::to_owned),
            members: members.to_vec(),
        };
        let v = self
            .call(
                self.http.post(&url).bearer_auth(&self.token).json(&req),
                &url,
            )
            .await?;
        Self::decode(&url, v)
    }

    pub async fn add_member(
        &self,
        user: &str,
        conversation: &str,
        member: &str,
    ) -> Result<(), ApiError> {
        self.member(user, conversation, member, reqwest::Method::PUT)
            .await
    }

    pub async fn remove_member(
        &self,
        user: &str,
        conversation: &str,
        member: &str,
    ) -> Result<(), ApiError> {
        self.member(user, conversation, member, reqwest::Method::DELETE)
            .await
    }

    async fn member(
        &self,
        user: &str,
        conversation: &str,
        member: &str,
        method: reqwest::Method,
    ) -> Result<(), ApiError> {
        let url = format!(
            "{}/v1/conversations/{conversation}/members/{member}",
            self.server(user).await?
        );
        self.call(
            self.http.request(method, &url).bearer_auth(&self.token),
            &url,
        )
        .await
        .map(|_| ())
    }

    pub async fn conversations(&self, user: &str) -> Result<Conversations, ApiError> {
        let url = format!("{}/v1/conversations", self.server(user).await?);
        let v = self
            .call(self.http.get(&url).bearer_auth(&self.token), &url)
            .await?;
        Self::decode(&url, v)
    }

    pub async fn history(
        &self,
        user: &str,
        conversation: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Page, ApiError> {
        let url = format!(
            "{}/v1/conversations/{conversation}/messages",
            self.server(user).await?
        );
        let mut q = vec![("limit", limit.to_string())];
        if let Some(b) = before {
            q.push(("before", b.to_owned()));
        }
        let v = self
            .call(self.http.get(&url).bearer_auth(&self.token).query(&q), &url)
            .await?;
        Self::decode(&url, v)
    }
}
