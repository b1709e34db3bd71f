//! The client's connection task against an in-process server that speaks
//! the protocol (docs/protocol.md): no broker, no Docker. The server is
//! scripted session by session, so each test says exactly what the client
//! is shown and checks what it does.

use crate::{Client, ClientConfig, Event};
use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use protocol::frames::{Ack, Message, Redirect, Synced, Welcome};
use protocol::{
    ClientFrame, CloseCode, ConversationId, Cursor, DeviceId, Kind, MsgId, Route, ServerFrame,
    ServerId, Target, UserId,
};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// Routes the user to this server's WebSocket endpoint; each accepted
/// socket is handed to the test in order.
async fn fake_server() -> (String, mpsc::Receiver<WebSocket>) {
    let (base, rx, _) = fake_server_logged().await;
    (base, rx)
}

/// `fake_server`, also handing the test every route lookup's query.
async fn fake_server_logged() -> (
    String,
    mpsc::Receiver<WebSocket>,
    mpsc::UnboundedReceiver<protocol::api::RouteQuery>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(8);
    let (lookups, looked_up) = mpsc::unbounded_channel();
    let ws_url = base.replacen("http://", "ws://", 1) + "/v1/ws";
    let route = move |q: axum::extract::Query<protocol::api::RouteQuery>| {
        let ws_url = ws_url.clone();
        let _ = lookups.send(q.0);
        async move {
            Json(Route {
                user_id: UserId::new("bob").unwrap(),
                partition: 0,
                server_id: ServerId::new("fake").unwrap(),
                ws_url,
                epoch: 1,
            })
        }
    };
    let ws = |State(tx): State<mpsc::Sender<WebSocket>>, up: WebSocketUpgrade| async move {
        up.on_upgrade(move |socket| async move {
            let _ = tx.send(socket).await;
        })
    };
    let app = Router::new()
        .route("/v1/route", get(route))
        .route("/v1/ws", get(ws))
        .with_state(tx);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, rx, looked_up)
}

async fn next_socket(rx: &mut mpsc::Receiver<WebSocket>) -> WebSocket {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the client did not (re)connect")
        .expect("server gone")
}

/// The next frame the client sends (pings and pongs skipped).
async fn read(ws: &mut WebSocket) -> ClientFrame {
    loop {
        let m = tokio::time::timeout(WAIT, ws.recv())
            .await
            .expect("the client sent nothing")
            .expect("socket closed")
            .expect("socket failed");
        if let Ws::Text(t) = m {
            return ClientFrame::parse(t.as_str()).expect("a frame of the protocol");
        }
    }
}

async fn hello_cursor(ws: &mut WebSocket) -> Option<Cursor> {
    match read(ws).await {
        ClientFrame::Hello(h) => h.cursor,
        other => panic!("hello first, got {other:?}"),
    }
}

async fn write(ws: &mut WebSocket, f: ServerFrame) {
    let text = f.to_json().unwrap();
    ws.send(Ws::Text(text.into())).await.unwrap();
}

async fn close(ws: &mut WebSocket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code: code.code(),
        reason: reason.into(),
    };
    ws.send(Ws::Close(Some(frame))).await.unwrap();
}

fn welcome(resumed: bool, cursor: Cursor) -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        user_id: UserId::new("bob").unwrap(),
        device_id: DeviceId::new("laptop").unwrap(),
        server_id: ServerId::new("fake").unwrap(),
        partition: 0,
        epoch: 1,
        resumed,
        cursor,
        token_exp: None,
        ping_ms: None,
    })
}

fn synced(offset: i64) -> ServerFrame {
    ServerFrame::Synced(Synced {
        cursor: Cursor::new("e1", offset),
    })
}

/// Message `n` (its body is `n`) at `offset` of the log.
fn message(n: u128, offset: i64, replay: bool) -> ServerFrame {
    ServerFrame::Message(Message {
        msg_id: MsgId(uuid::Uuid::from_u128(n)),
        conversation_id: ConversationId::new("dm:alice,bob").unwrap(),
        from: UserId::new("alice").unwrap(),
        from_device: DeviceId::new("phone").unwrap(),
        kind: Kind::Chat,
        body: serde_json::value::RawValue::from_string(n.to_string()).unwrap(),
        sent_at_ms: 0,
        cursor: Some(Cursor::new("e1", offset)),
        replay,
        channel: None,
        anycast: false,
    })
}

fn config(base: &str) -> ClientConfig {
    ClientConfig {
        coordinator_url: base.to_owned(),
        token: "token".into(),
        refresh: None,
        user_id: "bob".into(),
        device_id: "laptop".into(),
        cursor: None,
        max_backoff: Duration::from_millis(200),
        report_duplicates: true,
        local_address: None,
    }
}

/// The next `n` messages the app is handed, as (duplicate?, body).
async fn messages(client: &mut Client, n: usize) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("no event in time")
            .expect("client stopped");
        match e {
            Event::Message(m) => out.push((false, m.body.get().to_owned())),
            Event::Duplicate(m) => out.push((true, m.body.get().to_owned())),
            _ => {}
        }
    }
    out
}

fn seen(list: &[(bool, &str)]) -> Vec<(bool, String)> {
    list.iter().map(|(d, b)| (*d, (*b).to_owned())).collect()
}

#[tokio::test]
async fn a_drained_session_resumes_from_the_cursor_resends_and_drops_the_replayed_duplicate() {
    let (base, mut sockets) = fake_server().await;
    let mut client = Client::start(config(&base));

    // Session 1: no cursor yet; two live messages, a send left unacked, 4006.
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(hello_cursor(&mut ws).await, None);
    write(&mut ws, welcome(false, Cursor::new("e1", 4))).await;
    write(&mut ws, synced(4)).await;
    write(&mut ws, message(1, 5, false)).await;
    write(&mut ws, message(2, 6, false)).await;
    assert_eq!(
        messages(&mut client, 2).await,
        seen(&[(false, "1"), (false, "2")])
    );
    let sender = client.sender();
    let to = Target::User(UserId::new("alice").unwrap());
    let send = tokio::spawn(async move {
        sender
            .send_with_id("c-1", to, serde_json::json!({"t": "hi"}), Kind::Chat)
            .await
    });
    let ClientFrame::Send(first) = read(&mut ws).await else {
        panic!("the send")
    };
    close(&mut ws, CloseCode::Draining, "server draining").await;
    drop(ws);

    // Session 2: the hello carries the last cursor; the replay repeats
    // message 2; the send comes again with its client_msg_id and is acked.
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(hello_cursor(&mut ws).await, Some(Cursor::new("e1", 6)));
    write(&mut ws, welcome(true, Cursor::new("e1", 6))).await;
    write(&mut ws, message(2, 6, true)).await;
    write(&mut ws, message(3, 7, true)).await;
    write(&mut ws, synced(7)).await;
    let ClientFrame::Send(again) = read(&mut ws).await else {
        panic!("the resent send")
    };
    assert_eq!(again.client_msg_id, first.client_msg_id);
    let msg_id = MsgId(uuid::Uuid::from_u128(99));
    let ack = Ack {
        id: again.id.clone(),
        client_msg_id: again.client_msg_id.clone(),
        msg_id,
    };
    write(&mut ws, ServerFrame::Ack(ack)).await;
    assert_eq!(
        messages(&mut client, 2).await,
        seen(&[(true, "2"), (false, "3")])
    );
    let acked = tokio::time::timeout(WAIT, send).await.expect("no answer");
    assert_eq!(acked.unwrap().unwrap(), msg_id);
    assert_eq!(client.duplicates(), 1);
    assert_eq!(client.cursor(), Some(Cursor::new("e1", 7)));
    client.close().await;
}

#[tokio::test]
async fn a_redirect_goes_straight_to_the_new_owner_with_the_cursor() {
    let (base, mut sockets) = fake_server().await;
    let mut cfg = config(&base);
    cfg.cursor = Some(Cursor::new("e1", 41));
    let client = Client::start(cfg);
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(hello_cursor(&mut ws).await, Some(Cursor::new("e1", 41)));
    let redirect = Redirect {
        server_id: ServerId::new("ms-2").unwrap(),
        ws_url: base.replacen("http://", "ws://", 1) + "/v1/ws?moved=1",
        epoch: 2,
    };
    write(&mut ws, ServerFrame::Redirect(redirect)).await;
    close(&mut ws, CloseCode::PartitionMoved, "partition moved").await;
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(
        hello_cursor(&mut ws).await,
        Some(Cursor::new("e1", 41)),
        "the cursor survives a move"
    );
    client.close().await;
}

fn someone(u: &str, online: bool) -> protocol::presence::UserPresence {
    protocol::presence::UserPresence {
        user: UserId::new(u).unwrap(),
        online,
        devices: u32::from(online),
        last_seen_ms: None,
    }
}

async fn presence_event(client: &mut Client) -> protocol::presence::UserPresence {
    loop {
        let e = tokio::time::timeout(WAIT, client.next_event()).await;
        if let Event::Presence(p) = e.expect("no event in time").expect("client stopped") {
            return p;
        }
    }
}

#[tokio::test]
async fn watches_are_renewed_after_a_reconnect_and_their_answer_becomes_events() {
    let (base, mut sockets) = fake_server().await;
    let mut client = Client::start(config(&base));
    let mut ws = next_socket(&mut sockets).await;
    hello_cursor(&mut ws).await;
    write(&mut ws, welcome(false, Cursor::new("e1", 0))).await;
    let carol = UserId::new("carol").unwrap();
    let users = [carol.clone()];
    let ask = client.presence(&users, true);
    let serve = async {
        let ClientFrame::Presence(req) = read(&mut ws).await else {
            panic!("a presence request")
        };
        assert!(req.watch && req.users == [carol.clone()], "{req:?}");
        let state = protocol::presence::PresenceState {
            id: req.id,
            users: vec![someone("carol", false)],
        };
        write(&mut ws, ServerFrame::PresenceState(state)).await;
    };
    let (answer, ()) = tokio::join!(ask, serve);
    assert_eq!(answer.unwrap(), vec![someone("carol", false)]);
    write(&mut ws, ServerFrame::Presence(someone("carol", true))).await;
    assert_eq!(presence_event(&mut client).await, someone("carol", true));
    close(&mut ws, CloseCode::Draining, "server draining").await;
    drop(ws);

    // Session 2: the watch is asked again, unprompted; its answer is an event.
    let mut ws = next_socket(&mut sockets).await;
    hello_cursor(&mut ws).await;
    write(&mut ws, welcome(false, Cursor::new("e1", 0))).await;
    let ClientFrame::Presence(again) = read(&mut ws).await else {
        panic!("the watch renewed")
    };
    assert!(again.watch && again.users == [carol.clone()], "{again:?}");
    let state = protocol::presence::PresenceState {
        id: again.id,
        users: vec![someone("carol", false)],
    };
    write(&mut ws, ServerFrame::PresenceState(state)).await;
    assert_eq!(presence_event(&mut client).await, someone("carol", false));
    client.close().await;
}

/// A session that ends without a close (a crashed server): the next lookup
/// reports the server and asks to wait for a map without it; each hello
/// names the epoch of the map that routed it.
#[tokio::test]
async fn a_lost_server_is_reported_on_the_next_lookup_and_hello_names_the_epoch() {
    let (base, mut sockets, mut lookups) = fake_server_logged().await;
    let client = Client::start(config(&base));
    let first = lookups.recv().await.expect("a first lookup");
    assert_eq!((first.unreachable, first.wait_ms), (None, None));
    let mut ws = next_socket(&mut sockets).await;
    match read(&mut ws).await {
        ClientFrame::Hello(h) => assert_eq!(h.epoch, Some(1), "hello names the route's epoch"),
        other => panic!("hello first, got {other:?}"),
    }
    write(&mut ws, welcome(false, Cursor::new("e1", 0))).await;
    drop(ws);
    let lost_at = std::time::Instant::now();
    let report = tokio::time::timeout(WAIT, lookups.recv())
        .await
        .expect("no lookup after the loss")
        .expect("a lookup");
    assert_eq!(report.unreachable, Some(ServerId::new("fake").unwrap()));
    assert!(report.wait_ms.is_some_and(|w| w >= 1_000), "{report:?}");
    // The fake answers with the same server (as for one found alive): the
    // client backs off before trying it, and reports it no longer.
    let _ = next_socket(&mut sockets).await;
    assert!(
        lost_at.elapsed() >= Duration::from_millis(100),
        "the same server again is tried only after a backoff"
    );
    client.close().await;
}

/// An anycast publication of `channel` (msg_id `n`).
fn anycast_message(n: u128, channel: &protocol::ChannelName) -> ServerFrame {
    let ServerFrame::Message(mut m) = message(n, 0, false) else {
        unreachable!("message() builds a message")
    };
    m.channel = Some(channel.clone());
    m.conversation_id = ConversationId::from(channel);
    m.anycast = true;
    ServerFrame::Message(m)
}

#[tokio::test]
async fn anycast_sends_carry_the_key_and_a_redelivered_publication_is_answered_handled_again() {
    let (base, mut sockets) = fake_server().await;
    let mut client = Client::start(config(&base));
    let mut ws = next_socket(&mut sockets).await;
    hello_cursor(&mut ws).await;
    write(&mut ws, welcome(false, Cursor::new("e1", 0))).await;
    let pool = protocol::ChannelName::new("ch:pool").unwrap();
    let body = serde_json::json!({"job": 1});
    let publish = tokio::time::timeout(
        Duration::from_millis(300),
        client.anycast(&pool, body, Kind::Chat, Some("order-7")),
    );
    let (answer, frame) = tokio::join!(publish, read(&mut ws));
    assert!(answer.is_err(), "not acked by the fake server");
    let ClientFrame::Send(any) = frame else {
        panic!("the anycast send")
    };
    assert!(any.anycast && any.key.as_deref() == Some("order-7"));
    assert_eq!(any.to, Target::Channel(pool.clone()));

    write(&mut ws, anycast_message(7, &pool)).await;
    let m = loop {
        match tokio::time::timeout(WAIT, client.next_event()).await {
            Ok(Some(Event::Message(m))) => break m,
            Ok(Some(_)) => {}
            other => panic!("no anycast message: {other:?}"),
        }
    };
    assert!(m.anycast);
    client.handled(&pool, m.msg_id).await.unwrap();
    let ClientFrame::Handled(h) = read(&mut ws).await else {
        panic!("handled")
    };
    assert_eq!((h.channel, h.msg_id), (pool.clone(), m.msg_id));
    // Offered here again (the first answer was lost): the app is not told
    // twice, the server is told again.
    write(&mut ws, anycast_message(7, &pool)).await;
    let ClientFrame::Handled(again) = read(&mut ws).await else {
        panic!("handled again")
    };
    assert_eq!(again.msg_id, m.msg_id);
    assert_eq!(client.duplicates(), 1);
    client.close().await;
}

/// A server whose kernel accepts but which never answers the upgrade (a
/// frozen process) holds a connecting client no longer than the connect
/// limit: the client gives up, reports it and goes where the next lookup
/// says.
/// A coordinator that routes the first lookup to `first` (server id, ws
/// URL) and every later one to `then`, handing the test each lookup's query.
async fn first_then(
    first: (&'static str, String),
    then: (&'static str, String),
) -> (String, mpsc::UnboundedReceiver<protocol::api::RouteQuery>) {
    let (lookups, looked_up) = mpsc::unbounded_channel();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let route = move |q: axum::extract::Query<protocol::api::RouteQuery>| {
        let _ = lookups.send(q.0);
        let (id, url) = match asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => (first.0, first.1.clone()),
            _ => (then.0, then.1.clone()),
        };
        async move {
            Json(Route {
                user_id: UserId::new("bob").unwrap(),
                partition: 0,
                server_id: ServerId::new(id).unwrap(),
                ws_url: url,
                epoch: 1,
            })
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/v1/route", get(route));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (coordinator, looked_up)
}

#[tokio::test]
async fn a_server_that_accepts_but_never_upgrades_is_given_up_and_reported() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}/v1/ws", silent.local_addr().unwrap());
    let (fake, mut sockets) = fake_server().await;
    let fake_url = fake.replacen("http://", "ws://", 1) + "/v1/ws";
    let (coordinator, mut looked_up) = first_then(("frozen", silent_url), ("fake", fake_url)).await;
    let started = std::time::Instant::now();
    let client = Client::start(config(&coordinator));
    let _first = looked_up.recv().await.expect("a first lookup");
    let _ = tokio::time::timeout(Duration::from_secs(20), sockets.recv())
        .await
        .expect("still held by the server that never upgrades")
        .expect("server gone");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "gave up after {waited:?}");
    let report = looked_up.recv().await.expect("a second lookup");
    assert_eq!(report.unreachable, Some(ServerId::new("frozen").unwrap()));
    drop(silent);
    client.close().await;
}

/// The next event that tells how an attempt went (Connecting,
/// AttemptFailed, Connected, Disconnected), as text.
async fn attempt_event(client: &mut Client) -> String {
    loop {
        let e = tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("no event in time")
            .expect("client stopped");
        match e {
            Event::Connecting { server_id } => return format!("connecting {server_id}"),
            Event::AttemptFailed(at) => return format!("failed {at:?}"),
            Event::Connected { server_id, .. } => return format!("connected {server_id}"),
            Event::Disconnected { code } => return format!("disconnected {code:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn each_failed_attempt_is_told_to_the_app_with_where_it_failed() {
    // No coordinator: the lookup fails.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let mut client = Client::start(config(&nowhere));
    assert_eq!(attempt_event(&mut client).await, "failed Lookup");
    client.close().await;

    // A server whose port refuses, then one that drops the socket before
    // its welcome, then one that welcomes.
    let refused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_url = format!("ws://{}/v1/ws", refused.local_addr().unwrap());
    drop(refused);
    let (fake, mut sockets) = fake_server().await;
    let fake_url = fake.replacen("http://", "ws://", 1) + "/v1/ws";
    let (coordinator, _) = first_then(("refusing", refused_url), ("fake", fake_url)).await;
    let mut client = Client::start(config(&coordinator));
    assert_eq!(attempt_event(&mut client).await, "connecting refusing");
    assert_eq!(attempt_event(&mut client).await, "failed Connect");
    assert_eq!(attempt_event(&mut client).await, "connecting fake");
    let mut ws = next_socket(&mut sockets).await;
    let _ = hello_cursor(&mut ws).await;
    drop(ws);
    assert_eq!(attempt_event(&mut client).await, "failed Welcome");
    assert_eq!(attempt_event(&mut client).await, "connecting fake");
    let mut ws = next_socket(&mut sockets).await;
    let _ = hello_cursor(&mut ws).await;
    write(&mut ws, welcome(false, Cursor::new("e1", 0))).await;
    assert_eq!(attempt_event(&mut client).await, "connected fake");
    client.close().await;
}

#[tokio::test]
async fn a_route_lookup_asks_the_coordinator_to_close_after_its_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = Client::start(config(&base));
    let (mut conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("no lookup")
        .unwrap();
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::io::AsyncReadExt::read(&mut conn, &mut byte);
        let n = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
        assert_eq!(n, 1, "the request ended early");
        request.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&request).to_lowercase();
    assert!(request.starts_with("get /v1/route?"), "{request}");
    assert!(request.contains("\r\nconnection: close\r\n"), "{request}");
    client.close().await;
}

/// A client starved of CPU past its silence limit (here its only thread
/// blocked) wakes to the silence deadline and to a frame already in its
/// socket at once: the frame was heard in time, the connection is kept.
/// Without that rule each round is a coin toss (`select!` picks a ready
/// branch at random), so sixteen rounds almost surely catch it.
#[tokio::test]
async fn a_frame_waiting_when_a_starved_client_wakes_counts_as_heard() {
    let (base, mut sockets) = fake_server().await;
    let mut client = Client::start(config(&base));
    let mut ws = next_socket(&mut sockets).await;
    assert_eq!(hello_cursor(&mut ws).await, None);
    let mut hello = welcome(false, Cursor::new("e1", 0));
    if let ServerFrame::Welcome(w) = &mut hello {
        // Silent for 2 × 100 ms: dead.
        w.ping_ms = Some(100);
    }
    write(&mut ws, hello).await;
    write(&mut ws, synced(0)).await;
    for n in 1..=16u128 {
        write(&mut ws, message(n, n as i64, false)).await;
        std::thread::sleep(Duration::from_millis(300));
        let body = n.to_string();
        assert_eq!(
            messages(&mut client, 1).await,
            seen(&[(false, body.as_str())])
        );
    }
    assert!(
        sockets.try_recv().is_err(),
        "the client reconnected: a waiting frame was taken for silence"
    );
}
