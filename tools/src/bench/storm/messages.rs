//! The storm's verdict on its DMs: every send answered, every acknowledged
//! one received exactly once, and for any that was not, where PostgreSQL
//! says it went (stored for its recipient but never delivered points at a
//! resume; not stored at all points at the send path or the persister).

use super::devices::DeviceEnd;
use super::Holders;
use protocol::Cursor;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// At most this many lost DMs are looked up and written into the report.
const SAMPLE: usize = 50;

#[derive(Default)]
pub(super) struct Messages {
    /// The run's devices: they fix each DM's recipient.
    total: usize,
    pub sent: u64,
    pub send_errors: u64,
    pub acked: BTreeSet<String>,
    /// `<user>/<key>`: each DM reaches its recipient and the sender's own
    /// device (a user's devices are kept in sync).
    received: BTreeSet<String>,
    /// Every `Event::Message` the devices were handed, duplicates included.
    deliveries: u64,
}

/// A lost DM as the report shows it.
#[derive(serde::Serialize, Debug, PartialEq)]
pub struct LostMessage {
    pub key: String,
    pub recipient: String,
    /// Where the persister stored it for `recipient`: (partition, offset).
    pub stored: Option<(i32, i64)>,
    /// Where the recipient's device stood when the bench stopped waiting.
    pub recipient_end: Option<DeviceEnd>,
    /// What that points at ([`why_lost`]).
    pub why: &'static str,
}

/// A DM not received when the bench stopped waiting, but by the time it
/// looked up where its recipient stood.
const RECEIVED_LATE: &str = "received late";

/// Where a lost DM went missing, from where it is stored and where its
/// recipient stood: `not stored` (the send path or the persister),
/// `recipient not back` / `not synced` (still reconnecting or replaying),
/// `recipient past it` (its cursor moved beyond the DM's offset without
/// it: a replay or a live delivery skipped it), `recipient behind it`
/// (synced, yet its cursor never reached the DM: live delivery stopped).
pub fn why_lost(stored: Option<(i32, i64)>, end: Option<&DeviceEnd>) -> &'static str {
    let Some((_, offset)) = stored else {
        return "not stored";
    };
    let Some(end) = end else {
        return "recipient unknown";
    };
    if !end.connected {
        return "recipient not back";
    }
    if !end.synced {
        return "recipient not synced";
    }
    let at = end.cursor.as_deref().and_then(|c| c.parse::<Cursor>().ok());
    match at {
        Some(c) if c.offset >= offset => "recipient past it",
        _ => "recipient behind it",
    }
}

impl Messages {
    fn add(&mut self, line: &str) -> anyhow::Result<()> {
        let r: serde_json::Value = serde_json::from_str(line)?;
        self.sent += r["sent"].as_u64().unwrap_or(0);
        self.send_errors += r["send_errors"].as_u64().unwrap_or(0);
        let keys = |k: &str| -> Vec<String> {
            r[k].as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.acked.extend(keys("acked"));
        let received = keys("received");
        self.deliveries += received.len() as u64;
        self.received.extend(received);
        Ok(())
    }

    /// Sends neither acknowledged nor refused.
    pub fn unanswered(&self) -> u64 {
        self.sent
            .saturating_sub(self.acked.len() as u64 + self.send_errors)
    }

    fn new(total: usize) -> Self {
        Self {
            total,
            ..Self::default()
        }
    }

    fn reached_recipient(&self, key: &str) -> bool {
        recipient_of(key, self.total)
            .is_some_and(|to| self.received.contains(&format!("{to}/{key}")))
    }

    /// Acknowledged and never received by its recipient (the sender's own
    /// copy does not count).
    pub fn lost(&self) -> impl Iterator<Item = &String> {
        self.acked.iter().filter(|k| !self.reached_recipient(k))
    }

    /// DMs (acknowledged or not) their recipient received.
    pub fn delivered(&self) -> u64 {
        let to_recipient = |entry: &&String| {
            entry
                .split_once('/')
                .is_some_and(|(user, key)| recipient_of(key, self.total).as_deref() == Some(user))
        };
        self.received.iter().filter(to_recipient).count() as u64
    }

    /// DMs handed to a device more than once (the client drops what it has
    /// seen by msg_id: any here is a DM that got a second id).
    pub fn duplicates(&self) -> u64 {
        self.deliveries - self.received.len() as u64
    }

    /// The first lost DMs, each with its recipient, where PostgreSQL has
    /// it and where the recipient's device stands (asked of `holders`).
    pub async fn look_up_lost(
        &self,
        db: &str,
        holders: &mut Holders,
    ) -> anyhow::Result<Vec<LostMessage>> {
        let keys: Vec<String> = self.lost().take(SAMPLE).cloned().collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let store = store::Store::connect_lazy(db, 1, Duration::from_secs(10))?;
        let stored = store.deliveries_by_body_field("k", &keys).await?;
        store.close().await;
        let recipients: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| recipient_of(k, self.total))
            .collect();
        let question = format!("devices {}", Vec::from_iter(recipients).join(" "));
        let mut ends = BTreeMap::new();
        for line in holders.ask(&question, "devices").await? {
            ends.extend(serde_json::from_str::<BTreeMap<String, DeviceEnd>>(&line)?);
        }
        // Asked after the ends: a DM its recipient had by then is in it. In
        // a run that did not settle, devices still receive between the last
        // report and the ends, and such a DM is late, not skipped.
        let mut later = Messages::new(self.total);
        for line in holders.ask("report", "report").await? {
            later.add(&line)?;
        }
        let late = |key: &str| later.reached_recipient(key);
        let lost = lost_with_places(keys, &stored, &ends, late, self.total);
        for l in &lost {
            println!("  lost: {l:?}");
        }
        Ok(lost)
    }
}

/// How many of `lost` each [`why_lost`] answer has.
pub fn tally_why(lost: &[LostMessage]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in lost {
        *out.entry(l.why.to_owned()).or_default() += 1;
    }
    out
}

/// Each key with its recipient, where it is stored for that recipient, and
/// where the recipient's device stands.
fn lost_with_places(
    keys: Vec<String>,
    stored: &[store::StoredDelivery],
    ends: &BTreeMap<String, DeviceEnd>,
    late: impl Fn(&str) -> bool,
    total: usize,
) -> Vec<LostMessage> {
    let at: BTreeMap<(&str, &str), (i32, i64)> = stored
        .iter()
        .map(|d| {
            let key = (d.value.as_str(), d.user.as_str());
            (key, (d.partition, d.offset))
        })
        .collect();
    keys.into_iter()
        .map(|key| {
            let recipient = recipient_of(&key, total).unwrap_or_default();
            let stored = at.get(&(key.as_str(), recipient.as_str())).copied();
            let recipient_end = ends.get(&recipient).cloned();
            let why = if late(&key) {
                RECEIVED_LATE
            } else {
                why_lost(stored, recipient_end.as_ref())
            };
            LostMessage {
                why,
                key,
                recipient,
                stored,
                recipient_end,
            }
        })
        .collect()
}

/// The recipient of the DM keyed `<sender>-<n>`.
fn recipient_of(key: &str, total: usize) -> Option<String> {
    let (me, n) = key.split_once('-')?;
    Some(super::devices::recipient(
        me.parse().ok()?,
        n.parse().ok()?,
        total,
    ))
}

/// Waits for every device to be back, then until every send is answered and
/// every acknowledged DM received, or `limit` has passed; what it has then.
pub(super) async fn settle(
    holders: &mut Holders,
    devices: usize,
    limit: Duration,
) -> anyhow::Result<Messages> {
    holders.all_back(devices, limit).await?;
    let deadline = Instant::now() + limit;
    let mut said = Instant::now();
    loop {
        let mut m = Messages::new(devices);
        for line in holders.ask("report", "report").await? {
            m.add(&line)?;
        }
        let (unanswered, lost) = (m.unanswered(), m.lost().count());
        if (unanswered == 0 && lost == 0) || Instant::now() > deadline {
            return Ok(m);
        }
        if said.elapsed() > Duration::from_secs(10) {
            println!("  {unanswered} sends unanswered, {lost} acknowledged DMs not received yet");
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_dm_is_told_by_where_its_recipient_stands() {
        let end = |connected, synced, cursor: Option<&str>| DeviceEnd {
            connected,
            synced,
            cursor: cursor.map(str::to_owned),
            last: Vec::new(),
        };
        let at = Some((3, 100));
        let cases = [
            (None, Some(end(true, true, Some("e:200"))), "not stored"),
            (at, None, "recipient unknown"),
            (
                at,
                Some(end(false, false, Some("e:200"))),
                "recipient not back",
            ),
            (
                at,
                Some(end(true, false, Some("e:50"))),
                "recipient not synced",
            ),
            (
                at,
                Some(end(true, true, Some("e:100"))),
                "recipient past it",
            ),
            (
                at,
                Some(end(true, true, Some("e:99"))),
                "recipient behind it",
            ),
            (at, Some(end(true, true, None)), "recipient behind it"),
        ];
        for (stored, e, want) in cases {
            assert_eq!(why_lost(stored, e.as_ref()), want, "{stored:?} {e:?}");
        }
    }

    #[test]
    fn duplicates_and_losses_are_counted_not_hidden() {
        let total = 100;
        let to = |k: &str| format!("{}/{k}", recipient_of(k, total).unwrap());
        let mut m = Messages::new(total);
        let report = serde_json::json!({
            "sent": 6, "send_errors": 1,
            "acked": ["0-0", "0-1", "1-0", "2-0"],
            // 0-0 twice at its recipient; 0-1 only at its sender's own
            // device (still lost); 2-0 not acknowledged yet but delivered.
            "received": [to("0-0"), to("0-0"), "s0/0-1", to("1-0"), to("2-0")],
        });
        m.add(&report.to_string()).unwrap();
        assert_eq!(m.unanswered(), 1);
        assert_eq!(m.duplicates(), 1);
        assert_eq!(m.lost().collect::<Vec<_>>(), ["0-1"]);
        assert_eq!(m.delivered(), 3);
    }

    #[test]
    fn a_lost_dm_is_placed_only_where_its_recipient_has_it() {
        let total = 1000;
        let to = super::super::devices::recipient(7, 3, total);
        let row = |user: &str, partition| store::StoredDelivery {
            value: "7-3".into(),
            user: user.into(),
            partition,
            offset: 42,
        };
        // The sender's own copy does not count as the recipient's.
        let stored = [row("s7", 1), row(&to, 5)];
        let end = DeviceEnd {
            connected: true,
            synced: true,
            cursor: Some("e1:50".into()),
            last: vec![(1, -2)],
        };
        let ends = BTreeMap::from([(to.clone(), end.clone())]);
        let keys = vec!["7-3".into(), "8-0".into()];
        let lost = lost_with_places(keys.clone(), &stored, &ends, |_| false, total);
        assert_eq!(lost[0].recipient, to);
        assert_eq!(lost[0].stored, Some((5, 42)));
        assert_eq!(lost[0].recipient_end, Some(end));
        assert_eq!(lost[0].why, "recipient past it");
        assert_eq!(lost[1].why, "not stored");
        assert_eq!(
            tally_why(&lost),
            BTreeMap::from([
                ("not stored".to_owned(), 1),
                ("recipient past it".to_owned(), 1)
            ])
        );
        assert_eq!(
            lost[1].recipient,
            super::super::devices::recipient(8, 0, total)
        );
        assert_eq!(lost[1].stored, None);
        let late = lost_with_places(keys, &stored, &ends, |k| k == "7-3", total);
        assert_eq!(
            (late[0].why, late[1].why),
            (RECEIVED_LATE, "not stored"),
            "a DM received by the time of the look-up was late, not skipped"
        );
    }
}
