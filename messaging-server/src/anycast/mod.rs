//! Anycast (docs/protocol.md, "Anycast"): a channel publication for one
//! subscriber. Every server reads every channel publication and knows every
//! subscribed session of a presence channel, so each picks the same
//! subscriber on its own ([`choose`]) and only the server holding it
//! delivers. A chat publication is followed ([`table`]) until a handled
//! mark for it comes through the channel's partition; a subscriber that
//! does not answer in time, or leaves, hands it on to one not tried before.

pub mod choose;
pub mod table;

use crate::channels::{ChannelHub, Offered, Publication};
use crate::ending::Ending;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use protocol::{ChannelName, Kind, MsgId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use table::{Chosen, GivenUp, Settings, Table};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Anycast {
    table: Mutex<Table>,
    /// Something changed: a publication came, a subscriber came or went.
    changed: Notify,
}

/// Who a run of channel publications goes to: the subscribed session each
/// anycast publication was given to (absent: to nobody here or anywhere).
pub type Targets = HashMap<MsgId, Uuid>;

impl Anycast {
    pub fn new(settings: Settings) -> Self {
        Self {
            table: Mutex::new(Table::new(settings)),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a run of the channel topic is dispatched: applies its handled
    /// marks and picks each anycast publication's first subscriber among
    /// `sessions` (a channel's subscribed sessions, cluster-wide).
    pub fn route(
        &self,
        run: &[Publication],
        sessions: impl Fn(&ChannelName) -> Vec<Uuid>,
    ) -> Targets {
        let mut targets = Targets::new();
        let now = Instant::now();
        let mut table = self.lock();
        let mut followed = false;
        for p in run {
            let r = &p.record;
            if let Some(done) = &r.handled {
                table.handled(done);
            } else if r.anycast {
                let seed = r.key.clone().unwrap_or_else(|| r.msg_id.0.to_string());
                let subs = sessions(&r.channel);
                let offer = Chosen {
                    channel: &r.channel,
                    frame: &p.frame,
                    sessions: &subs,
                    now,
                };
                let chat = r.kind == Kind::Chat;
                followed |= chat;
                if let Some(to) = table.publish(r.msg_id, &seed, chat, offer) {
                    targets.insert(r.msg_id, to);
                }
            }
        }
        drop(table);
        if followed {
            self.changed.notify_one();
        }
        targets
    }

    /// This server's subscriber answered `handled` (its mark is on the way).
    pub fn handled_here(&self, msg_id: &MsgId) {
        self.lock().handled(msg_id);
    }

    /// A channel's subscribers changed: offers to a session that left, and
    /// publications that had nobody, are reconsidered.
    pub fn subscribers_changed(&self) {
        self.changed.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Offers again what timed out or lost its subscriber, delivering the
    /// offers to sessions held here, until `stop`.
    pub async fn run(self: Arc<Self>, to: Deliver, stop: CancellationToken) {
        let far = Duration::from_secs(3600);
        let mut counted = GivenUp::default();
        loop {
            let changed = self.changed.notified();
            let (offers, next, given_up) = {
                let mut table = self.lock();
                let offers = table.reconsider(Instant::now(), |c| to.presence.channel_sessions(c));
                (offers, table.next_due(), table.given_up)
            };
            to.offer(&offers);
            to.metrics
                .anycast_given_up("overflowed")
                .inc_by(given_up.overflowed - counted.overflowed);
            to.metrics
                .anycast_given_up("expired")
                .inc_by(given_up.expired - counted.expired);
            counted = given_up;
            to.metrics.anycast_pending.set(self.pending() as i64);
            let until = next.map_or_else(|| tokio::time::Instant::now() + far, Into::into);
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = changed => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Where offers go: the sessions of this server, through the channel hub.
pub struct Deliver {
    pub presence: Arc<Presence>,
    pub channels: Arc<ChannelHub>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
}

impl Deliver {
    fn offer(&self, offers: &[table::Offer]) {
        for o in offers {
            match self.channels.offer(&o.channel, o.session, &o.frame) {
                Offered::Delivered => {
                    self.metrics.anycast_redelivered.inc();
                }
                Offered::NotHere => {}
                Offered::Full(user, conn) => {
                    let why = Ending::TooSlow(crate::delivery::Overflow::Queue);
                    self.hub.close_device(&user, conn, why);
                }
            }
        }
    }
}
