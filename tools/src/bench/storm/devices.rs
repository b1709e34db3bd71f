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
use switchboard_client::{Attempt, Client, ClientConfig, Event};

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
/// code of a disconnect (0: none given) or one of the marks below.
type History = Mutex<Vec<(u64, i32)>>;

const RESUMED: i32 = -1;
const FRESH: i32 = -2;
const CONNECTING: i32 = -3;
const FAILED_LOOKUP: i32 = -4;
const FAILED_CONNECT: i32 = -5;
const FAILED_WELCOME: i32 = -6;
/// The replay after a resumed welcome is over (`synced`).
const SYNCED: i32 = -7;

fn is_back(what: i32) -> bool {
    what == RESUMED || what == FRESH
}

fn mark(e: &Event) -> Option<i32> {
    Some(match e {
        Event::Connected { resumed, .. } => {
            if *resumed {
                RESUMED
            } else {
                FRESH
            }
        }
        Event::Disconnected { code } => code.map_or(0, i32::from),
        Event::Connecting { .. } => CONNECTING,
        Event::AttemptFailed(Attempt::Lookup) => FAILED_LOOKUP,
        Event::AttemptFailed(Attempt::Connect) => FAILED_CONNECT,
        Event::AttemptFailed(Attempt::Welcome) => FAILED_WELCOME,
        Event::Synced(_) => SYNCED,
        _ => return None,
    })
}

/// Where a device stands at the end: connected (its last event a
/// welcome), synced since that welcome, and the cursor it would resume from.
#[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug, PartialEq)]
pub struct DeviceEnd {
    pub connected: bool,
    pub synced: bool,
    pub cursor: Option<String>,
    /// Its last few events (unix µs, what: a close code, or -1 resumed,
    /// -2 fresh, -3 connecting, -4/-5/-6 a failed lookup/connect/welcome,
    /// -7 synced),
    /// to tell when a device lost with a message stopped.
    #[serde(default)]
    pub last: Vec<(u64, i32)>,
}

#[derive(Default)]
struct Shared {
    histories: Vec<History>,
    /// Per device: synced since its last welcome, and its cursor.
    positions: Vec<Mutex<(bool, Option<String>)>>,
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
    /// From the failure to each device's having everything it missed: the
    /// `synced` after its resumed welcome (a fresh welcome: the welcome).
    #[serde(default)]
    pub synced_ms: Vec<f64>,
    pub close_codes: BTreeMap<String, u64>,
    /// From the failure to the device's noticing it (its disconnect, ms).
    #[serde(default)]
    pub noticed_ms: Vec<f64>,
    /// From the failure to the device's first route answer (ms).
    pub first_route_ms: Vec<f64>,
    /// The attempt that brought the device back, from its route answer
    /// to the welcome (ms).
    pub last_attempt_ms: Vec<f64>,
    /// Devices back by how many sessions they opened to get there.
    pub attempts: BTreeMap<u32, u64>,
    /// Attempts after the disconnect that ended without a welcome, by
    /// where: `lookup`, `connect`, `welcome`, or `close <code>`.
    pub failures: BTreeMap<String, u64>,
}

impl Outage {
    /// Adds another holder's devices.
    pub fn merge(&mut self, o: Outage) {
        self.affected += o.affected;
        self.back += o.back;
        self.resumed += o.resumed;
        self.back_ms.extend(o.back_ms);
        self.synced_ms.extend(o.synced_ms);
        self.noticed_ms.extend(o.noticed_ms);
        self.first_route_ms.extend(o.first_route_ms);
        self.last_attempt_ms.extend(o.last_attempt_ms);
        for (k, v) in o.close_codes {
            *self.close_codes.entry(k).or_default() += v;
        }
        for (k, v) in o.attempts {
            *self.attempts.entry(k).or_default() += v;
        }
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
    }

    /// One device's history from its disconnect at `down` on.
    fn add(&mut self, h: &[(u64, i32)], t: u64) {
        self.affected += 1;
        *self.close_codes.entry(h[0].1.to_string()).or_default() += 1;
        self.noticed_ms.push(ms(h[0].0, t));
        let back = h.iter().position(|(_, w)| is_back(*w));
        let tried = &h[1..back.unwrap_or(h.len())];
        let mut attempts = 0;
        let mut last_route = None;
        for (at, what) in tried {
            let failure = match *what {
                CONNECTING => {
                    attempts += 1;
                    if last_route.is_none() {
                        self.first_route_ms.push(ms(*at, t));
                    }
                    last_route = Some(*at);
                    continue;
                }
                FAILED_LOOKUP => "lookup".to_owned(),
                FAILED_CONNECT => "connect".to_owned(),
                FAILED_WELCOME => "welcome".to_owned(),
                code => format!("close {code}"),
            };
            *self.failures.entry(failure).or_default() += 1;
        }
        let Some(back) = back else { return };
        let (at, what) = h[back];
        self.back += 1;
        self.resumed += usize::from(what == RESUMED);
        self.back_ms.push(ms(at, t));
        *self.attempts.entry(attempts).or_default() += 1;
        if let Some(route) = last_route {
            self.last_attempt_ms.push(ms(at, route));
        }
        if let Some(synced) = synced_at(&h[back..]) {
            self.synced_ms.push(ms(synced, t));
        }
    }
}

/// When a device back from `from` on (its welcome first) had all it
/// missed: its first `synced`, or a fresh welcome (nothing to replay) —
/// in a later session if the first ended before its replay did.
fn synced_at(from: &[(u64, i32)]) -> Option<u64> {
    from.iter()
        .find(|(_, w)| *w == SYNCED || *w == FRESH)
        .map(|(at, _)| *at)
}

fn ms(at: u64, from: u64) -> f64 {
    at.saturating_sub(from) as f64 / 1000.0
}

fn outage(histories: &[History], t: u64) -> Outage {
    let mut o = Outage::default();
    for h in histories {
        let Ok(h) = h.lock() else { continue };
        let down = h.iter().position(|(at, what)| *at >= t && *what >= 0);
        if let Some(down) = down {
            o.add(&h[down..], t);
        }
    }
    o.back_ms.sort_by(f64::total_cmp);
    o
}

pub async fn hold(a: StormHoldArgs) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        histories: (0..a.span.count).map(|_| Mutex::default()).collect(),
        positions: (0..a.span.count).map(|_| Mutex::default()).collect(),
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
            user_id: user.clone(),
            device_id: "d".into(),
            cursor: None,
            max_backoff: Duration::from_secs(5),
            report_duplicates: false,
            local_address: Some(device_address(a.span.first + local)),
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
        clients.push(tokio::spawn(events(client, (local, user), shared.clone())));
    }
    let mut told = super::super::child::Told::stdin();
    loop {
        let line = told.next().await?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("status"), _) => {
                let (up, synced) = (connected(&shared.histories), synced(&shared));
                println!("status {up} {synced}");
            }
            (Some("go"), _) => drop(go.send_replace(true)),
            (Some("stop"), _) => drop(go.send_replace(false)),
            (Some("storm"), Some(t)) => {
                let o = outage(&shared.histories, t.parse()?);
                println!("storm {}", serde_json::to_string(&o)?);
            }
            (Some("devices"), _) => {
                let asked = line.split_whitespace().skip(1);
                let ends = ends(&shared, a.span.first, asked);
                println!("devices {}", serde_json::to_string(&ends)?);
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

/// Device `n`'s own source address, 127.1.0.0 + n (127/8 is all loopback): devices have addresses
/// of their own, and one address shared by a holder's 12,000 devices runs
/// out of ephemeral ports toward the coordinator (about 28,000 per
/// destination; Linux tries even ports first, so past about 14,000 every
/// connect scans the range — 0.6 ms of kernel time each, measured) — a
/// limit of the load generator, not of the system under test.
fn device_address(n: usize) -> std::net::IpAddr {
    let [_, b, c, d] = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    std::net::Ipv4Addr::new(127, b.wrapping_add(1), c, d).into()
}

fn is_up(h: &History) -> bool {
    h.lock().is_ok_and(|h| {
        h.iter()
            .rev()
            .find(|(_, w)| *w != SYNCED)
            .is_some_and(|(_, w)| is_back(*w))
    })
}

/// Devices whose last event is a welcome.
fn connected(histories: &[History]) -> usize {
    histories.iter().filter(|h| is_up(h)).count()
}

/// Devices connected and synced since their last welcome.
fn synced(shared: &Shared) -> usize {
    let synced = |p: &Mutex<(bool, Option<String>)>| p.lock().is_ok_and(|p| p.0);
    (shared.histories.iter().zip(&shared.positions))
        .filter(|(h, p)| is_up(h) && synced(p))
        .count()
}

/// Events of a device kept in [`DeviceEnd::last`].
const LAST_EVENTS: usize = 6;

/// Where the asked users' devices held here stand (`s<n>`, from device
/// `first` on); users held elsewhere are left out.
fn ends<'a>(
    shared: &Shared,
    first: usize,
    asked: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, DeviceEnd> {
    let mut out = BTreeMap::new();
    for user in asked {
        let local = user.strip_prefix('s').and_then(|n| n.parse::<usize>().ok());
        let Some(local) = local.and_then(|n| n.checked_sub(first)) else {
            continue;
        };
        let (Some(h), Some(p)) = (shared.histories.get(local), shared.positions.get(local)) else {
            continue;
        };
        let Ok((synced, cursor)) = p.lock().map(|p| p.clone()) else {
            continue;
        };
        let connected = is_up(h);
        let last = h
            .lock()
            .map(|h| h[h.len().saturating_sub(LAST_EVENTS)..].to_vec())
            .unwrap_or_default();
        let end = DeviceEnd {
            connected,
            synced: connected && synced,
            cursor,
            last,
        };
        out.insert(user.to_owned(), end);
    }
    out
}

async fn events(mut client: Client, (local, user): (usize, String), shared: Arc<Shared>) {
    while let Some(e) = client.next_event().await {
        if let Ok(mut p) = shared.positions[local].lock() {
            match &e {
                // A fresh session is live from its welcome; a resumed one
                // once its replay is over.
                Event::Connected { resumed, .. } => p.0 = !resumed,
                Event::Synced(_) => p.0 = true,
                _ => {}
            }
            p.1 = client.cursor().map(|c| c.to_string());
        }
        let what = match e {
            Event::Message(m) => {
                let body: serde_json::Value =
                    serde_json::from_str(m.body.get()).unwrap_or_default();
                // Per user: the sender's own device gets its DM too.
                if let (Some(key), Ok(mut r)) = (body["k"].as_str(), shared.received.lock()) {
                    r.push(format!("{user}/{key}"));
                }
                None
            }
            e => mark(&e),
        };
        if let (Some(w), Ok(mut h)) = (what, shared.histories[local].lock()) {
            h.push((super::super::now_us(), w));
        }
    }
}

/// Who device `me`'s `n`th DM goes to (never itself): spread over every
/// device, so each failure cuts both senders and recipients.
pub(super) fn recipient(me: usize, n: u64, total: usize) -> String {
    let to = (me as u64 * 2_654_435_761 + n * 40_503) % total as u64;
    let to = if to as usize == me {
        (to + 1) % total as u64
    } else {
        to
    };
    format!("s{to}")
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
        let (key, user) = (format!("{me}-{n}"), UserId::new(recipient(me, n, total)));
        n += 1;
        let Ok(user) = user else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_has_all_it_missed_at_its_synced_not_at_its_welcome() {
        let t = 1_000_000;
        let down_then = |rest: &[(u64, i32)]| {
            let mut h = vec![(20, FRESH), (t + 1_000, 0), (t + 2_000, CONNECTING)];
            h.extend_from_slice(rest);
            Mutex::new(h)
        };
        let histories = vec![
            down_then(&[(t + 3_000, RESUMED), (t + 9_000, SYNCED)]),
            // Welcomed, its replay never over.
            down_then(&[(t + 3_000, RESUMED)]),
            // Closed during its replay; synced in the next session.
            down_then(&[
                (t + 3_000, RESUMED),
                (t + 4_000, 4006),
                (t + 5_000, CONNECTING),
                (t + 6_000, RESUMED),
                (t + 7_000, SYNCED),
            ]),
            // No cursor: nothing to replay.
            down_then(&[(t + 4_000, FRESH)]),
        ];
        let o = outage(&histories, t);
        assert_eq!(o.back, 4);
        let mut synced = o.synced_ms.clone();
        synced.sort_by(f64::total_cmp);
        assert_eq!(synced, vec![4.0, 7.0, 9.0]);
        assert_eq!(connected(&histories), 4, "a synced device is connected");
    }

    #[test]
    fn an_outage_counts_each_attempt_and_where_it_failed() {
        let t = 1_000_000;
        let device = |h: Vec<(u64, i32)>| Mutex::new(h);
        let histories = vec![
            // Up before the failure, down at it, three attempts to be back.
            device(vec![
                (10, CONNECTING),
                (20, FRESH),
                (t + 1_000, 0),
                (t + 2_000, FAILED_LOOKUP),
                (t + 5_000, CONNECTING),
                (t + 6_000, FAILED_CONNECT),
                (t + 9_000, CONNECTING),
                (t + 10_000, 4002),
                (t + 20_000, CONNECTING),
                (t + 23_000, RESUMED),
            ]),
            // Never disconnected.
            device(vec![(10, CONNECTING), (20, FRESH)]),
            // Down and not back.
            device(vec![(20, FRESH), (t + 500, 4006), (t + 900, CONNECTING)]),
        ];
        let o = outage(&histories, t);
        assert_eq!((o.affected, o.back, o.resumed), (2, 1, 1));
        assert_eq!(o.back_ms, vec![23.0]);
        assert_eq!(o.noticed_ms, vec![1.0, 0.5]);
        assert_eq!(o.first_route_ms, vec![5.0, 0.9]);
        assert_eq!(o.last_attempt_ms, vec![3.0]);
        assert_eq!(o.attempts, BTreeMap::from([(3, 1)]));
        let failures: Vec<_> = o.failures.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            failures,
            vec![("close 4002", 1), ("connect", 1), ("lookup", 1)]
        );
        assert_eq!(
            o.close_codes,
            BTreeMap::from([("0".to_owned(), 1), ("4006".to_owned(), 1)])
        );
        assert_eq!(
            connected(&histories),
            2,
            "the first two are up, the third not"
        );
    }

    #[test]
    fn a_device_end_keeps_its_last_events() {
        let shared = Shared {
            histories: vec![Mutex::new((0..10).map(|i| (i, CONNECTING)).collect())],
            positions: vec![Mutex::new((false, Some("e:7".into())))],
            ..Shared::default()
        };
        let ends = ends(&shared, 5, ["s5", "s6"].into_iter());
        let end = &ends["s5"];
        assert_eq!(
            end.last,
            (4..10).map(|i| (i, CONNECTING)).collect::<Vec<_>>()
        );
        assert_eq!((end.connected, end.cursor.as_deref()), (false, Some("e:7")));
        assert_eq!(ends.len(), 1, "s6 is held elsewhere");
    }

    #[test]
    fn each_device_leaves_from_its_own_loopback_address() {
        assert_eq!(device_address(0).to_string(), "127.1.0.0");
        assert_eq!(device_address(35_999).to_string(), "127.1.140.159");
        assert_ne!(device_address(1), device_address(2));
    }
}
