//! Reports the sessions of lost registrations (docs/protocol.md,
//! "Connection events"): a server killed with -9, or one whose lease
//! expired, cannot write its sessions' `disconnected`, so the server that
//! owns their partition now writes it (`server_lost`) — once the persister
//! has stored every event written before the registration was seen gone,
//! so a session the dead server closed itself is not reported twice.

use crate::events::{now_ms, EventLog};
use crate::state::AppState;
use protocol::{ConnectionEvent, DisconnectReason, EventKind};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use store::OpenSession;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// What the reaper remembers between rounds.
#[derive(Debug, Default)]
pub struct Reaper {
    /// Partition → the events topic's end when a lost session was first
    /// seen in it: the persister must pass it before anything is reported.
    waiting: BTreeMap<u32, i64>,
    /// Sessions reported and not yet seen closed in the store.
    reported: HashSet<Uuid>,
}

/// One round's verdict.
#[derive(Debug, PartialEq, Eq)]
pub struct Round {
    /// Report these now.
    pub report: Vec<OpenSession>,
    /// Partitions with lost sessions whose end must be read before a report.
    pub need_end: Vec<u32>,
}

impl Reaper {
    /// Plans a round from the open sessions of our partitions, the live
    /// registrations, and the persister's stored position (`stored`) in
    /// each partition of the events topic.
    pub fn plan(
        &mut self,
        open: Vec<OpenSession>,
        live: &HashSet<Uuid>,
        stored: &BTreeMap<u32, i64>,
    ) -> Round {
        let still_open: HashSet<Uuid> = open.iter().map(|s| s.session).collect();
        self.reported.retain(|s| still_open.contains(s));
        let lost: Vec<OpenSession> = open
            .into_iter()
            .filter(|s| !live.contains(&s.incarnation) && !self.reported.contains(&s.session))
            .collect();
        let lost_in: HashSet<u32> = lost.iter().map(|s| s.partition).collect();
        self.waiting.retain(|p, _| lost_in.contains(p));
        let need_end = lost_in
            .iter()
            .filter(|p| !self.waiting.contains_key(p))
            .copied()
            .collect();
        let caught_up = |p: u32| {
            self.waiting
                .get(&p)
                .is_some_and(|end| stored.get(&p).copied().unwrap_or(0) >= *end)
        };
        let report: Vec<OpenSession> = lost
            .into_iter()
            .filter(|s| caught_up(s.partition))
            .collect();
        self.reported.extend(report.iter().map(|s| s.session));
        Round { report, need_end }
    }

    /// The events topic's end of `partition` as of now (see `waiting`).
    pub fn wait_for(&mut self, partition: u32, end: i64) {
        self.waiting.insert(partition, end);
    }
}

/// How often our partitions are checked for sessions of lost registrations.
pub const EVERY: Duration = Duration::from_secs(1);

/// Rounds until `stop`, while this server is ready (it owns what the map says).
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut reaper = Reaper::default();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = round(&state, &mut reaper).await {
            warn!(error = %e, "reaper round failed; retrying");
        }
    }
}

async fn round(state: &AppState, reaper: &mut Reaper) -> anyhow::Result<()> {
    let Some(a) = state.assignment() else {
        return Ok(());
    };
    if !state.is_ready() {
        return Ok(());
    }
    let mine = a.partitions_of(&state.info.server_id);
    if mine.is_empty() {
        return Ok(());
    }
    let live: HashSet<Uuid> = a.servers.values().filter_map(|s| s.incarnation).collect();
    let store = state.members.store();
    let open = store.open_sessions(&mine).await?;
    let events = protocol::events_topic(state.topic());
    let stored = store.stored_offsets(&events, &mine).await?;
    let plan = reaper.plan(open, &live, &stored);
    for p in plan.need_end {
        let (_, end) = state.log.events_watermarks(p).await?;
        reaper.wait_for(p, end);
    }
    for s in plan.report {
        info!(session = %s.session, user = %s.user, server = %s.server, "reporting a session of a lost registration");
        report(&state.events, s).await;
        state.metrics.sessions_reaped.inc();
    }
    Ok(())
}

async fn report(log: &EventLog, s: OpenSession) {
    let event = ConnectionEvent {
        v: protocol::events::EVENT_VERSION,
        event: EventKind::Disconnected,
        user: s.user,
        device: s.device,
        session: s.session,
        server: s.server,
        incarnation: s.incarnation,
        at_ms: now_ms(),
        reason: Some(DisconnectReason::ServerLost),
        channel: None,
    };
    log.write(s.partition, &event).await;
}

#[cfg(test)]
mod tests;
