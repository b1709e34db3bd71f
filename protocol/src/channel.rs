//! Channels (docs/protocol.md, "Channels"): named streams that devices
//! subscribe to, carried by their own topic (`<topic>.channels`) that every
//! messaging server reads in full.

use crate::ids::{check_alphabet, DeviceId, IdError, MsgId, UserId};
use crate::record::{Kind, RecordError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// Every channel name starts with this.
pub const CHANNEL_PREFIX: &str = "ch:";

fn check_channel(s: &str) -> Result<(), IdError> {
    match s.strip_prefix(CHANNEL_PREFIX) {
        Some(rest) if !rest.is_empty() => check_alphabet("channel", s, 128),
        _ => Err(IdError::Channel),
    }
}

crate::ids::string_id!(
    /// `ch:<name>`: 4–128 characters of the id alphabet.
    ChannelName,
    check_channel
);

/// The channel topic that goes with the users' topic.
pub fn channel_topic(topic: &str) -> String {
    format!("{topic}.channels")
}

/// A token's `channels`/`publish` claim entry: a channel name, or a prefix
/// ending in `*` (`ch:vehicle.*` allows `ch:vehicle.42`; `ch:*` allows all).
pub fn pattern_allows(pattern: &str, channel: &ChannelName) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => prefix.starts_with(CHANNEL_PREFIX) && channel.as_str().starts_with(prefix),
        None => pattern == channel.as_str(),
    }
}

/// Whether any of `patterns` allows `channel`.
pub fn allowed<S: AsRef<str>>(patterns: &[S], channel: &ChannelName) -> bool {
    patterns.iter().any(|p| pattern_allows(p.as_ref(), channel))
}

/// One publication in the channel topic (key: the channel name). Unknown
/// fields are ignored on decode, as for [`crate::Record`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub v: u32,
    pub msg_id: MsgId,
    pub kind: Kind,
    pub channel: ChannelName,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub body: Box<RawValue>,
    pub sent_at_ms: i64,
    /// **(addition)** For one subscriber only (docs/protocol.md, "Anycast").
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub anycast: bool,
    /// An anycast's sticky key: the same subscriber while it stays subscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Set on a **handled mark**, not a publication: a subscriber handled
    /// the anycast publication with this msg_id. Never delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<MsgId>,
}

/// **(addition)** `handled`: this connection's app handled the anycast
/// publication `msg_id` of `channel`; it goes to no other subscriber.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handled {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    pub channel: ChannelName,
    pub msg_id: MsgId,
}

/// Longest anycast `key`, in bytes.
pub const MAX_ANYCAST_KEY: usize = 128;

/// An anycast request's `key` is 1–128 bytes and only with `anycast`.
pub fn check_anycast(anycast: bool, key: Option<&str>) -> Result<(), String> {
    match key {
        Some(_) if !anycast => Err("key is only for an anycast publication".into()),
        Some(k) if k.is_empty() || k.len() > MAX_ANYCAST_KEY => {
            Err(format!("key must be 1 to {MAX_ANYCAST_KEY} bytes"))
        }
        _ => Ok(()),
    }
}

impl ChannelRecord {
    /// Whether this is a handled mark rather than a publication.
    pub fn is_mark(&self) -> bool {
        self.handled.is_some()
    }

    /// Whether a subscribe with a cursor replays it: chat publications for
    /// every subscriber, never an anycast one (it went to one subscriber,
    /// which answered or was replaced) nor a mark.
    pub fn recoverable(&self) -> bool {
        self.kind == Kind::Chat && !self.anycast && !self.is_mark()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        crate::record::decode_versioned(bytes, |r: &ChannelRecord| r.v)
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        Ok(serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn names_need_the_prefix_and_the_alphabet() {
        assert!(ChannelName::new("ch:news").is_ok());
        assert!(ChannelName::new("ch:vehicle.42").is_ok());
        for bad in ["news", "ch:", "ch:a b", "ch:é", "dm:a,b", ""] {
            assert!(ChannelName::new(bad).is_err(), "{bad}");
        }
        assert!(ChannelName::new(format!("ch:{}", "x".repeat(126))).is_err());
    }

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        assert!(pattern_allows("ch:news", &ch("ch:news")));
        assert!(!pattern_allows("ch:news", &ch("ch:news2")));
        assert!(pattern_allows("ch:vehicle.*", &ch("ch:vehicle.42")));
        assert!(!pattern_allows("ch:vehicle.*", &ch("ch:vehicles")));
        assert!(pattern_allows("ch:*", &ch("ch:anything")));
        // A bare `*` is not a channel pattern: it would grant everything by accident.
        assert!(!pattern_allows("*", &ch("ch:news")));
        assert!(!allowed::<&str>(&[], &ch("ch:news")));
        assert!(allowed(&["ch:a", "ch:news"], &ch("ch:news")));
    }

    #[test]
    fn records_round_trip() {
        let json = r#"{"v":1,"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b3c","kind":"ephemeral",
            "channel":"ch:vehicle.7","sender":"system:fleet","sender_device":"api",
            "body":{"lat":1.5},"sent_at_ms":1,"later":true}"#;
        let rec = ChannelRecord::decode(json.as_bytes()).unwrap();
        assert_eq!(rec.channel.as_str(), "ch:vehicle.7");
        let again = ChannelRecord::decode(&rec.encode().unwrap()).unwrap();
        assert_eq!(again.body.get(), r#"{"lat":1.5}"#);
        assert!(ChannelRecord::decode(json.replace("ch:vehicle.7", "vehicle").as_bytes()).is_err());
        assert!(!rec.anycast && rec.key.is_none() && !rec.is_mark());
        assert!(!rec.recoverable(), "ephemeral");
        let chat = json.replace("ephemeral", "chat");
        let mut rec = ChannelRecord::decode(chat.as_bytes()).unwrap();
        assert!(rec.recoverable());
        rec.anycast = true;
        assert!(
            !rec.recoverable(),
            "an anycast publication is never replayed"
        );
        let mark = ChannelRecord::decode(&rec.encode().unwrap()).unwrap();
        assert!(mark.anycast, "the flag survives the log");
        rec.anycast = false;
        rec.handled = Some(rec.msg_id);
        assert!(
            !rec.recoverable() && rec.is_mark(),
            "a mark is never a message"
        );
    }

    proptest! {
        #[test]
        fn a_prefix_pattern_allows_exactly_its_extensions(a in "[a-z.]{1,10}", b in "[a-z.]{1,10}") {
            let pattern = format!("ch:{a}*");
            let name = ch(&format!("ch:{b}"));
            prop_assert_eq!(pattern_allows(&pattern, &name), b.starts_with(&a));
        }
    }
}
