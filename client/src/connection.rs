//! The client's public face: configuration, events, and the handles that
//! send. The connection task itself is in `runner.rs`.

use crate::channels::Control;
use crate::runner::{Outgoing, Runner};
use crate::seen::Seen;
use futures_util::future::BoxFuture;
use protocol::frames::{Message, Subscribed};
use protocol::{ChannelName, ClientFrame, Cursor, ErrorCode, Kind, MsgId, ServerId, Target};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where fresh tokens come from: called before the session's token expires
/// (and once after a 4001); `None` means "no fresh token".
#[derive(Clone)]
pub struct TokenRefresh(Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>);

impl TokenRefresh {
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }

    pub(crate) async fn fresh(&self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), (self.0)())
            .await
            .ok()
            .flatten()
    }
}

impl std::fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenRefresh")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// One coordinator base URL, or several replicas separated by commas.
    pub coordinator_url: String,
    pub token: String,
    /// Fresh tokens before this one expires; without it a session ends with
    /// 4001 at the token's `exp` and the client stops.
    pub refresh: Option<TokenRefresh>,
    pub user_id: String,
    pub device_id: String,
    /// Resume from here (e.g. a cursor saved by the app).
    pub cursor: Option<Cursor>,
    pub max_backoff: Duration,
    /// Also hand the app each frame the dedupe drops, as
    /// `Event::Duplicate` (for histories and diagnostics; apps leave it off).
    pub report_duplicates: bool,
    /// The source address of the client's connections (route lookups and
    /// WebSockets); `None` lets the system choose. For a gateway or load
    /// generator holding many clients: one address has about 28,000
    /// ephemeral ports toward each server, and the kernel's search for a
    /// free one slows every connect as they run out.
    pub local_address: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A session is up; `resumed: false` after a cursor means: reload history.
    Connected {
        server_id: ServerId,
        resumed: bool,
        cursor: Cursor,
    },
    /// A message, once per `msg_id` (duplicates from resumes are dropped).
    Message(Message),
    /// A frame whose msg_id the app already had (only with
    /// `ClientConfig::report_duplicates`).
    Duplicate(Message),
    /// The replay is over; everything after is live.
    Synced(Cursor),
    Disconnected {
        code: Option<u16>,
    },
    /// A session to `server_id` is being opened (after a route lookup or a
    /// redirect): the JavaScript client's `connecting` state.
    Connecting {
        server_id: ServerId,
    },
    /// An attempt ended before a welcome without a close from the server;
    /// the client tries again (after its backoff). Closes come as
    /// `Disconnected` instead.
    AttemptFailed(Attempt),
    /// A channel subscription is (again) in place. `recovered: false` after
    /// a cursor means publications were missed that the log no longer holds.
    Subscribed {
        channel: protocol::ChannelName,
        cursor: Cursor,
        recovered: bool,
    },
    /// A watched user came online or went offline — or, after a reconnect,
    /// a watched user's state as the new session found it.
    Presence(protocol::presence::UserPresence),
    /// A user's first subscription to a presence channel began.
    Join(protocol::presence::Membership),
    /// A user's last subscription to a presence channel ended.
    Leave(protocol::presence::Membership),
    /// The token was refused (4001); the client stops.
    Unauthorized,
}

/// Where an attempt to start a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No coordinator answered the route lookup.
    Lookup,
    /// The server could not be reached, or its WebSocket upgrade failed or
    /// took longer than the connect limit.
    Connect,
    /// Connected, but no `welcome` (or `redirect`) within the limit, or the
    /// connection broke before one.
    Welcome,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("the client stopped before the send was acknowledged")]
    Stopped,
}

pub(crate) type Reply = oneshot::Sender<Result<MsgId, SendError>>;

pub struct Client {
    channels: Channels,
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    sender: Sender,
    events: mpsc::Receiver<Event>,
    cursor: Arc<Mutex<Option<Cursor>>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The app's side of the channel subscriptions.
struct Channels {
    ctl: mpsc::Sender<Control>,
    cursors: crate::channels::Cursors,
}

/// A cloneable handle for sending on a `Client` from other tasks, so several
/// sends can wait for their acks at once.
#[derive(Clone)]
pub struct Sender {
    out: mpsc::Sender<Outgoing>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Client {
    pub fn start(config: ClientConfig) -> Self {
        let (out_tx, out_rx) = mpsc::channel(1024);
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        let (ctl_tx, ctl_rx) = mpsc::channel(64);
        let channel_cursors = crate::channels::Cursors::default();
        let cursor = Arc::new(Mutex::new(config.cursor.clone()));
        let cancel = CancellationToken::new();
        let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let runner = Runner {
            duplicates: duplicates.clone(),
            config,
            events: ev_tx,
            cursor: cursor.clone(),
            token: String::new(),
            token_exp: None,
            refreshed_after_refusal: false,
            silence: crate::runner::DEFAULT_SILENCE,
            pending: BTreeMap::new(),
            seen: Seen::new(10_000),
            rehandle: Vec::new(),
            out: out_rx,
            subs: BTreeMap::new(),
            channel_cursors: channel_cursors.clone(),
            ctl: ctl_rx,
            watched: Default::default(),
            asks: BTreeMap::new(),
            next_ask: 0,
            route_epoch: None,
            welcomed: false,
            cancel: cancel.clone(),
        };
        Self {
            channels: Channels {
                ctl: ctl_tx,
                cursors: channel_cursors,
            },
            duplicates,
            sender: Sender {
                out: out_tx,
                next_id: Arc::default(),
            },
            events: ev_rx,
            cursor,
            cancel,
            task: tokio::spawn(runner.run()),
        }
    }

    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Subscribes to a channel (and again on every reconnect, from the
    /// channel's last cursor); resolves with the first `subscribed`.
    pub async fn subscribe(&self, channel: &ChannelName) -> Result<Subscribed, SendError> {
        self.subscribe_from(channel, None).await
    }

    /// Subscribes from a saved cursor: what was published after it is
    /// delivered first (`recovered: true`) while the log still holds it.
    pub async fn subscribe_from(
        &self,
        channel: &ChannelName,
        cursor: Option<Cursor>,
    ) -> Result<Subscribed, SendError> {
        self.ask(|reply| Control::Subscribe {
            channel: channel.clone(),
            cursor,
            reply,
        })
        .await
    }

    /// Hands the connection task a request and waits for its answer.
    async fn ask<T>(
        &self,
        control: impl FnOnce(oneshot::Sender<Result<T, SendError>>) -> Control,
    ) -> Result<T, SendError> {
        let (reply, rx) = oneshot::channel();
        let c = control(reply);
        self.channels
            .ctl
            .send(c)
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.unwrap_or(Err(SendError::Stopped))
    }

    /// The presence of `users` (contacts only: users in a conversation with
    /// this user, or who wrote to them); with `watch`, an
    /// `Event::Presence` whenever one comes online or goes offline, also
    /// across reconnects, until [`Client::unwatch`].
    pub async fn presence(
        &self,
        users: &[protocol::UserId],
        watch: bool,
    ) -> Result<Vec<protocol::presence::UserPresence>, SendError> {
        self.ask(|reply| Control::Presence {
            users: users.to_vec(),
            watch,
            reply,
        })
        .await
    }

    /// One page (up to `limit`, at most 500) of the users subscribed to a
    /// presence channel this client is subscribed to, after `after`;
    /// `next_after` names the next page. `Event::Join`/`Event::Leave`
    /// follow its changes (channels up to the server's join/leave limit).
    pub async fn channel_presence(
        &self,
        channel: &ChannelName,
        after: Option<protocol::UserId>,
        limit: Option<usize>,
    ) -> Result<protocol::presence::ChannelPresence, SendError> {
        let request = protocol::presence::ChannelPresenceRequest {
            id: None,
            channel: channel.clone(),
            after,
            limit,
        };
        self.ask(|reply| Control::ChannelPresence { request, reply })
            .await
    }

    /// No more `Event::Presence` about `users`.
    pub async fn unwatch(&self, users: &[protocol::UserId]) -> Result<(), SendError> {
        let c = Control::Unwatch(users.to_vec());
        self.channels
            .ctl
            .send(c)
            .await
            .map_err(|_| SendError::Stopped)
    }

    pub async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), SendError> {
        let c = Control::Unsubscribe(channel.clone());
        self.channels
            .ctl
            .send(c)
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Tells the server this app handled the anycast publication `msg_id`
    /// (an `Event::Message` with `anycast: true`), so it goes to no other
    /// subscriber. Call it once the work is done: until then, or if the
    /// connection drops first, the server may hand it to another subscriber.
    pub async fn handled(&self, channel: &ChannelName, msg_id: MsgId) -> Result<(), SendError> {
        let c = Control::Handled(channel.clone(), msg_id);
        self.channels
            .ctl
            .send(c)
            .await
            .map_err(|_| SendError::Stopped)
    }

    /// Publishes to **one** subscriber of `channel` (anycast); with `key`,
    /// the same subscriber while it stays subscribed. Resolves on the ack.
    pub async fn anycast(
        &mut self,
        channel: &ChannelName,
        body: serde_json::Value,
        kind: Kind,
        key: Option<&str>,
    ) -> Result<MsgId, SendError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let how = Anycast {
            key: key.map(str::to_owned),
        };
        let to = Target::Channel(channel.clone());
        self.sender.submit(&id, to, body, kind, Some(how)).await
    }

    /// The channel's last cursor (save it to recover after a restart).
    pub fn channel_cursor(&self, channel: &ChannelName) -> Option<Cursor> {
        let cursors = self.channels.cursors.lock().ok()?;
        cursors.get(channel).cloned().flatten()
    }

    /// Sends with a fresh `client_msg_id`; resolves on the server's ack, after
    /// as many reconnects as it takes.
    pub async fn send(
        &mut self,
        to: Target,
        body: serde_json::Value,
        kind: Kind,
    ) -> Result<MsgId, SendError> {
        self.sender.send(to, body, kind).await
    }

    /// Sends with a caller-chosen retry key: the same key gives the same `msg_id`.
    pub async fn send_with_id(
        &mut self,
        client_msg_id: &str,
        to: Target,
        body: serde_json::Value,
        kind: Kind,
    ) -> Result<MsgId, SendError> {
        self.sender
            .send_with_id(client_msg_id, to, body, kind)
            .await
    }

    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Messages dropped because their `msg_id` was already delivered.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The cursor of the last chat message received (save it to resume later).
    pub fn cursor(&self) -> Option<Cursor> {
        self.cursor.lock().map(|c| c.clone()).unwrap_or(None)
    }

    pub async fn close(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// How an anycast publication picks its subscriber.
struct Anycast {
    key: Option<String>,
}

impl Sender {
    /// Sends with a fresh `client_msg_id`; resolves on the server's ack, after
    /// as many reconnects as it takes.
    pub async fn send(
        &self,
        to: Target,
        body: serde_json::Value,
        kind: Kind,
    ) -> Result<MsgId, SendError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.send_with_id(&id, to, body, kind).await
    }

    /// Sends with a caller-chosen retry key: the same key gives the same `msg_id`.
    pub async fn send_with_id(
        &self,
        client_msg_id: &str,
        to: Target,
        body: serde_json::Value,
        kind: Kind,
    ) -> Result<MsgId, SendError> {
        self.submit(client_msg_id, to, body, kind, None).await
    }

    async fn submit(
        &self,
        client_msg_id: &str,
        to: Target,
        body: serde_json::Value,
        kind: Kind,
        anycast: Option<Anycast>,
    ) -> Result<MsgId, SendError> {
        let request_id = 1 + self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cmid = protocol::ClientMsgId::new(client_msg_id)
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        let body = RawValue::from_string(body.to_string())
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        let send = protocol::frames::Send {
            id: Some(request_id.into()),
            client_msg_id: cmid,
            to,
            body,
            kind,
            anycast: anycast.is_some(),
            key: anycast.and_then(|a| a.key),
        };
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            request_id,
            frame: ClientFrame::Send(send)
                .to_json()
                .map_err(|e| SendError::Invalid(e.to_string()))?,
            client_msg_id: client_msg_id.to_owned(),
            reply,
        };
        self.out.send(out).await.map_err(|_| SendError::Stopped)?;
        rx.await.unwrap_or(Err(SendError::Stopped))
    }
}
