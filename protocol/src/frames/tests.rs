use super::*;
use crate::ServerId;
use serde_json::json;

fn err(text: &str) -> FrameError {
    ClientFrame::parse(text).expect_err(text)
}

#[test]
fn hello_round_trip() {
    let text = r#"{"type":"hello","token":"t","device_id":"phone","cursor":"e:7","extra":1}"#;
    let ClientFrame::Hello(h) = ClientFrame::parse(text).unwrap() else {
        panic!("not hello")
    };
    assert_eq!(h.cursor, Some(Cursor::new("e", 7)));
    let again = ClientFrame::parse(&ClientFrame::Hello(h.clone()).to_json().unwrap()).unwrap();
    assert!(matches!(again, ClientFrame::Hello(x) if x.device_id == h.device_id));
    let minimal = ClientFrame::parse(r#"{"type":"hello","token":"t"}"#).unwrap();
    assert!(matches!(
        minimal,
        ClientFrame::Hello(Hello {
            device_id: None,
            cursor: None,
            epoch: None,
            ..
        })
    ));
}

#[test]
fn send_round_trip() {
    let text = r#"{"type":"send","id":5,"client_msg_id":"m1","to":{"conversation":"dm:a,b"},"body":{"text":"hi"}}"#;
    let ClientFrame::Send(s) = ClientFrame::parse(text).unwrap() else {
        panic!("not send")
    };
    assert_eq!(s.kind, Kind::Chat);
    assert_eq!(s.id, Some(json!(5)));
    assert_eq!(s.body.get(), r#"{"text":"hi"}"#);
    let json = ClientFrame::Send(s).to_json().unwrap();
    let ClientFrame::Send(s2) = ClientFrame::parse(&json).unwrap() else {
        panic!("not send")
    };
    assert_eq!(
        s2.to,
        Target::Conversation(ConversationId::new("dm:a,b").unwrap())
    );
    let eph =
        r#"{"type":"send","client_msg_id":"m","to":{"user":"bob"},"body":1,"kind":"ephemeral"}"#;
    assert!(matches!(
        ClientFrame::parse(eph),
        Ok(ClientFrame::Send(Send {
            kind: Kind::Ephemeral,
            ..
        }))
    ));
}

#[test]
fn anycast_is_to_a_channel_and_its_key_is_bounded() {
    let send = |extra: &str, to: &str| {
        ClientFrame::parse(&format!(
            r#"{{"type":"send","id":1,"client_msg_id":"m","to":{to},"body":1{extra}}}"#
        ))
    };
    let ch = r#"{"channel":"ch:jobs"}"#;
    let Ok(ClientFrame::Send(s)) = send(r#","anycast":true,"key":"conv-7""#, ch) else {
        panic!("an anycast send with a key must parse")
    };
    assert!(s.anycast && s.key.as_deref() == Some("conv-7"));
    let refused = |r: Result<ClientFrame, FrameError>| r.err().map(|e| e.code);
    assert_eq!(
        refused(send(r#","anycast":true"#, r#"{"user":"bob"}"#)),
        Some(ErrorCode::InvalidField)
    );
    assert_eq!(
        refused(send(r#","key":"k""#, ch)),
        Some(ErrorCode::InvalidField)
    );
    let long = format!(r#","anycast":true,"key":"{}""#, "k".repeat(129));
    assert_eq!(refused(send(&long, ch)), Some(ErrorCode::InvalidField));
    let handled =
        r#"{"type":"handled","channel":"ch:jobs","msg_id":"00000000-0000-0000-0000-000000000001"}"#;
    let Ok(ClientFrame::Handled(h)) = ClientFrame::parse(handled) else {
        panic!("handled must parse")
    };
    assert_eq!(h.channel.as_str(), "ch:jobs");
    let again = ClientFrame::Handled(h).to_json().unwrap();
    assert!(again.starts_with(r#"{"type":"handled","#), "{again}");
}

#[test]
fn malformed_frames_get_stable_codes() {
    assert_eq!(err("{").code, ErrorCode::BadJson);
    assert_eq!(err("[1,2]").code, ErrorCode::BadJson);
    assert_eq!(err("\"hello\"").code, ErrorCode::BadJson);
    assert_eq!(err(r#"{"token":"x"}"#).code, ErrorCode::InvalidField);
    assert_eq!(err(r#"{"type":7}"#).code, ErrorCode::InvalidField);
    let unknown = err(r#"{"type":"telepathy","id":"r1"}"#);
    assert_eq!(
        (unknown.code, unknown.id),
        (ErrorCode::UnknownType, Some(json!("r1")))
    );
    let wrong = err(r#"{"type":"send","id":"r2","client_msg_id":5,"to":{"user":"b"},"body":1}"#);
    assert_eq!(
        (wrong.code, wrong.id),
        (ErrorCode::InvalidField, Some(json!("r2")))
    );
    assert_eq!(
        err(r#"{"type":"send","client_msg_id":"m","to":{"user":"b c"},"body":1}"#).code,
        ErrorCode::InvalidField
    );
    assert_eq!(
        err(r#"{"type":"send","client_msg_id":"m","to":{"group":"g"},"body":1}"#).code,
        ErrorCode::InvalidField
    );
    assert_eq!(
        err(r#"{"type":"send","client_msg_id":"m","to":{"user":"b"}}"#).code,
        ErrorCode::InvalidField
    );
    assert_eq!(
        err(r#"{"type":"send","client_msg_id":"m","to":{"user":"b"},"body":1,"kind":"loud"}"#).code,
        ErrorCode::InvalidField
    );
    assert_eq!(
        err(r#"{"type":"hello","token":"t","cursor":"nope"}"#).code,
        ErrorCode::InvalidField
    );
}

#[test]
fn oversize_body_is_too_large() {
    let body = "x".repeat(crate::MAX_BODY_BYTES);
    let text = format!(
        r#"{{"type":"send","id":1,"client_msg_id":"m","to":{{"user":"b"}},"body":"{body}"}}"#
    );
    let e = err(&text);
    assert_eq!((e.code, e.id), (ErrorCode::TooLarge, Some(json!(1))));
}

#[test]
fn server_frames_round_trip() {
    let msg = ServerFrame::Message(Message {
        msg_id: MsgId(uuid::Uuid::nil()),
        conversation_id: ConversationId::new("room").unwrap(),
        from: UserId::new("a").unwrap(),
        from_device: DeviceId::new("d").unwrap(),
        kind: Kind::Chat,
        body: RawValue::from_string(r#"{"t":1}"#.into()).unwrap(),
        sent_at_ms: 5,
        cursor: Some(Cursor::new("e", 9)),
        replay: true,
        channel: None,
        anycast: false,
    });
    let json = msg.to_json().unwrap();
    assert!(json.starts_with(r#"{"type":"message","#), "{json}");
    let ServerFrame::Message(m) = ServerFrame::parse(&json).unwrap() else {
        panic!("{json}")
    };
    assert_eq!(
        (m.body.get(), m.replay, m.cursor),
        (r#"{"t":1}"#, true, Some(Cursor::new("e", 9)))
    );

    let frames = [
        ServerFrame::Synced(Synced {
            cursor: Cursor::new("e", 3),
        }),
        ServerFrame::Ack(Ack {
            id: Some(json!("x")),
            client_msg_id: ClientMsgId::new("c").unwrap(),
            msg_id: MsgId(uuid::Uuid::nil()),
        }),
        ServerFrame::Error(ErrorFrame {
            id: None,
            code: ErrorCode::NotMember,
            message: "no".into(),
        }),
        ServerFrame::Redirect(Redirect {
            server_id: ServerId::new("s2").unwrap(),
            ws_url: "ws://h/v1/ws".into(),
            epoch: 4,
        }),
    ];
    for f in frames {
        let json = f.to_json().unwrap();
        let back = ServerFrame::parse(&json).unwrap();
        assert_eq!(back.to_json().unwrap(), json);
    }
    let err_json = ServerFrame::Error(ErrorFrame {
        id: None,
        code: ErrorCode::RateLimited,
        message: "m".into(),
    })
    .to_json()
    .unwrap();
    assert_eq!(
        err_json,
        r#"{"type":"error","code":"rate_limited","message":"m"}"#
    );
    assert_eq!(
        ServerFrame::parse(r#"{"type":"future"}"#).unwrap_err().code,
        ErrorCode::UnknownType
    );
}

#[test]
fn close_codes() {
    assert_eq!(CloseCode::TooSlow.code(), 4004);
    assert_eq!(CloseCode::from_code(4006), Some(CloseCode::Draining));
    assert_eq!(CloseCode::from_code(1000), None);
}

#[test]
fn channel_frames() {
    let sub =
        ClientFrame::parse(r#"{"type":"subscribe","id":3,"channel":"ch:news","cursor":"e1:41"}"#)
            .unwrap();
    let ClientFrame::Subscribe(s) = sub else {
        panic!("{sub:?}")
    };
    assert_eq!(
        (s.channel.as_str(), s.cursor),
        ("ch:news", Some(Cursor::new("e1", 41)))
    );
    let e = err(r#"{"type":"subscribe","id":4,"channel":"news"}"#);
    assert_eq!((e.code, e.id), (ErrorCode::InvalidField, Some(json!(4))));
    let un = ClientFrame::parse(r#"{"type":"unsubscribe","channel":"ch:news"}"#).unwrap();
    assert!(matches!(un, ClientFrame::Unsubscribe(_)));
    let send = ClientFrame::parse(
        r#"{"type":"send","client_msg_id":"m","to":{"channel":"ch:news"},"body":1}"#,
    )
    .unwrap();
    let ClientFrame::Send(send) = send else {
        panic!("{send:?}")
    };
    assert_eq!(
        send.to,
        Target::Channel(ChannelName::new("ch:news").unwrap())
    );

    let subscribed = ServerFrame::Subscribed(Subscribed {
        id: Some(json!(3)),
        channel: ChannelName::new("ch:news").unwrap(),
        cursor: Cursor::new("e1", 57),
        recovered: true,
    });
    let json = subscribed.to_json().unwrap();
    assert_eq!(
        json,
        r#"{"type":"subscribed","id":3,"channel":"ch:news","cursor":"e1:57","recovered":true}"#
    );
    let ServerFrame::Subscribed(back) = ServerFrame::parse(&json).unwrap() else {
        panic!("{json}")
    };
    assert!(back.recovered);
    let gone = ServerFrame::parse(r#"{"type":"unsubscribed","id":null,"channel":"ch:x"}"#).unwrap();
    assert_eq!(gone.kind(), "unsubscribed");
}

#[test]
fn ping_is_answered_by_a_pong_with_its_id() {
    let ClientFrame::Ping(ping) = ClientFrame::parse(r#"{"type":"ping","id":7}"#).unwrap() else {
        panic!("not a ping")
    };
    assert_eq!(ping.id, Some(json!(7)));
    let pong = ServerFrame::Pong(ping).to_json().unwrap();
    assert_eq!(pong, r#"{"type":"pong","id":7}"#);
    assert_eq!(ServerFrame::parse(&pong).unwrap().kind(), "pong");
    let bare = ClientFrame::Ping(Ping::default()).to_json().unwrap();
    assert_eq!(bare, r#"{"type":"ping"}"#);
}
