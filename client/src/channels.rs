//! Channel subscriptions of a client: kept across reconnects and
//! re-subscribed on every new session with the channel's last cursor, so a
//! publication missed while disconnected is recovered (or `recovered: false`
//! says it could not be).

use crate::connection::SendError;
use crate::runner::Runner;
use futures_util::SinkExt;
use protocol::frames::{ErrorFrame, Subscribe, Subscribed, Unsubscribe};
use protocol::{ChannelName, ClientFrame, Cursor, ErrorCode};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as Ws;

pub(crate) type SubscribeReply = oneshot::Sender<Result<Subscribed, SendError>>;

/// What the app asks of the connection task.
pub(crate) enum Control {
    Subscribe {
        channel: ChannelName,
        cursor: Option<Cursor>,
        reply: SubscribeReply,
    },
    Unsubscribe(ChannelName),
    Presence {
        users: Vec<protocol::UserId>,
        watch: bool,
        reply: crate::presence::PresenceReply,
    },
    Unwatch(Vec<protocol::UserId>),
    ChannelPresence {
        request: protocol::presence::ChannelPresenceRequest,
        reply: crate::presence::ChannelReply,
    },
    /// The app handled an anycast publication.
    Handled(ChannelName, protocol::MsgId),
}

pub(crate) struct Sub {
    /// Sent on the current session and not yet answered or refused.
    pub(crate) sent: bool,
    reply: Option<SubscribeReply>,
}

/// Each channel's last cursor, shared with the app (save them to resume later).
pub(crate) type Cursors = Arc<Mutex<BTreeMap<ChannelName, Option<Cursor>>>>;

/// The `id` of a subscribe frame names its channel, so errors find it.
fn request_id(channel: &ChannelName) -> serde_json::Value {
    serde_json::Value::String(format!("sub:{channel}"))
}

fn channel_of(id: &serde_json::Value) -> Option<ChannelName> {
    ChannelName::new(id.as_str()?.strip_prefix("sub:")?).ok()
}

impl Runner {
    fn channel_cursor(&self, channel: &ChannelName) -> Option<Cursor> {
        let cursors = self.channel_cursors.lock().ok()?;
        cursors.get(channel).cloned().flatten()
    }

    fn subscribe_frame(&self, channel: &ChannelName) -> Option<String> {
        let frame = ClientFrame::Subscribe(Subscribe {
            id: Some(request_id(channel)),
            channel: channel.clone(),
            cursor: self.channel_cursor(channel),
        });
        frame.to_json().ok()
    }

    /// A new session: every subscription is asked for again from its cursor.
    pub(crate) async fn resubscribe_all(&mut self, ws: &mut crate::runner::Socket) {
        let channels: Vec<ChannelName> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.send_subscribe(ws, &channel).await;
        }
    }

    /// Subscribes that were refused as `unavailable` are asked again.
    pub(crate) async fn retry_subscribes(&mut self, ws: &mut crate::runner::Socket) {
        let waiting: Vec<ChannelName> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.sent)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in waiting {
            self.send_subscribe(ws, &channel).await;
        }
    }

    async fn send_subscribe(&mut self, ws: &mut crate::runner::Socket, channel: &ChannelName) {
        let Some(text) = self.subscribe_frame(channel) else {
            return;
        };
        let sent = ws.send(Ws::text(text)).await.is_ok();
        if let Some(s) = self.subs.get_mut(channel) {
            s.sent = sent;
        }
    }

    pub(crate) async fn control(&mut self, ws: &mut crate::runner::Socket, c: Control) {
        match c {
            Control::Subscribe {
                channel,
                cursor,
                reply,
            } => {
                if let (Some(cursor), Ok(mut cursors)) = (cursor, self.channel_cursors.lock()) {
                    cursors.insert(channel.clone(), Some(cursor));
                }
                self.subs.insert(
                    channel.clone(),
                    Sub {
                        sent: false,
                        reply: Some(reply),
                    },
                );
                self.send_subscribe(ws, &channel).await;
            }
            Control::Unsubscribe(channel) => {
                self.subs.remove(&channel);
                if let Ok(mut cursors) = self.channel_cursors.lock() {
                    cursors.remove(&channel);
                }
                let frame = ClientFrame::Unsubscribe(Unsubscribe { id: None, channel });
                if let Ok(text) = frame.to_json() {
                    let _ = ws.send(Ws::text(text)).await;
                }
            }
            Control::Presence {
                users,
                watch,
                reply,
            } => self.ask_presence(ws, users, watch, reply).await,
            Control::Unwatch(users) => self.unwatch(ws, users).await,
            Control::ChannelPresence { request, reply } => {
                self.ask_channel(ws, request, reply).await
            }
            Control::Handled(channel, msg_id) => self.handled(ws, channel, msg_id).await,
        }
    }

    /// Tells the server an anycast publication was handled. Not retried: if
    /// the connection is gone it goes to another subscriber, and if it
    /// comes back here the duplicate is dropped and answered again.
    pub(crate) async fn handled(
        &mut self,
        ws: &mut crate::runner::Socket,
        channel: ChannelName,
        msg_id: protocol::MsgId,
    ) {
        let frame = ClientFrame::Handled(protocol::frames::Handled {
            id: None,
            channel,
            msg_id,
        });
        if let Ok(text) = frame.to_json() {
            let _ = ws.send(Ws::text(text)).await;
        }
    }

    /// A subscription is confirmed: its cursor moves, the app is told.
    pub(crate) async fn subscribed(&mut self, s: Subscribed) {
        let Some(sub) = self.subs.get_mut(&s.channel) else {
            return;
        };
        if let Ok(mut cursors) = self.channel_cursors.lock() {
            cursors.insert(s.channel.clone(), Some(s.cursor.clone()));
        }
        if let Some(reply) = sub.reply.take() {
            let _ = reply.send(Ok(s.clone()));
        }
        self.emit(crate::Event::Subscribed {
            channel: s.channel,
            cursor: s.cursor,
            recovered: s.recovered,
        })
        .await;
    }

    /// After the app has the publication: the channel's cursor moves past it.
    pub(crate) fn channel_delivered(&mut self, position: Option<(ChannelName, Cursor)>) {
        let Some((channel, cursor)) = position else {
            return;
        };
        if !self.subs.contains_key(&channel) {
            return;
        }
        if let Ok(mut cursors) = self.channel_cursors.lock() {
            cursors.insert(channel, Some(cursor));
        }
    }

    /// A refused subscribe: `unavailable` is asked again, anything else ends it.
    pub(crate) fn subscribe_refused(&mut self, e: &ErrorFrame) -> bool {
        let Some(channel) = e.id.as_ref().and_then(channel_of) else {
            return false;
        };
        if e.code == ErrorCode::Unavailable {
            if let Some(s) = self.subs.get_mut(&channel) {
                s.sent = false;
            }
            return true;
        }
        if let Some(reply) = self.subs.remove(&channel).and_then(|mut s| s.reply.take()) {
            let _ = reply.send(Err(SendError::Refused {
                code: e.code,
                message: e.message.clone(),
            }));
        }
        true
    }
}
