//! Everything the load generator sent and every delivery each device saw:
//! the ground truth the loss, duplicate and PostgreSQL checks compare with.

use hdrhistogram::Histogram;
use protocol::frames::Message;
use protocol::{Kind, MsgId};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Sent {
    kind: Kind,
    expected: Vec<u32>,
    acked: bool,
    /// Acked only after the final resume began: its deliveries cannot be
    /// checked (a device may have finished its resume before).
    late: bool,
    /// A channel publication: never written to PostgreSQL.
    channel: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    pub sends: u64,
    pub acked: u64,
    pub send_errors: u64,
    pub send_error_kinds: std::collections::BTreeMap<String, u64>,
    pub chat_deliveries: u64,
    pub ephemeral_deliveries: u64,
    pub replayed: u64,
    /// The same msg_id handed to one device's app twice (the client library
    /// dedupes within its own lifetime; the final resume starts a new one).
    pub duplicates: u64,
    /// Duplicate frames the client library dropped before the app saw them.
    pub client_dropped_duplicates: u64,
    pub connects: u64,
    pub resumes: u64,
    /// `resumed: false` after a hello with a cursor (a gap the app must fill).
    pub resume_refused: u64,
    pub disconnects: u64,
    pub disconnect_codes: std::collections::BTreeMap<String, u64>,
}

/// The outcome of comparing what was sent with what arrived.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub chat_sent: u64,
    pub chat_acked: u64,
    pub chat_unacked: u64,
    /// Acked after the final resume began (excluded from the loss count).
    pub chat_acked_late: u64,
    pub ephemeral_sent: u64,
    pub expected_chat_deliveries: u64,
    pub delivered_chat: u64,
    /// Expected (device, acked chat message) pairs that never arrived.
    pub lost: u64,
    pub expected_ephemeral_deliveries: u64,
    pub delivered_ephemeral: u64,
    pub lost_examples: Vec<String>,
}

pub struct Ledger {
    inner: Mutex<Inner>,
}

struct Inner {
    sealed: bool,
    sent: HashMap<MsgId, Sent>,
    received: Vec<HashSet<MsgId>>,
    live: Histogram<u64>,
    all: Histogram<u64>,
    counts: Counts,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Ledger {
    pub fn new(devices: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sealed: false,
                sent: HashMap::new(),
                received: vec![HashSet::new(); devices],
                live: histogram(),
                all: histogram(),
                counts: Counts::default(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Before the send goes out, so an early delivery is never "unknown".
    pub fn sending(&self, id: MsgId, kind: Kind, expected: &[usize]) {
        self.with(|i| {
            i.counts.sends += 1;
            let expected = expected.iter().map(|&d| d as u32).collect();
            i.sent.insert(
                id,
                Sent {
                    kind,
                    expected,
                    acked: false,
                    late: false,
                    channel: false,
                },
            );
        });
    }

    pub fn acked(&self, id: MsgId) {
        self.with(|i| {
            i.counts.acked += 1;
            let sealed = i.sealed;
            if let Some(s) = i.sent.get_mut(&id) {
                s.acked = true;
                s.late = sealed;
            }
        });
    }

    /// The final resume begins: later acks are reported, not checked.
    pub fn seal(&self) {
        self.with(|i| i.sealed = true);
    }

    pub fn send_failed(&self, kind: &str) {
        self.with(|i| {
            i.counts.send_errors += 1;
            *i.counts
                .send_error_kinds
                .entry(kind.to_owned())
                .or_default() += 1;
        });
    }

    pub fn delivered(&self, device: usize, m: &Message) {
        let sent_us = serde_json::from_str::<serde_json::Value>(m.body.get())
            .ok()
            .and_then(|b| b["t"].as_u64());
        let latency = sent_us.map(|t| now_us().saturating_sub(t).max(1));
        self.with(|i| {
            let fresh = i
                .received
                .get_mut(device)
                .is_some_and(|r| r.insert(m.msg_id));
            if !fresh {
                i.counts.duplicates += 1;
                return;
            }
            match m.kind {
                Kind::Chat => i.counts.chat_deliveries += 1,
                Kind::Ephemeral => i.counts.ephemeral_deliveries += 1,
            }
            if m.replay {
                i.counts.replayed += 1;
            }
            if let Some(l) = latency {
                let _ = i.all.record(l);
                if !m.replay {
                    let _ = i.live.record(l);
                }
            }
        });
    }

    pub fn connected(&self, resumed: bool, had_cursor: bool) {
        self.with(|i| {
            i.counts.connects += 1;
            if resumed {
                i.counts.resumes += 1;
            } else if had_cursor {
                i.counts.resume_refused += 1;
            }
        });
    }

    pub fn disconnected(&self, code: Option<u16>) {
        self.with(|i| {
            i.counts.disconnects += 1;
            let key = code.map_or("none".to_owned(), |c| c.to_string());
            *i.counts.disconnect_codes.entry(key).or_default() += 1;
        });
    }

    pub fn client_duplicates(&self, n: u64) {
        self.with(|i| i.counts.client_dropped_duplicates += n);
    }

    pub fn counts(&self) -> Counts {
        self.with(|i| i.counts.clone())
    }

    pub fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        self.with(|i| (i.live.clone(), i.all.clone()))
    }

    /// `id` (already `sending`) is a channel publication.
    pub fn to_channel(&self, id: MsgId) {
        self.with(|i| {
            if let Some(s) = i.sent.get_mut(&id) {
                s.channel = true;
            }
        });
    }

    /// Distinct chat msg_ids the generator sent (acked or not) that
    /// PostgreSQL must hold: every chat message but channel publications.
    pub fn chat_ids(&self) -> HashSet<MsgId> {
        self.with(|i| {
            i.sent
                .iter()
                .filter(|(_, s)| s.kind == Kind::Chat && !s.channel)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Whether every acked chat message reached every device it must.
    pub fn complete(&self) -> bool {
        self.tally().lost == 0
    }

    pub fn tally(&self) -> Tally {
        self.with(|i| {
            let mut t = Tally::default();
            for (id, s) in &i.sent {
                let got = s
                    .expected
                    .iter()
                    .filter(|&&d| i.received.get(d as usize).is_some_and(|r| r.contains(id)))
                    .count() as u64;
                match s.kind {
                    Kind::Ephemeral => {
                        t.ephemeral_sent += 1;
                        t.expected_ephemeral_deliveries += s.expected.len() as u64;
                        t.delivered_ephemeral += got;
                    }
                    Kind::Chat => {
                        t.chat_sent += 1;
                        if !s.acked {
                            t.chat_unacked += 1;
                            continue;
                        }
                        if s.late {
                            t.chat_acked_late += 1;
                            continue;
                        }
                        t.chat_acked += 1;
                        t.expected_chat_deliveries += s.expected.len() as u64;
                        t.delivered_chat += got;
                        let lost = s.expected.len() as u64 - got;
                        if lost > 0 && t.lost_examples.len() < 10 {
                            t.lost_examples.push(format!("{id}: {lost} device(s)"));
                        }
                        t.lost += lost;
                    }
                }
            }
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{ClientMsgId, UserId};

    fn id(n: u32) -> MsgId {
        let u = UserId::new("u").expect("user");
        MsgId::derive(&u, &ClientMsgId::new(format!("m{n}")).expect("cmid"))
    }

    fn message(n: u32, kind: Kind, replay: bool) -> Message {
        let json = serde_json::json!({
            "msg_id": id(n), "conversation_id": "dm:a,b", "from": "a", "from_device": "d0",
            "kind": kind, "body": {"t": now_us()}, "sent_at_ms": 0, "replay": replay,
        });
        serde_json::from_value(json).expect("message")
    }

    #[test]
    fn counts_what_never_arrived_for_acked_chat_only() {
        let l = Ledger::new(4);
        l.sending(id(1), Kind::Chat, &[0, 1, 2]);
        l.sending(id(2), Kind::Chat, &[0, 3]);
        l.sending(id(3), Kind::Ephemeral, &[1, 2]);
        l.acked(id(1));
        l.acked(id(3));
        l.delivered(0, &message(1, Kind::Chat, false));
        l.delivered(2, &message(1, Kind::Chat, true));
        l.delivered(1, &message(3, Kind::Ephemeral, false));
        let t = l.tally();
        assert_eq!((t.chat_sent, t.chat_acked, t.chat_unacked), (2, 1, 1));
        assert_eq!(
            (t.expected_chat_deliveries, t.delivered_chat, t.lost),
            (3, 2, 1)
        );
        assert_eq!(
            (t.expected_ephemeral_deliveries, t.delivered_ephemeral),
            (2, 1)
        );
        assert!(!l.complete());
        l.delivered(1, &message(1, Kind::Chat, false));
        assert!(l.complete());
        let c = l.counts();
        assert_eq!((c.replayed, c.duplicates), (1, 0));
        let (live, all) = l.histograms();
        assert_eq!((live.len(), all.len()), (3, 4));
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_late_acks_are_set_apart() {
        let l = Ledger::new(2);
        l.sending(id(1), Kind::Chat, &[0, 1]);
        l.delivered(0, &message(1, Kind::Chat, false));
        l.delivered(0, &message(1, Kind::Chat, true));
        assert_eq!(l.counts().duplicates, 1);
        l.seal();
        l.acked(id(1));
        let t = l.tally();
        assert_eq!((t.chat_acked, t.chat_acked_late, t.lost), (0, 1, 0));
    }

    #[test]
    fn postgresql_holds_chat_but_not_channel_publications() {
        let l = Ledger::new(2);
        l.sending(id(1), Kind::Chat, &[0, 1]);
        l.sending(id(2), Kind::Ephemeral, &[1]);
        l.sending(id(3), Kind::Chat, &[1]);
        l.to_channel(id(3));
        assert_eq!(l.chat_ids(), [id(1)].into_iter().collect());
    }
}
