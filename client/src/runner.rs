//! The connection task: one WebSocket session at a time, re-established
//! through the coordinator whenever the server redirects, drains or fails.

use crate::connection::{Attempt, ClientConfig, Event, Reply, SendError};
use crate::route::{Endpoint, Routing};
use crate::seen::Seen;
use futures_util::{FutureExt, SinkExt, StreamExt};
use protocol::frames::{Auth, Hello};
use protocol::{
    ChannelName, ClientFrame, CloseCode, Cursor, DeviceId, ErrorCode, Kind, MsgId, ServerFrame,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;

pub(crate) struct Pending {
    client_msg_id: String,
    frame: String,
    sent: bool,
    reply: Option<Reply>,
}

pub(crate) struct Outgoing {
    pub request_id: u64,
    pub frame: String,
    pub client_msg_id: String,
    pub reply: Reply,
}

/// Longest a connection and its upgrade may take (as the JS SDK's
/// `connectTimeoutMs` and the Python client's `open_timeout`): a frozen
/// server's kernel still accepts, and nothing else would end the wait.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Longest the server may take to answer `hello`.
const WELCOME_LIMIT: Duration = Duration::from_secs(15);

/// Before a welcome says the server's ping interval: two of the default 20 s.
pub(crate) const DEFAULT_SILENCE: Duration = Duration::from_secs(40);

enum Outcome {
    Redirect(Endpoint),
    Reresolve,
    Failed,
    Unauthorized,
    Stopped,
}

pub(crate) struct Runner {
    pub duplicates: Arc<std::sync::atomic::AtomicU64>,
    pub config: ClientConfig,
    pub events: mpsc::Sender<Event>,
    pub cursor: Arc<Mutex<Option<Cursor>>>,
    /// The token sessions start with (the latest fresh one).
    pub token: String,
    /// When the session's token expires (unix seconds), from welcome/authed.
    pub token_exp: Option<u64>,
    /// A 4001 was answered with one refresh already: the next one stops.
    pub refreshed_after_refusal: bool,
    /// Hearing nothing for this long (two of the server's ping intervals)
    /// means the connection is dead, whatever TCP says.
    pub silence: Duration,
    /// By request id: resent in that order after a reconnect.
    pub pending: BTreeMap<u64, Pending>,
    pub seen: Seen,
    /// Anycast publications delivered again after the app had them: the
    /// server is told `handled` again (the first answer may have been lost).
    pub rehandle: Vec<(ChannelName, MsgId)>,
    pub out: mpsc::Receiver<Outgoing>,
    /// Channel subscriptions by name, re-made on every session.
    pub subs: BTreeMap<ChannelName, crate::channels::Sub>,
    pub channel_cursors: crate::channels::Cursors,
    pub ctl: mpsc::Receiver<crate::channels::Control>,
    /// Users watched, watched again on every session.
    pub watched: std::collections::BTreeSet<protocol::UserId>,
    /// Presence questions of this session, by number.
    pub asks: BTreeMap<u64, crate::presence::Ask>,
    pub next_ask: u64,
    /// The epoch of the map that named the server being tried (in `hello`).
    pub route_epoch: Option<u64>,
    /// The current session got as far as a welcome.
    pub welcomed: bool,
    pub cancel: CancellationToken,
}

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Runner {
    pub async fn run(mut self) {
        self.token = self.config.token.clone();
        let api = crate::Api::for_routing(
            &self.config.coordinator_url,
            &self.config.token,
            self.config.local_address,
        );
        let mut routing = Routing::new(api, &self.config.user_id, self.config.max_backoff);
        let mut redirect: Option<Endpoint> = None;
        while !self.cancel.is_cancelled() {
            let target = match redirect.take() {
                Some(t) => Some(t),
                // Closing the client must not wait for a lookup's answer.
                None => tokio::select! {
                    t = routing.lookup(&self.cancel) => t,
                    _ = self.cancel.cancelled() => break,
                },
            };
            self.welcomed = false;
            let outcome = match &target {
                Some(t) => {
                    self.route_epoch = Some(t.epoch);
                    let server_id = t.server_id.clone();
                    self.emit(Event::Connecting { server_id }).await;
                    self.session(&t.ws_url).await
                }
                None => self.failed(Attempt::Lookup).await,
            };
            match outcome {
                Outcome::Redirect(t) => {
                    routing.moved();
                    redirect = Some(t);
                }
                Outcome::Reresolve => {
                    routing.moved();
                    self.pause(Duration::from_millis(20)).await;
                }
                Outcome::Failed => routing.failed(target.as_ref(), self.welcomed),
                Outcome::Unauthorized => {
                    let _ = self.events.send(Event::Unauthorized).await;
                    break;
                }
                Outcome::Stopped => break,
            }
        }
        for p in self.pending.values_mut() {
            if let Some(r) = p.reply.take() {
                let _ = r.send(Err(SendError::Stopped));
            }
        }
    }

    async fn pause(&self, base: Duration) {
        crate::route::sleep_jittered(base, &self.cancel).await;
    }

    /// Hands an event to the app. A slow app slows the socket down (the server
    /// then closes with 4004 and the client resumes): nothing is dropped.
    pub(crate) async fn emit(&self, e: Event) {
        tokio::select! {
            _ = self.events.send(e) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    async fn session(&mut self, url: &str) -> Outcome {
        // Frames to a device are small; larger ones arrive in several reads.
        // (The default reserves and zeroes 128 KiB per connection.)
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let connect = crate::dial::websocket(url, config, self.config.local_address);
        let Ok(Ok(mut ws)) = tokio::time::timeout(CONNECT_LIMIT, connect).await else {
            return self.failed(Attempt::Connect).await;
        };
        let cursor = self.cursor.lock().map(|c| c.clone()).unwrap_or(None);
        let Ok(device) = DeviceId::new(self.config.device_id.as_str()) else {
            return Outcome::Unauthorized;
        };
        let hello = ClientFrame::Hello(Hello {
            token: self.token.clone(),
            device_id: Some(device),
            cursor,
            epoch: self.route_epoch,
        });
        let Ok(hello) = hello.to_json() else {
            return Outcome::Unauthorized;
        };
        if ws.send(Ws::text(hello)).await.is_err() {
            return self.failed(Attempt::Connect).await;
        }
        match self.first_frame(&mut ws).await {
            Ok(()) => {}
            Err(outcome) => return outcome,
        }
        for p in self.pending.values_mut() {
            p.sent = ws.send(Ws::text(p.frame.clone())).await.is_ok();
        }
        self.resubscribe_all(&mut ws).await;
        self.rewatch_all(&mut ws).await;
        let outcome = self.serve(ws).await;
        self.session_ended();
        outcome
    }

    async fn first_frame(&mut self, ws: &mut Socket) -> Result<(), Outcome> {
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(WELCOME_LIMIT, ws.next()) => match m {
                    Ok(m) => m,
                    Err(_) => return Err(self.failed(Attempt::Welcome).await),
                },
                // Closing the client must not wait for a server that never welcomes.
                _ = self.cancel.cancelled() => return Err(Outcome::Stopped),
            };
            match msg {
                Some(Ok(Ws::Text(t))) => match ServerFrame::parse(&t) {
                    Ok(ServerFrame::Welcome(w)) => {
                        // Without a resume, live delivery starts at the welcome's
                        // cursor: keep it, so a reconnect before the first chat
                        // message still replays what it missed.
                        if !w.resumed {
                            if let Ok(mut cur) = self.cursor.lock() {
                                *cur = Some(w.cursor.clone());
                            }
                        }
                        self.welcomed = true;
                        self.token_exp = w.token_exp;
                        self.refreshed_after_refusal = false;
                        self.silence = w.ping_ms.map_or(DEFAULT_SILENCE, |ms| {
                            Duration::from_millis(ms.saturating_mul(2))
                        });
                        self.emit(Event::Connected {
                            server_id: w.server_id,
                            resumed: w.resumed,
                            cursor: w.cursor,
                        })
                        .await;
                        return Ok(());
                    }
                    Ok(ServerFrame::Redirect(r)) => return Err(Outcome::Redirect(r.into())),
                    _ => continue,
                },
                Some(Ok(Ws::Close(c))) => {
                    return Err(self.closed(c.map(|c| u16::from(c.code))).await)
                }
                Some(Ok(_)) => continue,
                _ => return Err(self.failed(Attempt::Welcome).await),
            }
        }
    }

    /// An attempt that ended before a welcome with no close to report.
    async fn failed(&self, at: Attempt) -> Outcome {
        self.emit(Event::AttemptFailed(at)).await;
        Outcome::Failed
    }

    async fn closed(&mut self, code: Option<u16>) -> Outcome {
        self.emit(Event::Disconnected { code }).await;
        match code.and_then(CloseCode::from_code) {
            Some(CloseCode::Unauthorized) => self.after_refusal().await,
            Some(CloseCode::TooSlow | CloseCode::PartitionMoved | CloseCode::Draining) => {
                Outcome::Reresolve
            }
            _ => Outcome::Failed,
        }
    }

    /// A refused token: one fresh token from the app, then a new session.
    async fn after_refusal(&mut self) -> Outcome {
        let Some(refresh) = self.config.refresh.clone() else {
            return Outcome::Unauthorized;
        };
        if self.refreshed_after_refusal {
            return Outcome::Unauthorized;
        }
        self.refreshed_after_refusal = true;
        match refresh.fresh().await {
            Some(token) => {
                self.token = token;
                Outcome::Reresolve
            }
            None => Outcome::Unauthorized,
        }
    }

    /// When to ask for a fresh token: halfway to expiry, at most a minute early.
    fn refresh_at(&self) -> Option<tokio::time::Instant> {
        let (exp, _) = (self.token_exp?, self.config.refresh.as_ref()?);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now);
        let early = (left / 2).min(Duration::from_secs(60));
        Some(tokio::time::Instant::now() + (left - early))
    }

    /// Sends `auth` with a fresh token; the expiry is unknown until `authed`.
    async fn refresh_token(&mut self, ws: &mut Socket) {
        self.token_exp = None;
        let Some(refresh) = self.config.refresh.clone() else {
            return;
        };
        let Some(token) = refresh.fresh().await else {
            return;
        };
        self.token = token.clone();
        let auth = ClientFrame::Auth(Auth { id: None, token });
        if let Ok(text) = auth.to_json() {
            let _ = ws.send(Ws::text(text)).await;
        }
    }

    async fn serve(&mut self, mut ws: Socket) -> Outcome {
        const RETRY_EVERY: Duration = Duration::from_millis(500);
        let mut redirect = None;
        let mut retry = tokio::time::interval(RETRY_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        loop {
            // The retry tick is off while nothing waits; when something
            // starts waiting, its first retry is a full period away. (An
            // interval left off for a while otherwise fires every missed
            // tick at once: a burst of resends that the server answers with
            // `rate_limited` until it closes the connection, 4008.)
            let waiting_before = self.anything_unsent();
            let refresh_at = self.refresh_at();
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = tokio::time::sleep_until(refresh_at.unwrap_or(far)), if refresh_at.is_some() => {
                    self.refresh_token(&mut ws).await;
                }
                // Not even the server's pings for two intervals: a half-open
                // connection (a cut link, a server frozen or gone without a
                // FIN), which TCP alone would report only after many minutes.
                // But a process starved of CPU (a loaded host, a phone back
                // from the background) wakes to this deadline and to frames
                // it has not read yet at once, and `select!` may pick either:
                // a frame already there was heard in time.
                _ = tokio::time::sleep_until(heard + self.silence) => match ws.next().now_or_never() {
                    Some(m) => {
                        heard = tokio::time::Instant::now();
                        if let Some(end) = self.heard(&mut ws, m, &mut redirect).await {
                            return end;
                        }
                    }
                    None => return self.closed(None).await,
                },
                m = ws.next() => {
                    heard = tokio::time::Instant::now();
                    if let Some(end) = self.heard(&mut ws, m, &mut redirect).await {
                        return end;
                    }
                }
                o = self.out.recv() => {
                    let Some(o) = o else { return Outcome::Stopped };
                    let sent = ws.send(Ws::text(o.frame.clone())).await.is_ok();
                    let p = Pending { client_msg_id: o.client_msg_id, frame: o.frame, sent, reply: Some(o.reply) };
                    self.pending.insert(o.request_id, p);
                }
                Some(c) = self.ctl.recv() => self.control(&mut ws, c).await,
                // Only while something waits to be (re)sent: an idle client
                // does not wake (a phone's battery, a gateway's thousands).
                _ = retry.tick(), if self.anything_unsent() => {
                    for p in self.pending.values_mut().filter(|p| !p.sent) {
                        p.sent = ws.send(Ws::text(p.frame.clone())).await.is_ok();
                    }
                    self.retry_subscribes(&mut ws).await;
                }
                _ = self.cancel.cancelled() => {
                    let _ = ws.close(None).await;
                    return Outcome::Stopped;
                }
            }
            if !waiting_before && self.anything_unsent() {
                retry.reset();
            }
        }
    }

    /// One read from the socket and the anycast answers it left to
    /// send; `Some` when the session is over.
    async fn heard(
        &mut self,
        ws: &mut Socket,
        m: Option<Result<Ws, tokio_tungstenite::tungstenite::Error>>,
        redirect: &mut Option<Endpoint>,
    ) -> Option<Outcome> {
        if let Some(end) = self.on_ws(m, redirect).await {
            return Some(end);
        }
        for (channel, msg_id) in std::mem::take(&mut self.rehandle) {
            self.handled(ws, channel, msg_id).await;
        }
        None
    }

    /// One read from the socket; `Some` when the session is over.
    async fn on_ws(
        &mut self,
        m: Option<Result<Ws, tokio_tungstenite::tungstenite::Error>>,
        redirect: &mut Option<Endpoint>,
    ) -> Option<Outcome> {
        match m {
            Some(Ok(Ws::Text(t))) => {
                if let Ok(f) = ServerFrame::parse(&t) {
                    if let Some(to) = self.on_frame(f).await {
                        *redirect = Some(to);
                    }
                }
                None
            }
            Some(Ok(Ws::Close(c))) => {
                let outcome = self.closed(c.map(|c| u16::from(c.code))).await;
                Some(match (redirect.take(), outcome) {
                    (Some(t), Outcome::Reresolve) => Outcome::Redirect(t),
                    (_, o) => o,
                })
            }
            Some(Ok(_)) => None,
            _ => Some(self.closed(None).await),
        }
    }

    fn anything_unsent(&self) -> bool {
        self.pending.values().any(|p| !p.sent) || self.subs.values().any(|s| !s.sent)
    }

    /// Handles one frame; returns a redirect target when the server gave one.
    async fn on_frame(&mut self, f: ServerFrame) -> Option<Endpoint> {
        match f {
            ServerFrame::Message(m) => {
                // A channel publication moves its channel's cursor, never the user's.
                let position = m.channel.clone().zip(m.cursor.clone());
                let cursor = m
                    .cursor
                    .clone()
                    .filter(|_| m.kind == Kind::Chat && m.channel.is_none());
                if self.seen.insert(m.msg_id) {
                    self.emit(Event::Message(m)).await;
                } else {
                    if let (true, Some(c)) = (m.anycast, &m.channel) {
                        self.rehandle.push((c.clone(), m.msg_id));
                    }
                    self.duplicates
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if self.config.report_duplicates {
                        self.emit(Event::Duplicate(m)).await;
                    }
                }
                // Only past what the app has been handed: a resume replays the
                // rest. Never backwards: a duplicate replayed from an older
                // record would only make the next resume replay more.
                if let (Some(c), Ok(mut cur)) = (cursor, self.cursor.lock()) {
                    if cur.as_ref().is_none_or(|old| moves_forward(old, &c)) {
                        *cur = Some(c);
                    }
                }
                self.channel_delivered(position);
            }
            ServerFrame::Subscribed(s) => self.subscribed(s).await,
            ServerFrame::Unsubscribed(_) => {}
            ServerFrame::Synced(s) => self.emit(Event::Synced(s.cursor)).await,
            ServerFrame::Ack(a) => self.settle(a.client_msg_id.as_str(), Ok(a.msg_id)),
            ServerFrame::Error(e) => {
                if !self.subscribe_refused(&e) && !self.presence_refused(&e) {
                    self.refused(e)
                }
            }
            ServerFrame::PresenceState(s) => self.presence_state(s).await,
            ServerFrame::Presence(p) => self.emit(Event::Presence(p)).await,
            ServerFrame::ChannelPresence(page) => self.channel_presence(page),
            ServerFrame::Join(m) => self.emit(Event::Join(m)).await,
            ServerFrame::Leave(m) => self.emit(Event::Leave(m)).await,
            ServerFrame::Redirect(r) => return Some(r.into()),
            ServerFrame::Authed(a) => self.token_exp = Some(a.exp),
            ServerFrame::Welcome(_) | ServerFrame::Pong(_) => {}
        }
        None
    }

    fn settle(&mut self, client_msg_id: &str, result: Result<MsgId, SendError>) {
        let key = self
            .pending
            .iter()
            .find(|(_, p)| p.client_msg_id == client_msg_id)
            .map(|(k, _)| *k);
        if let Some(mut p) = key.and_then(|k| self.pending.remove(&k)) {
            if let Some(r) = p.reply.take() {
                let _ = r.send(result);
            }
        }
    }

    /// Unavailable and rate-limited sends are retried; anything else fails.
    fn refused(&mut self, e: protocol::frames::ErrorFrame) {
        let Some(id) = e.id.as_ref().and_then(|v| v.as_u64()) else {
            return;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if matches!(e.code, ErrorCode::Unavailable | ErrorCode::RateLimited) {
            p.sent = false;
            return;
        }
        if let Some(r) = self.pending.remove(&id).and_then(|mut p| p.reply.take()) {
            let _ = r.send(Err(SendError::Refused {
                code: e.code,
                message: e.message,
            }));
        }
    }
}

/// A cursor in another log epoch replaces the old one (the log was reset);
/// in the same epoch only a later offset does.
fn moves_forward(old: &Cursor, new: &Cursor) -> bool {
    old.log_epoch != new.log_epoch || new.offset > old.offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_moves_forward_or_to_a_new_epoch_only() {
        let c = |e: &str, o| Cursor::new(e, o);
        assert!(moves_forward(&c("a", 5), &c("a", 6)));
        assert!(!moves_forward(&c("a", 5), &c("a", 5)));
        assert!(!moves_forward(&c("a", 5), &c("a", 4)));
        assert!(moves_forward(&c("a", 5), &c("b", 0)));
    }
}
