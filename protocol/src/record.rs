//! The Kafka record (docs/protocol.md, "Kafka record"): one per partition holding a recipient.

use crate::ids::{ConversationId, DeviceId, MsgId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Persisted and replayable.
    #[default]
    Chat,
    /// Live only: typing, presence, locations.
    Ephemeral,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Ephemeral => "ephemeral",
        }
    }
}

/// Unknown fields are ignored on decode so that older readers keep working
/// while newer writers roll out; an incompatible change bumps `v`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub msg_id: MsgId,
    pub kind: Kind,
    pub conversation_id: ConversationId,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub recipients: Vec<UserId>,
    /// Kept as raw JSON: servers relay it without re-parsing.
    pub body: Box<RawValue>,
    pub sent_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid json for version {RECORD_VERSION}: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record version {0} is newer than this reader ({RECORD_VERSION})")]
    Version(u32),
}

/// Where a reader met a record too new for it (see
/// [`RecordError::too_new`]): its partition is read no further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the record at partition {partition} offset {offset} has version {version}, newer than this reader ({RECORD_VERSION}); upgrade it")]
pub struct TooNew {
    pub partition: u32,
    pub offset: i64,
    pub version: u32,
}

impl RecordError {
    /// Where this error is a record too new for this reader, that record.
    pub fn too_new_at(&self, partition: u32, offset: i64) -> Option<TooNew> {
        let version = self.too_new()?;
        Some(TooNew {
            partition,
            offset,
            version,
        })
    }

    /// The version of a record written by a newer release than this
    /// reader: an upgrade is under way (or its writers were switched on
    /// before every reader understood them). Never skipped — whoever reads
    /// past it moves cursors beyond a message it did not deliver; the reader
    /// stops at it instead.
    pub fn too_new(&self) -> Option<u32> {
        match self {
            RecordError::Version(v) if *v > RECORD_VERSION => Some(*v),
            _ => None,
        }
    }
}

/// Decodes a record of this version; `v` reads its version field.
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    v: fn(&T) -> u32,
) -> Result<T, RecordError> {
    let rec: T = match serde_json::from_slice(bytes) {
        Ok(rec) => rec,
        // A newer version may not even have this version's shape: tell it
        // from a poison record by its `v` alone (only on this rare path).
        Err(e) => {
            #[derive(Deserialize)]
            struct Versioned {
                v: u32,
            }
            return Err(match serde_json::from_slice::<Versioned>(bytes) {
                Ok(Versioned { v }) if v > RECORD_VERSION => RecordError::Version(v),
                _ => RecordError::Json(e),
            });
        }
    };
    match v(&rec) {
        RECORD_VERSION => Ok(rec),
        other => Err(RecordError::Version(other)),
    }
}

impl Record {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_versioned(bytes, |r: &Record| r.v)
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        Ok(serde_json::to_vec(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_design_example_and_ignores_unknown_fields() {
        let json = r#"{"v":1,"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b3c","kind":"chat",
            "conversation_id":"c1","sender":"alice","sender_device":"phone",
            "recipients":["bob","carol"],"body":{"text":"hi"},"sent_at_ms":1763700000000,
            "future_field":[1,2,3]}"#;
        let rec = Record::decode(json.as_bytes()).unwrap();
        assert_eq!(rec.kind, Kind::Chat);
        assert_eq!(rec.recipients.len(), 2);
        assert_eq!(rec.body.get(), r#"{"text":"hi"}"#);
        let again = Record::decode(&rec.encode().unwrap()).unwrap();
        assert_eq!(again.msg_id, rec.msg_id);
        assert_eq!(again.body.get(), rec.body.get());
    }

    #[test]
    fn rejects_bad_records() {
        assert!(Record::decode(b"not json").is_err());
        assert!(Record::decode(br#"{"v":1}"#).is_err());
        let v2 = r#"{"v":2,"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b3c","kind":"chat",
            "conversation_id":"c1","sender":"a","sender_device":"d","recipients":[],
            "body":null,"sent_at_ms":0}"#;
        assert!(matches!(
            Record::decode(v2.as_bytes()),
            Err(RecordError::Version(2))
        ));
        let bad_user = r#"{"v":1,"msg_id":"6f1c3c1e-9a57-5d8e-8f1b-0e2b7c1a2b3c","kind":"chat",
            "conversation_id":"c1","sender":"a b","sender_device":"d","recipients":[],
            "body":null,"sent_at_ms":0}"#;
        assert!(Record::decode(bad_user.as_bytes()).is_err());
    }

    #[test]
    fn a_newer_record_is_too_new_whatever_its_shape_and_poison_is_not() {
        let v2 = Record::decode(br#"{"v":2,"msg_id":"x","payload":"another shape"}"#);
        assert!(v2.as_ref().is_err_and(|e| e.too_new() == Some(2)), "{v2:?}");
        for poison in [
            &b"not json"[..],
            br#"{"v":1}"#,
            br#"{"v":0,"msg_id":1}"#,
            br#"{"kind":"chat"}"#,
        ] {
            let e = Record::decode(poison).expect_err("poison decodes");
            assert_eq!(e.too_new(), None, "{e}");
        }
    }
}
