//! The checker: reads a history and reports, overall and per fault window,
//! what the contract forbids (lost acknowledged chat messages, duplicates
//! the app saw, DMs out of order, cursor regressions) and what it allows but
//! we count (protocol-level duplicates and where they came from, deliveries
//! by a server that no longer owned the partition, how long devices were
//! unavailable).

use super::{Entry, MapAt, Op, RunInfo, Window};
use protocol::{Cursor, Kind, MsgId};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// A send took longer than this to be acknowledged: its device was affected.
const SLOW_ACK_MS: u64 = 1000;

/// How long after a fault's end what happens still counts as its effect
/// (unless the next fault began).
const AFTERMATH_MS: u64 = 10_000;

/// How late a polled map may be recorded after it was published (the run
/// polls every 100 ms; a request under load takes a few hundred more).
const MAP_SLACK_MS: u64 = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// (acknowledged chat message, device that must get it) never delivered.
    pub lost: u64,
    pub app_duplicates: u64,
    pub protocol_duplicates: u64,
    /// The dropped frame had the same cursor as the first: one record
    /// delivered twice (a resume replaying what live delivery also sent).
    pub duplicates_same_record: u64,
    /// Another record of the same msg_id (a resent message written twice).
    pub duplicates_other_record: u64,
    pub dm_order_violations: u64,
    pub cursor_regressions: u64,
    /// Deliveries by a server after the map gave the partition to another
    /// server and that server had delivered it.
    pub stale_deliveries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Spread {
    pub fn of(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().unwrap_or(0)
        };
        Self {
            count: v.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v.last().copied().unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowFindings {
    #[serde(flatten)]
    pub window: Window,
    /// From injection until the next fault, or 10 s after the cluster
    /// settled again if sooner.
    #[serde(flatten)]
    pub tally: Tally,
    /// Devices that were closed or had a send wait over a second.
    pub affected_devices: u64,
    /// From injection until an affected device's next acknowledgement.
    pub acked_again: Spread,
    pub never_acked_again: u64,
    /// How long the sends of affected devices made in the window waited
    /// for their acknowledgement.
    pub send_wait: Spread,
    pub sends_never_acked: u64,
    /// From injection until a closed device had a session again.
    pub resumed: Spread,
    pub never_resumed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    pub sends: u64,
    pub acked_chat_checked: u64,
    pub deliveries: u64,
    #[serde(flatten)]
    pub total: Tally,
    /// Outside every fault window and its aftermath.
    pub steady: Tally,
    pub windows: Vec<WindowFindings>,
    /// Different maps served under one epoch (see `RunInfo::map_conflicts`).
    pub map_conflicts: u64,
    pub examples: Vec<String>,
}

impl Findings {
    /// Nothing the contract forbids happened.
    pub fn passed(&self) -> bool {
        let t = &self.total;
        t.lost == 0
            && t.app_duplicates == 0
            && t.dm_order_violations == 0
            && t.cursor_regressions == 0
            && self.map_conflicts == 0
    }
}

struct SendInfo {
    device: u32,
    t: u64,
    kind: Kind,
    dm: bool,
    to: Vec<u32>,
    ack: Option<u64>,
}

/// One frame a device received, in the order it arrived.
struct Frame {
    t: u64,
    msg_id: MsgId,
    cursor: Option<Cursor>,
    duplicate: bool,
    server: Option<String>,
    partition: Option<u32>,
}

struct Parsed {
    sends: HashMap<MsgId, SendInfo>,
    frames: Vec<Vec<Frame>>,
    by_device: Vec<Vec<Entry>>,
}

fn parse(run: &RunInfo, entries: &[Entry]) -> Parsed {
    let n = entries
        .iter()
        .map(|e| e.device + 1)
        .max()
        .unwrap_or(0)
        .max(run.devices) as usize;
    let mut by_device: Vec<Vec<Entry>> = vec![Vec::new(); n];
    for e in entries {
        by_device[e.device as usize].push(e.clone());
    }
    let mut sends = HashMap::new();
    let mut frames: Vec<Vec<Frame>> = (0..n).map(|_| Vec::new()).collect();
    for (d, list) in by_device.iter().enumerate() {
        let (mut server, mut partition) = (None, None);
        for e in list {
            match &e.op {
                Op::Send {
                    msg_id,
                    kind,
                    dm,
                    to,
                } => {
                    sends.insert(
                        *msg_id,
                        SendInfo {
                            device: d as u32,
                            t: e.t_ms,
                            kind: *kind,
                            dm: *dm,
                            to: to.clone(),
                            ack: None,
                        },
                    );
                }
                Op::Ack { msg_id } => {
                    if let Some(s) = sends.get_mut(msg_id) {
                        s.ack.get_or_insert(e.t_ms);
                    }
                }
                Op::Connect {
                    server: s,
                    partition: p,
                    ..
                } => (server, partition) = (Some(s.clone()), Some(*p)),
                Op::Deliver { msg_id, cursor, .. } | Op::Duplicate { msg_id, cursor, .. } => {
                    frames[d].push(Frame {
                        t: e.t_ms,
                        msg_id: *msg_id,
                        cursor: cursor.as_deref().and_then(|c| c.parse().ok()),
                        duplicate: matches!(e.op, Op::Duplicate { .. }),
                        server: server.clone(),
                        partition,
                    })
                }
                Op::SendFailed { .. } | Op::Close { .. } | Op::FinalResume => {}
            }
        }
    }
    Parsed {
        sends,
        frames,
        by_device,
    }
}

/// Checks a history (see the module documentation).
pub fn check(run: &RunInfo, entries: &[Entry]) -> Findings {
    let p = parse(run, entries);
    let mut f = Findings {
        sends: p.sends.len() as u64,
        deliveries: p.frames.iter().map(|v| v.len() as u64).sum(),
        windows: run
            .faults
            .iter()
            .map(|w| WindowFindings {
                window: w.clone(),
                tally: Tally::default(),
                affected_devices: 0,
                acked_again: Spread::default(),
                never_acked_again: 0,
                send_wait: Spread::default(),
                sends_never_acked: 0,
                resumed: Spread::default(),
                never_resumed: 0,
            })
            .collect(),
        map_conflicts: run.map_conflicts.len() as u64,
        examples: run.map_conflicts.iter().take(5).cloned().collect(),
        ..Findings::default()
    };
    let mut counter = Counter {
        f: &mut f,
        faults: &run.faults,
    };
    counter.lost(&p, run.sealed_ms);
    counter.duplicates(&p);
    counter.dm_order(&p);
    counter.cursor_regressions(&p);
    counter.stale(&p, &run.maps);
    for (w, findings) in run.faults.iter().zip(f.windows.iter_mut()) {
        unavailability(&p, w, findings);
    }
    f
}

/// Adds each finding to the total and to the window it happened in.
struct Counter<'a> {
    f: &'a mut Findings,
    faults: &'a [Window],
}

impl Counter<'_> {
    fn add(&mut self, t: u64, what: fn(&mut Tally) -> &mut u64, example: impl FnOnce() -> String) {
        self.count(t, what);
        if self.f.examples.len() < 20 {
            self.f.examples.push(example());
        }
    }

    fn count(&mut self, t: u64, what: fn(&mut Tally) -> &mut u64) {
        *what(&mut self.f.total) += 1;
        // The latest fault injected by `t`, for its aftermath too (a
        // producer flushing late, devices moving back), until the next one.
        let w = self
            .faults
            .iter()
            .rposition(|w| w.at_ms <= t)
            .filter(|&i| t <= self.faults[i].end_ms + AFTERMATH_MS);
        match w {
            Some(i) => *what(&mut self.f.windows[i].tally) += 1,
            None => *what(&mut self.f.steady) += 1,
        }
    }

    fn lost(&mut self, p: &Parsed, sealed: Option<u64>) {
        let delivered: Vec<HashSet<MsgId>> = p
            .frames
            .iter()
            .map(|v| v.iter().map(|fr| fr.msg_id).collect())
            .collect();
        for (id, s) in &p.sends {
            let Some(ack) = s.ack else { continue };
            if s.kind != Kind::Chat || sealed.is_some_and(|seal| ack > seal) {
                continue;
            }
            self.f.acked_chat_checked += 1;
            for &d in &s.to {
                if !delivered
                    .get(d as usize)
                    .is_some_and(|set| set.contains(id))
                {
                    self.add(
                        s.t,
                        |t| &mut t.lost,
                        || format!("lost: {id} never reached device {d}"),
                    );
                }
            }
        }
    }

    fn duplicates(&mut self, p: &Parsed) {
        for (d, frames) in p.frames.iter().enumerate() {
            let mut first: HashMap<MsgId, Option<&Cursor>> = HashMap::new();
            for fr in frames {
                let Some(earlier) = first.get(&fr.msg_id) else {
                    first.insert(fr.msg_id, fr.cursor.as_ref());
                    continue;
                };
                let id = fr.msg_id;
                if !fr.duplicate {
                    self.add(
                        fr.t,
                        |t| &mut t.app_duplicates,
                        || format!("app duplicate: {id} handed to device {d}'s app again"),
                    );
                    continue;
                }
                // Allowed: counted, not listed among the examples.
                self.count(fr.t, same_or_other(*earlier, fr.cursor.as_ref()));
                self.count(fr.t, |t| &mut t.protocol_duplicates);
            }
        }
    }

    fn dm_order(&mut self, p: &Parsed) {
        // Position of each message's first delivery on each device.
        let pos: Vec<HashMap<MsgId, (usize, u64)>> = p
            .frames
            .iter()
            .map(|v| {
                let mut m = HashMap::new();
                for (i, fr) in v.iter().enumerate() {
                    m.entry(fr.msg_id).or_insert((i, fr.t));
                }
                m
            })
            .collect();
        let mut pairs: HashMap<(u32, u32), Vec<(&MsgId, &SendInfo)>> = HashMap::new();
        for (id, s) in &p.sends {
            if s.dm && s.kind == Kind::Chat && s.ack.is_some() {
                for &r in &s.to {
                    pairs.entry((s.device, r)).or_default().push((id, s));
                }
            }
        }
        for ((from, r), mut list) in pairs {
            let Some(at) = pos.get(r as usize) else {
                continue;
            };
            list.sort_by_key(|(_, s)| s.t);
            let mut by_ack: Vec<_> = list
                .iter()
                .filter_map(|(id, s)| Some((s.ack?, *id)))
                .collect();
            by_ack.sort();
            let (mut next, mut latest) = (0, None::<usize>);
            for (id, s) in &list {
                // Every message acknowledged before this one was sent must come first.
                while next < by_ack.len() && by_ack[next].0 < s.t {
                    if let Some(&(i, _)) = at.get(by_ack[next].1) {
                        latest = latest.max(Some(i));
                    }
                    next += 1;
                }
                if let (Some(&(i, t)), Some(l)) = (at.get(*id), latest) {
                    if l > i {
                        self.add(t, |t| &mut t.dm_order_violations, || {
                            format!("order: {id} from device {from} reached device {r} before an earlier acknowledged DM")
                        });
                    }
                }
            }
        }
    }

    fn cursor_regressions(&mut self, p: &Parsed) {
        for (d, frames) in p.frames.iter().enumerate() {
            let mut high: Option<&Cursor> = None;
            // Only frames handed to the app move a device's cursor.
            for fr in frames.iter().filter(|fr| !fr.duplicate) {
                let Some(c) = &fr.cursor else { continue };
                match high {
                    Some(h) if h.log_epoch == c.log_epoch && c.offset < h.offset => {
                        let (was, now) = (h.offset, c.offset);
                        self.add(
                            fr.t,
                            |t| &mut t.cursor_regressions,
                            || format!("cursor regression at device {d}: {now} after {was}"),
                        );
                    }
                    _ => high = Some(c),
                }
            }
        }
    }

    fn stale(&mut self, p: &Parsed, maps: &[MapAt]) {
        // When each (partition, server) delivered anything, in time order.
        let mut delivered: HashMap<(u32, &str), Vec<u64>> = HashMap::new();
        for fr in p.frames.iter().flatten() {
            if let (Some(part), Some(s)) = (fr.partition, &fr.server) {
                delivered.entry((part, s.as_str())).or_default().push(fr.t);
            }
        }
        for v in delivered.values_mut() {
            v.sort_unstable();
        }
        for fr in p.frames.iter().flatten() {
            let (Some(part), Some(server)) = (fr.partition, &fr.server) else {
                continue;
            };
            let Some((owner, since)) = owner_at(maps, part, fr.t) else {
                continue;
            };
            // The maps are polled: a new owner may serve a little before
            // the history holds the map naming it.
            let soon = owner_at(maps, part, fr.t + MAP_SLACK_MS).map(|(o, _)| o);
            if owner == server || soon == Some(server.as_str()) {
                continue;
            }
            let new_owner_delivered = delivered.get(&(part, owner)).is_some_and(|ts| {
                ts.partition_point(|&t| t < since) < ts.partition_point(|&t| t <= fr.t)
            });
            if new_owner_delivered {
                let t = fr.t;
                self.add(t, |t| &mut t.stale_deliveries, || {
                    format!("stale: {server} delivered partition {part} at {t} ms; {owner} owned it since {since} ms")
                });
            }
        }
    }
}

fn same_or_other(first: Option<&Cursor>, again: Option<&Cursor>) -> fn(&mut Tally) -> &mut u64 {
    if first.is_some() && first == again {
        |t| &mut t.duplicates_same_record
    } else {
        |t| &mut t.duplicates_other_record
    }
}

/// The owner of `part` at `t` and since when it has owned it without a break.
fn owner_at(maps: &[MapAt], part: u32, t: u64) -> Option<(&str, u64)> {
    let idx = maps.partition_point(|m| m.t_ms <= t).checked_sub(1)?;
    let owner = maps[idx].owners.get(part as usize)?.as_deref()?;
    let mut since = maps[idx].t_ms;
    for m in maps[..idx].iter().rev() {
        if m.owners.get(part as usize).and_then(|o| o.as_deref()) != Some(owner) {
            break;
        }
        since = m.t_ms;
    }
    Some((owner, since))
}

/// Which devices the fault reached, and how long until they were served again.
fn unavailability(p: &Parsed, w: &Window, out: &mut WindowFindings) {
    let inside = |t: u64| w.at_ms <= t && t <= w.end_ms;
    let (mut acked, mut resumed, mut waits) = (Vec::new(), Vec::new(), Vec::new());
    for list in &p.by_device {
        let closed = list
            .iter()
            .find(|e| inside(e.t_ms) && matches!(e.op, Op::Close { .. }))
            .map(|e| e.t_ms);
        let slow = list
            .iter()
            .filter(|e| inside(e.t_ms))
            .find_map(|e| match &e.op {
                Op::Send { msg_id, .. } => {
                    let ack = p.sends.get(msg_id).and_then(|s| s.ack);
                    ack.is_none_or(|a| a.saturating_sub(e.t_ms) > SLOW_ACK_MS)
                        .then_some(e.t_ms)
                }
                _ => None,
            });
        let Some(stall) = closed.into_iter().chain(slow).min() else {
            continue;
        };
        out.affected_devices += 1;
        for e in list.iter().filter(|e| inside(e.t_ms)) {
            if let Op::Send { msg_id, .. } = &e.op {
                match p.sends.get(msg_id).and_then(|s| s.ack) {
                    Some(a) => waits.push(a.saturating_sub(e.t_ms)),
                    None => out.sends_never_acked += 1,
                }
            }
        }
        // A send stuck in the fault is acknowledged when it ends; an idle
        // device's next send tells later (an upper bound).
        let again = list
            .iter()
            .find(|e| e.t_ms > stall && matches!(e.op, Op::Ack { .. }))
            .map(|e| e.t_ms);
        match again {
            Some(t) => acked.push(t - w.at_ms),
            None => out.never_acked_again += 1,
        }
        if let Some(c) = closed {
            let back = list
                .iter()
                .find(|e| e.t_ms >= c && matches!(e.op, Op::Connect { .. }));
            match back {
                Some(e) => resumed.push(e.t_ms - w.at_ms),
                None => out.never_resumed += 1,
            }
        }
    }
    out.acked_again = Spread::of(acked);
    out.send_wait = Spread::of(waits);
    out.resumed = Spread::of(resumed);
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
