//! Receiving devices for the tests: each is a `switchboard_client::Client`
//! (resolves through the coordinator, follows redirects and closes, resumes
//! from its cursor, drops duplicates), and what it gets is counted here.

use protocol::{Kind, MsgId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, Event};
use tokio_util::sync::CancellationToken;

#[derive(Default, Debug)]
pub struct Received {
    /// Chat msg_ids in arrival order, each once.
    pub chat: Vec<MsgId>,
    pub unique: HashSet<MsgId>,
    /// Chat messages the app got again after the client's dedupe (must stay 0).
    pub duplicates: usize,
    /// Frames the client dropped as already delivered: duplicates at the
    /// protocol level (resends after a reconnect, replay overlapping live).
    pub protocol_duplicates: u64,
    /// Sessions the device had (welcomes).
    pub sessions: usize,
    /// Sessions that resumed from a cursor.
    pub resumed: usize,
    /// How each session ended, as the client saw it.
    pub close_codes: Vec<Option<u16>>,
}

/// Runs `client` until `stop`, counting into `out`.
async fn collect(mut client: Client, out: Arc<Mutex<Received>>, stop: CancellationToken) {
    let lock = || out.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let event = tokio::select! {
            e = client.next_event() => e,
            _ = stop.cancelled() => break,
        };
        match event {
            Some(Event::Connected { resumed, .. }) => {
                let mut o = lock();
                o.sessions += 1;
                o.resumed += usize::from(resumed);
            }
            Some(Event::Message(m)) if m.kind == Kind::Chat => {
                let mut o = lock();
                if o.unique.insert(m.msg_id) {
                    o.chat.push(m.msg_id);
                } else {
                    o.duplicates += 1;
                }
            }
            Some(Event::Disconnected { code }) => lock().close_codes.push(code),
            Some(_) => {}
            None => break,
        }
        lock().protocol_duplicates = client.duplicates();
    }
    client.close().await;
}

/// A set of devices, one per user ("phone").
pub struct Receivers {
    pub inboxes: Vec<Arc<Mutex<Received>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receivers {
    /// Starts one device per user and waits until each has a session.
    pub async fn start(coordinator: &str, users: &[String]) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let (mut inboxes, mut tasks) = (Vec::new(), Vec::new());
        for u in users {
            let out = Arc::new(Mutex::new(Received::default()));
            let client = Client::start(ClientConfig {
                coordinator_url: coordinator.to_owned(),
                token: crate::Stack::token(u),
                user_id: u.clone(),
                device_id: "phone".into(),
                cursor: None,
                max_backoff: Duration::from_secs(1),
                report_duplicates: false,
                local_address: None,
                refresh: None,
            });
            tasks.push(tokio::spawn(collect(client, out.clone(), stop.clone())));
            inboxes.push(out);
        }
        for inbox in &inboxes {
            crate::wait_until("receiver connected", Duration::from_secs(20), || async {
                inbox.lock().map(|o| o.sessions > 0).unwrap_or(false)
            })
            .await?;
        }
        Ok(Self {
            inboxes,
            stop,
            tasks,
        })
    }

    /// Waits until receiver `i` holds every msg_id of `want(i)`, for each `i`;
    /// fails as well when any app saw a message twice.
    pub async fn expect_each(
        &self,
        want: impl Fn(usize) -> Vec<MsgId>,
        within: Duration,
    ) -> anyhow::Result<()> {
        for (i, inbox) in self.inboxes.iter().enumerate() {
            let want = want(i);
            let missing = || {
                inbox
                    .lock()
                    .map(|o| want.iter().filter(|m| !o.unique.contains(m)).count())
                    .unwrap_or(usize::MAX)
            };
            let done = || async { missing() == 0 };
            if crate::wait_until("every expected message delivered", within, done)
                .await
                .is_err()
            {
                anyhow::bail!(
                    "receiver {i}: {} of {} messages lost",
                    missing(),
                    want.len()
                );
            }
        }
        let mut protocol_duplicates = Vec::new();
        for (i, inbox) in self.inboxes.iter().enumerate() {
            let o = inbox.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            anyhow::ensure!(
                o.duplicates == 0,
                "receiver {i}: the app saw {} messages twice",
                o.duplicates
            );
            protocol_duplicates.push(o.protocol_duplicates);
        }
        eprintln!("    duplicates dropped by the clients (protocol level), per device: {protocol_duplicates:?}");
        Ok(())
    }

    /// Stops every device and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
