//! Connection events (docs/protocol.md, "Connection events") written to
//! `<topic>.events` in the user's partition: a session's events in order,
//! each produced after the previous one was acknowledged, retried while
//! the producer refuses, and written only while the registration the
//! session connected under is in force — after that the partition's next
//! owner reports the session (`reaper`).

use crate::metrics::Metrics;
use crate::producer::Producers;
use protocol::{
    ChannelName, ConnectionEvent, DeviceId, DisconnectReason, EventKind, ServerId, UserId,
};
use service::Backoff;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;
use uuid::Uuid;

/// Longest one event is retried before it is given up (and counted).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Where a server writes its events.
#[derive(Clone)]
pub struct EventLog {
    pub producer: Arc<Producers>,
    pub topic: String,
    pub server: ServerId,
    /// The registration in force (`AppState::incarnation`).
    pub incarnation: watch::Receiver<Option<Uuid>>,
    pub metrics: Metrics,
    /// Event writes not finished yet: a drain waits for them.
    pub writing: tokio_util::task::TaskTracker,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EventLog {
    /// Waits (up to `timeout`) for every event handed over so far.
    pub async fn written(&self, timeout: Duration) -> bool {
        self.writing.close();
        let done = tokio::time::timeout(timeout, self.writing.wait())
            .await
            .is_ok();
        self.writing.reopen();
        done
    }

    /// The events of a session that just connected (its `connected` is on
    /// its way), or `None` while unregistered: such a session is refused
    /// before it is served, so it has no events at all.
    pub fn connect(
        &self,
        user: &UserId,
        device: &DeviceId,
        partition: u32,
    ) -> Option<SessionEvents> {
        let incarnation = (*self.incarnation.borrow())?;
        let mut s = SessionEvents {
            log: self.clone(),
            template: ConnectionEvent {
                v: protocol::events::EVENT_VERSION,
                event: EventKind::Connected,
                user: user.clone(),
                device: device.clone(),
                session: Uuid::new_v4(),
                server: self.server.clone(),
                incarnation,
                at_ms: 0,
                reason: None,
                channel: None,
            },
            partition,
            last: None,
        };
        s.emit(EventKind::Connected, None, None);
        Some(s)
    }

    /// Produces `event` in `partition`, retrying refusals and failed acks
    /// until it is acknowledged or [`GIVE_UP_AFTER`]. True once written.
    pub async fn write(&self, partition: u32, event: &ConnectionEvent) -> bool {
        let record = [(partition, event.user.to_string(), event.encode())];
        let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let outcome = match self.producer.enqueue(&self.topic, &record) {
                Ok(acks) => acks.wait().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    self.metrics.connection_events.inc();
                    return true;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    self.metrics.connection_events_lost.inc();
                    warn!(session = %event.session, event = ?event.event, error = %e, "connection event not written");
                    return false;
                }
                Err(_) => {
                    let never = tokio_util::sync::CancellationToken::new();
                    backoff.wait(&never).await;
                }
            }
        }
    }
}

/// One session's events, written in the order they happened.
pub struct SessionEvents {
    log: EventLog,
    template: ConnectionEvent,
    partition: u32,
    /// The previous event's writer: the next one waits for it.
    last: Option<JoinHandle<()>>,
}

impl SessionEvents {
    /// The session's id, as its events carry it.
    pub fn session(&self) -> Uuid {
        self.template.session
    }

    pub fn subscribed(&mut self, channel: &ChannelName) {
        self.emit(EventKind::Subscribed, None, Some(channel.clone()));
    }

    pub fn unsubscribed(&mut self, channel: &ChannelName) {
        self.emit(EventKind::Unsubscribed, None, Some(channel.clone()));
    }

    /// The session's last event. Written only while the registration it
    /// connected under is in force; otherwise the registration is gone
    /// (or going) and the partition's owner reports it (`reaper`), so
    /// writing it here too could report the session twice.
    pub fn disconnected(mut self, reason: DisconnectReason) {
        if *self.log.incarnation.borrow() == Some(self.template.incarnation) {
            self.emit(EventKind::Disconnected, Some(reason), None);
        }
    }

    fn emit(
        &mut self,
        kind: EventKind,
        reason: Option<DisconnectReason>,
        channel: Option<ChannelName>,
    ) {
        let event = ConnectionEvent {
            event: kind,
            at_ms: now_ms(),
            reason,
            channel,
            ..self.template.clone()
        };
        let (log, partition, previous) = (self.log.clone(), self.partition, self.last.take());
        self.last = Some(self.log.writing.spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            log.write(partition, &event).await;
        }));
    }
}
