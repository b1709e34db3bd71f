//! Building outgoing frames: a consumed record is serialised once and the
//! bytes are shared by every device it goes to.

use axum::extract::ws::Utf8Bytes;
use protocol::frames::Message;
use protocol::{Cursor, Kind, Record, ServerFrame};

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
    })
}

pub fn live_frame(record: &Record, log_epoch: &str, offset: i64) -> Utf8Bytes {
    Utf8Bytes::from(message(record, log_epoch, offset, false).to_json())
}

pub fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

/// A message read back from PostgreSQL, as the client would have seen it live.
/// The row came from a validated record, so it is relayed without re-checking.
pub fn stored_message(
    row: &crate::store::StoredMessage,
    log_epoch: &str,
    replay: bool,
) -> Utf8Bytes {
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        msg_id: uuid::Uuid,
        conversation_id: &'a str,
        from: &'a str,
        from_device: &'a str,
        kind: &'static str,
        body: &'a serde_json::value::RawValue,
        sent_at_ms: i64,
        cursor: String,
        replay: bool,
    }
    let null = serde_json::value::to_raw_value(&serde_json::Value::Null).ok();
    let body = serde_json::value::RawValue::from_string(row.body.clone())
        .ok()
        .or(null);
    let Some(body) = body else {
        return Utf8Bytes::from_static("{}");
    };
    let frame = Stored {
        ty: "message",
        msg_id: row.msg_id,
        conversation_id: &row.conversation_id,
        from: &row.sender,
        from_device: &row.sender_device,
        kind: Kind::Chat.as_str(),
        body: &body,
        sent_at_ms: row.sent_at_ms,
        cursor: Cursor::new(log_epoch, row.kafka_offset).to_string(),
        replay,
    };
    Utf8Bytes::from(serde_json::to_string(&frame).unwrap_or_default())
}
