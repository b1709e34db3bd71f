//! The child side of `storm`: devices on the real client, each recording
//! when it lost and regained its session; some send chat DMs at a steady
//! pace. Answers the parent's questions on stdin (`status`, `storm <t>`,
//! `report`) and starts or stops sending when told (`go`, `stop`).

use super::super::child::Span;
use harness::Stack;
use protocol::{Kind, Target, UserId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_client::{Client, ClientConfig, Event};

/// The hidden child command.
#[derive(clap::Args)]
pub struct StormHoldArgs {
    #[command(flatten)]
    span: Span,
    #[arg(long)]
    total: usize,
    #[arg(long)]
    senders: usize,
    /// DMs per second from this holder.
    #[arg(long)]
    rate: u64,
}

/// One device's connection history: (unix µs, what) with `what` the close
/// code of a disconnect (0: none given), -1 resumed, -2 connected afresh.
type History = Mutex<Vec<(u64, i32)>>;

#[derive(Default)]
struct Shared {
    histories: Vec<History>,
    acked: Mutex<Vec<String>>,
    received: Mutex<Vec<String>>,
    send_errors: AtomicU64,
    sent: AtomicU64,
}

/// What a failure did to the devices it disconnected (`storm <unix µs>`).
#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
pub struct Outage {
    pub affected: usize,
    pub back: usize,
    pub resumed: usize,
    /// Time from the failure to each device's next welcome, sorted (ms).
    pub back_ms: Vec<f64>,
    pub close_codes: BTreeMap<String, u64>,
}

fn outage(histories: &[History], t: u64) -> Outage {
    let mut o = Outage::default();
    for h in histories {
        let Ok(h) = h.lock() else { continue };
        let Some(down) = h.iter().position(|(at, what)| *at >= t && *what >= 0) else {
            continue;
        };
        o.affected += 1;
        *o.close_codes.entry(h[down].1.to_string()).or_default() += 1;
        if let Some((at, what)) = h[down..].iter().find(|(_, w)| *w < 0) {
            o.back += 1;
            o.resumed += usize::from(*what == -1);
            o.back_ms.push(at.saturating_sub(t) as f64 / 1000.0);
        }
    }
    o.back_ms.sort_by(f64::total_cmp);
    o
}

pub async fn hold(a: StormHoldArgs) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        histories: (0..a.span.count).map(|_| Mutex::default()).collect(),
        ..Shared::default()
    });
    let (go, go_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for local in 0..a.span.count {
        let user = format!("s{}", a.span.first + local);
        let client = Client::start(ClientConfig {
            coordinator_url: a.span.coordinator.clone(),
            token: Stack::token(&user),
            refresh: None,
            user_id: user,
            device_id: "d".into(),
            cursor: None,
            max_backoff: Duration::from_secs(5),
            report_duplicates: false,
        });
        if local < a.senders {
            let every = Duration::from_secs_f64(a.senders as f64 / a.rate.max(1) as f64);
            let plan = (a.span.first + local, a.total, every);
            tokio::spawn(send_loop(
                client.sender(),
                plan,
                go_rx.clone(),
                shared.clone(),
            ));
        }
        clients.push(tokio::spawn(events(client, local, shared.clone())));
    }
    let mut told = super::super::child::Told::stdin();
    loop {
        let line = told.next().await?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("status"), _) => println!("status {}", connected(&shared.histories)),
            (Some("go"), _) => drop(go.send_replace(true)),
            (Some("stop"), _) => drop(go.send_replace(false)),
            (Some("storm"), Some(t)) => {
                let o = outage(&shared.histories, t.parse()?);
                println!("storm {}", serde_json::to_string(&o)?);
            }
            (Some("report"), _) => {
                let report = serde_json::json!({
                    "sent": shared.sent.load(Ordering::Relaxed),
                    "send_errors": shared.send_errors.load(Ordering::Relaxed),
                    "acked": *shared.acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
                    "received": *shared.received.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
                });
                println!("report {report}");
            }
            _ => break,
        }
    }
    for c in clients {
        c.abort();
    }
    Ok(())
}

/// Devices whose last event is a welcome.
fn connected(histories: &[History]) -> usize {
    histories
        .iter()
        .filter(|h| {
            h.lock()
                .is_ok_and(|h| h.last().is_some_and(|(_, w)| *w < 0))
        })
        .count()
}

async fn events(mut client: Client, local: usize, shared: Arc<Shared>) {
    while let Some(e) = client.next_event().await {
        let what = match e {
            Event::Connected { resumed, .. } => Some(if resumed { -1 } else { -2 }),
            Event::Disconnected { code } => Some(code.map_or(0, i32::from)),
            Event::Message(m) => {
                let body: serde_json::Value =
                    serde_json::from_str(m.body.get()).unwrap_or_default();
                if let (Some(key), Ok(mut r)) = (body["k"].as_str(), shared.received.lock()) {
                    r.push(key.to_owned());
                }
                None
            }
            _ => None,
        };
        if let (Some(w), Ok(mut h)) = (what, shared.histories[local].lock()) {
            h.push((super::super::now_us(), w));
        }
    }
}

/// Sends DMs at the planned pace while told to; each send resolves on its
/// ack, across as many reconnects as it takes.
async fn send_loop(
    sender: switchboard_client::Sender,
    (me, total, every): (usize, usize, Duration),
    mut go: tokio::sync::watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let mut tick = tokio::time::interval(every);
    let mut n: u64 = 0;
    loop {
        if go.wait_for(|g| *g).await.is_err() {
            return;
        }
        tick.tick().await;
        if !*go.borrow() {
            continue;
        }
        let to = (me as u64 * 2_654_435_761 + n * 40_503) % total as u64;
        let to = if to as usize == me {
            (to + 1) % total as u64
        } else {
            to
        };
        let key = format!("{me}-{n}");
        n += 1;
        let Ok(user) = UserId::new(format!("s{to}")) else {
            continue;
        };
        let (sender, shared) = (sender.clone(), shared.clone());
        shared.sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let body = serde_json::json!({ "k": key });
            match sender.send(Target::User(user), body, Kind::Chat).await {
                Ok(_) => {
                    if let Ok(mut a) = shared.acked.lock() {
                        a.push(key);
                    }
                }
                Err(_) => drop(shared.send_errors.fetch_add(1, Ordering::Relaxed)),
            }
        });
    }
}
