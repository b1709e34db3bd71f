//! Building outgoing frames from protocol types: a consumed record is
//! serialised once and the bytes are shared by every device it goes to.

use axum::extract::ws::Utf8Bytes;
use protocol::api::HistoryMessage;
use protocol::frames::Message;
use protocol::{
    ChannelRecord, ConversationId, Cursor, DeviceId, EncodeError, IdError, Kind, MsgId, Record,
    ServerFrame, UserId,
};
use serde_json::value::RawValue;
use std::time::Instant;
use store::StoredMessage;

/// A stored row that no longer reads as a message (it was valid when written).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("stored message {msg_id} has a bad id: {source}")]
    Id { msg_id: uuid::Uuid, source: IdError },
    #[error("stored message {msg_id} has a body that is not JSON: {source}")]
    Body {
        msg_id: uuid::Uuid,
        source: serde_json::Error,
    },
}

pub fn message(record: &Record, log_epoch: &str, offset: i64, replay: bool) -> ServerFrame {
    ServerFrame::Message(Message {
        msg_id: record.msg_id,
        conversation_id: record.conversation_id.clone(),
        from: record.sender.clone(),
        from_device: record.sender_device.clone(),
        kind: record.kind,
        body: record.body.clone(),
        sent_at_ms: record.sent_at_ms,
        cursor: (record.kind == Kind::Chat).then(|| Cursor::new(log_epoch, offset)),
        replay,
        channel: None,
        anycast: false,
    })
}

/// A channel publication. Every one carries the channel's cursor (an
/// ephemeral one too: it moves the position, it is just never recovered);
/// `conversation_id` repeats the channel name for clients that read only it.
pub fn channel_message(
    record: &ChannelRecord,
    log_epoch: &str,
    offset: i64,
    replay: bool,
) -> ServerFrame {
    ServerFrame::Message(Message {
        msg_id: record.msg_id,
        conversation_id: ConversationId::from(&record.channel),
        from: record.sender.clone(),
        from_device: record.sender_device.clone(),
        kind: record.kind,
        body: record.body.clone(),
        sent_at_ms: record.sent_at_ms,
        cursor: Some(Cursor::new(log_epoch, offset)),
        replay,
        channel: Some(record.channel.clone()),
        anycast: record.anycast,
    })
}

/// A stored row as a history page shows it.
pub fn history_message(row: &StoredMessage) -> Result<HistoryMessage, RowError> {
    let msg_id = row.msg_id;
    let id = |source| RowError::Id { msg_id, source };
    Ok(HistoryMessage {
        msg_id: MsgId(msg_id),
        conversation_id: ConversationId::new(row.conversation_id.as_str()).map_err(id)?,
        from: UserId::new(row.sender.as_str()).map_err(id)?,
        from_device: DeviceId::new(row.sender_device.as_str()).map_err(id)?,
        body: RawValue::from_string(row.body.clone())
            .map_err(|source| RowError::Body { msg_id, source })?,
        sent_at_ms: row.sent_at_ms,
    })
}

/// A message read back from PostgreSQL, as the client would have seen it live.
pub fn stored_message(
    row: &StoredMessage,
    log_epoch: &str,
    replay: bool,
) -> Result<ServerFrame, RowError> {
    let m = history_message(row)?;
    Ok(ServerFrame::Message(Message {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id,
        from: m.from,
        from_device: m.from_device,
        kind: Kind::Chat,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        cursor: Some(Cursor::new(log_epoch, row.kafka_offset)),
        replay,
        channel: None,
        anycast: false,
    }))
}

/// A frame's text, serialised once and shared (a cheap clone) by every
/// device it goes to. Only the session turns it into a WebSocket message.
/// A device's copy notes when it was queued (the `written` stage).
#[derive(Debug, Clone)]
pub struct Text(Utf8Bytes, Option<Instant>);

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Text {}

impl Text {
    pub fn into_ws(self) -> Utf8Bytes {
        self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// When this copy was queued for a device, if it was.
    pub fn queued_at(&self) -> Option<Instant> {
        self.1
    }

    /// No frame: what a sink that sends no record as it is carries.
    pub fn empty() -> Self {
        Self(Utf8Bytes::from_static(""), None)
    }
}

impl crate::delivery::Queued for Text {
    fn queued(&self) -> Self {
        Self(self.0.clone(), Some(Instant::now()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(Utf8Bytes::from(s), None)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The frame's text, ready for the socket.
pub fn encode(frame: &ServerFrame) -> Result<Text, EncodeError> {
    frame.to_json().map(Text::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_row_reads_like_the_live_frame() {
        let row = StoredMessage {
            msg_id: uuid::Uuid::nil(),
            conversation_id: "dm:a,b".into(),
            sender: "a".into(),
            sender_device: "phone".into(),
            body: r#"{"text":"hi"}"#.into(),
            sent_at_ms: 7,
            kafka_offset: 41,
        };
        let text = encode(&stored_message(&row, "e1", true).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["body"]["text"], "hi");
        assert_eq!(v["cursor"], "e1:41");
        assert_eq!(v["replay"], true);
        let bad = StoredMessage {
            body: "not json".into(),
            ..row
        };
        assert!(stored_message(&bad, "e1", true).is_err());
    }
}
