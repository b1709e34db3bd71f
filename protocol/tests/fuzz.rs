//! Arbitrary input never panics a decoder: every client frame, server frame,
//! Kafka record, cursor and HTTP body either decodes or fails with an error
//! (for frames, one of the stable codes). Many cases, bounded time.

use proptest::prelude::*;
use protocol::frames::Send;
use protocol::{ClientFrame, Cursor, ErrorCode, Record, ServerFrame};
use serde_json::Value;

const CASES: u32 = 4096;

/// Any JSON value, nested a few levels, with the field names our frames use
/// so that decoders get past the envelope often.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("id".to_owned()),
        Just("token".to_owned()),
        Just("cursor".to_owned()),
        Just("client_msg_id".to_owned()),
        Just("to".to_owned()),
        Just("user".to_owned()),
        Just("conversation".to_owned()),
        Just("body".to_owned()),
        Just("kind".to_owned()),
        Just("msg_id".to_owned()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just("hello".to_owned()),
            Just("send".to_owned()),
            Just("chat".to_owned()),
            Just("ephemeral".to_owned()),
            ".{0,40}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn known(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadJson | ErrorCode::UnknownType | ErrorCode::InvalidField | ErrorCode::TooLarge
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn client_frames_from_any_text(text in ".{0,300}") {
        if let Err(e) = ClientFrame::parse(&text) {
            prop_assert!(known(e.code), "{:?}", e);
        }
    }

    #[test]
    fn client_frames_from_any_json(v in json()) {
        if let Err(e) = ClientFrame::parse(&v.to_string()) {
            prop_assert!(known(e.code), "{:?}", e);
        }
    }

    #[test]
    fn server_frames_from_any_json(v in json()) {
        let _ = ServerFrame::parse(&v.to_string());
    }

    #[test]
    fn records_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Record::decode(&bytes);
    }

    #[test]
    fn records_from_any_json(v in json()) {
        let _ = Record::decode(v.to_string().as_bytes());
    }

    #[test]
    fn cursors_from_any_text(text in ".{0,80}") {
        if let Ok(c) = text.parse::<Cursor>() {
            prop_assert_eq!(c.to_string().parse::<Cursor>().ok(), Some(c));
        }
    }

    #[test]
    fn http_send_bodies_from_any_json(v in json()) {
        if let Ok(send) = serde_json::from_value::<Send>(v) {
            let _ = send.check_body();
        }
    }
}
