//! A device that behaves like a real client: resolves its server through the
//! coordinator, follows redirects and closes by reconnecting, and resumes
//! from the cursor of the last chat message it got.

use crate::client::{Event, WsClient};
use protocol::{Cursor, Kind, MsgId, ServerFrame};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Default, Debug)]
pub struct Received {
    pub chat: Vec<MsgId>,
    pub unique: HashSet<MsgId>,
    pub duplicates: usize,
    pub sessions: usize,
    pub resumed: usize,
    pub close_codes: Vec<Option<u16>>,
    pub redirects: usize,
}

pub struct DeviceRunner {
    pub coordinator: String,
    pub user: String,
    pub device: String,
    pub token: String,
}

async fn route(coordinator: &str, user: &str) -> Option<String> {
    let r = reqwest::get(format!("{coordinator}/v1/route?user_id={user}"))
        .await
        .ok()?;
    let v: serde_json::Value = r.error_for_status().ok()?.json().await.ok()?;
    v["ws_url"].as_str().map(str::to_owned)
}

impl DeviceRunner {
    /// Runs until `stop`; everything received lands in `out`.
    pub async fn run(self, out: Arc<Mutex<Received>>, stop: CancellationToken) {
        let mut cursor: Option<Cursor> = None;
        let mut next_url: Option<String> = None;
        while !stop.is_cancelled() {
            let url = match next_url.take() {
                Some(u) => Some(u),
                None => route(&self.coordinator, &self.user).await,
            };
            if let Some(url) = url {
                next_url = self.session(&url, &mut cursor, &out, &stop).await;
            }
            if next_url.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// One connection; returns a redirect target if the server gave one.
    async fn session(
        &self,
        url: &str,
        cursor: &mut Option<Cursor>,
        out: &Mutex<Received>,
        stop: &CancellationToken,
    ) -> Option<String> {
        let mut c = WsClient::connect(url).await.ok()?;
        let lock = || out.lock().unwrap_or_else(|e| e.into_inner());
        let mut redirect = None;
        match c
            .hello(&self.token, &self.device, cursor.clone())
            .await
            .ok()?
        {
            Event::Frame(ServerFrame::Welcome(w)) => {
                let mut o = lock();
                o.sessions += 1;
                o.resumed += usize::from(w.resumed);
            }
            Event::Frame(ServerFrame::Redirect(r)) => {
                lock().redirects += 1;
                return Some(r.ws_url);
            }
            _ => return None,
        }
        loop {
            let ev = tokio::select! {
                e = c.next(Duration::from_secs(30)) => e,
                _ = stop.cancelled() => return None,
            };
            match ev {
                Ok(Event::Frame(ServerFrame::Message(m))) if m.kind == Kind::Chat => {
                    let mut o = lock();
                    if o.unique.insert(m.msg_id) {
                        o.chat.push(m.msg_id);
                    } else {
                        o.duplicates += 1;
                    }
                    if m.cursor.is_some() {
                        *cursor = m.cursor;
                    }
                }
                Ok(Event::Frame(ServerFrame::Redirect(r))) => {
                    lock().redirects += 1;
                    redirect = Some(r.ws_url);
                }
                Ok(Event::Frame(_)) => {}
                Ok(Event::Closed(code)) => {
                    lock().close_codes.push(code);
                    return redirect;
                }
                Err(_) => return None,
            }
        }
    }
}

/// A set of devices, one per user ("phone"), each a `DeviceRunner`.
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
            let runner = DeviceRunner {
                coordinator: coordinator.to_owned(),
                user: u.clone(),
                device: "phone".into(),
                token: crate::Stack::token(u),
            };
            tasks.push(tokio::spawn(runner.run(out.clone(), stop.clone())));
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

    /// Waits until receiver `i` holds every msg_id of `want(i)`, for each `i`.
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
