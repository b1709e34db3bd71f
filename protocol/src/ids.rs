//! Identifiers (docs/protocol.md, "Identifiers"), validated on construction and on decode.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must be 1 to {max} characters, got {len}")]
    Length {
        kind: &'static str,
        max: usize,
        len: usize,
    },
    #[error("{kind} may only contain letters, digits and {allowed}")]
    Alphabet {
        kind: &'static str,
        allowed: &'static str,
    },
    #[error("{kind} must not contain control characters")]
    Control { kind: &'static str },
    #[error("conversation ids starting with \"dm:\" are direct messages and must be \"dm:a,b\" with a < b")]
    BadDirect,
    #[error("channel names must be \"ch:<name>\" with a name of the id alphabet")]
    Channel,
}

fn in_alphabet(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-')
}

pub(crate) fn check_alphabet(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    check_length(kind, s, max)?;
    if !s.chars().all(in_alphabet) {
        return Err(IdError::Alphabet {
            kind,
            allowed: ". _ : @ -",
        });
    }
    Ok(())
}

fn check_length(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    let len = s.chars().count();
    if len == 0 || len > max {
        return Err(IdError::Length { kind, max, len });
    }
    Ok(())
}

/// User ids also take `|`: identity providers name users `auth0|5f7c…` or
/// `google-oauth2|1043…`, and a token's `sub` is the user id as it is.
fn check_user(s: &str) -> Result<(), IdError> {
    check_length("user_id", s, 128)?;
    if !s.chars().all(|c| in_alphabet(c) || c == '|') {
        return Err(IdError::Alphabet {
            kind: "user_id",
            allowed: ". _ : @ - |",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(&s)?;
                Ok(Self(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        // Hash, Eq and Ord are the inner string's, so maps keyed by an id
        // can be looked up by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
pub(crate) use string_id;

string_id!(
    /// A peer: the token's user claim (`sub`). 1–128 chars of `[A-Za-z0-9._:@|-]`.
    UserId,
    check_user
);
string_id!(
    /// One connection of a user. 1–64 chars of the id alphabet.
    DeviceId,
    |s| check_alphabet("device_id", s, 64)
);
string_id!(
    /// A messaging server's registration name in etcd and in the partition
    /// map. 1–64 chars of the id alphabet.
    ServerId,
    |s| check_alphabet("server_id", s, 64)
);

impl ServerId {
    /// `ms-` and ten random hex digits, for servers started without an id.
    pub fn random() -> Self {
        Self(format!("ms-{}", &Uuid::new_v4().simple().to_string()[..10]))
    }
}

string_id!(
    /// The sender's retry key: 1–128 characters, no control characters.
    ClientMsgId,
    |s| {
        let len = s.chars().count();
        if len == 0 || len > 128 {
            return Err(IdError::Length { kind: "client_msg_id", max: 128, len });
        }
        if s.chars().any(char::is_control) {
            return Err(IdError::Control { kind: "client_msg_id" });
        }
        Ok(())
    }
);
string_id!(
    /// A group, room or IoT topic, or the implicit direct conversation `dm:a,b`.
    ConversationId,
    check_conversation
);

fn check_conversation(s: &str) -> Result<(), IdError> {
    match s.strip_prefix("dm:") {
        Some(rest) => {
            let (a, b) = rest.split_once(',').ok_or(IdError::BadDirect)?;
            let (a, b) = (UserId::new(a), UserId::new(b));
            match (a, b) {
                (Ok(a), Ok(b)) if a < b => Ok(()),
                _ => Err(IdError::BadDirect),
            }
        }
        None => check_alphabet("conversation_id", s, 128),
    }
}

impl From<&crate::channel::ChannelName> for ConversationId {
    /// `ch:<name>` is in the conversation alphabet and never `dm:`.
    fn from(c: &crate::channel::ChannelName) -> Self {
        Self(c.as_str().to_owned())
    }
}

impl DeviceId {
    /// A fresh random device id for clients that did not choose one.
    pub fn random() -> Self {
        Self(Uuid::new_v4().simple().to_string())
    }
}

impl ConversationId {
    /// The implicit direct conversation between two users, ordered so both
    /// sides name it the same.
    pub fn direct(a: &UserId, b: &UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        Self(format!("dm:{lo},{hi}"))
    }

    /// The two members of a direct conversation, or `None` for a group.
    pub fn direct_members(&self) -> Option<(UserId, UserId)> {
        let (a, b) = self.0.strip_prefix("dm:")?.split_once(',')?;
        Some((UserId(a.to_owned()), UserId(b.to_owned())))
    }

    pub fn is_direct(&self) -> bool {
        self.0.starts_with("dm:")
    }
}

/// UUID v5 of (sender, client_msg_id): a retried send has the same id everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MsgId(pub Uuid);

/// The namespace of Switchboard message ids (a fixed, arbitrary UUID).
pub const MSG_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1d_0a4e_8c2f_4f6a_9d3e_7a61_c0de_5eed);

impl MsgId {
    pub fn derive(sender: &UserId, client_msg_id: &ClientMsgId) -> Self {
        // The NUL separator cannot occur in a user id, so distinct pairs
        // never produce the same name.
        let mut name = Vec::with_capacity(sender.0.len() + client_msg_id.0.len() + 1);
        name.extend_from_slice(sender.0.as_bytes());
        name.push(0);
        name.extend_from_slice(client_msg_id.0.as_bytes());
        Self(Uuid::new_v5(&MSG_ID_NAMESPACE, &name))
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn good_ids() {
        for s in [
            "a",
            "alice",
            "bob@example.com",
            "u:1.2_3-4",
            &"x".repeat(128),
        ] {
            assert!(UserId::new(s).is_ok(), "{s}");
            assert!(ConversationId::new(s).is_ok(), "{s}");
        }
        assert!(DeviceId::new("x".repeat(64)).is_ok());
        assert!(ClientMsgId::new("any text, even spaces & ünïcode").is_ok());
        assert!(ConversationId::new("dm:alice,bob").is_ok());
    }

    #[test]
    fn bad_ids() {
        for s in [
            "",
            "has space",
            "slash/",
            "comma,",
            "ünïcode",
            &"x".repeat(129),
            "a\nb",
        ] {
            assert!(UserId::new(s).is_err(), "{s:?}");
        }
        assert!(DeviceId::new("x".repeat(65)).is_err());
        assert!(ClientMsgId::new("").is_err());
        assert!(ClientMsgId::new("x".repeat(129)).is_err());
        assert!(ClientMsgId::new("tab\there").is_err());
        for s in [
            "dm:bob,alice",
            "dm:alice",
            "dm:alice,alice",
            "dm:a b,c",
            "dm:",
        ] {
            assert_eq!(ConversationId::new(s), Err(IdError::BadDirect), "{s}");
        }
    }

    #[test]
    fn ids_validate_on_decode() {
        let ok: Result<UserId, _> = serde_json::from_str("\"alice\"");
        assert!(ok.is_ok());
        let bad: Result<UserId, _> = serde_json::from_str("\"al ice\"");
        assert!(bad.is_err());
    }

    #[test]
    fn direct_conversation_is_symmetric() {
        let (a, b) = (UserId::new("zed").unwrap(), UserId::new("amy").unwrap());
        let c = ConversationId::direct(&a, &b);
        assert_eq!(c.as_str(), "dm:amy,zed");
        assert_eq!(c, ConversationId::direct(&b, &a));
        assert_eq!(c.direct_members(), Some((b, a)));
        assert!(ConversationId::new("room1")
            .unwrap()
            .direct_members()
            .is_none());
    }

    #[test]
    fn msg_id_is_deterministic_and_separates_senders() {
        let (a, b) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        let c = ClientMsgId::new("1").unwrap();
        assert_eq!(MsgId::derive(&a, &c), MsgId::derive(&a, &c));
        assert_ne!(MsgId::derive(&a, &c), MsgId::derive(&b, &c));
        assert_eq!(MsgId::derive(&a, &c).0.get_version_num(), 5);
    }

    proptest! {
        #[test]
        fn alphabet_ids_round_trip(s in "[A-Za-z0-9._:@-]{1,128}") {
            let id = UserId::new(s.clone()).unwrap();
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), id);
        }
    }
}
