//! Reconnect storm (issue "Scale"): devices on three servers, each a real
//! `switchboard_client::Client` (resolve through the coordinator, resume
//! from its cursor, resend unacked sends), held by child processes
//! (`storm-devices`). While chat DMs flow at a steady rate: `kill -9` one
//! server and time every one of its devices until it is resumed elsewhere;
//! then a rolling restart (SIGTERM, drain, a new process with the same id,
//! one server at a time, as Kubernetes does). Also a server frozen (SIGSTOP:
//! no reset, as when its host vanishes) until its devices are elsewhere, and
//! a fourth server added to the three (the scale-up herd). Counts every
//! acked message that never reached its recipient (must be 0).

use super::child::Child;
use super::Bench;
use crate::bench::Env;
use devices::Outage;
pub use devices::{hold, StormHoldArgs};
use probe::Watch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod devices;
mod messages;
mod probe;
mod report;
use report::{OutageReport, StormReport};

#[derive(clap::Args)]
pub struct StormArgs {
    #[arg(long, default_value_t = 36_000)]
    devices: usize,
    #[arg(long, default_value_t = 3)]
    servers: usize,
    #[arg(long, default_value_t = 12_000)]
    per_holder: usize,
    /// Chat DMs per second while the failures happen (all holders together).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 300)]
    senders: usize,
    /// Longest wait for every device to be back after a failure.
    #[arg(long, default_value_t = 180)]
    settle_secs: u64,
    /// Without a persister every resume reads its gap from the log (the
    /// hardest case for the broker).
    #[arg(long)]
    no_persister: bool,
    /// The servers' ping interval (`SWITCHBOARD_PING_SECS`): a device of a
    /// frozen server notices after two of them.
    #[arg(long, default_value_t = 20)]
    ping_secs: u64,
    /// The servers' lease TTL (`SWITCHBOARD_LEASE_TTL_SECS`).
    #[arg(long, default_value_t = 5)]
    lease_ttl_secs: u64,
    /// Which failures to run, in this order: kill, freeze, rolling, scale-up
    /// (the others are reported as null).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,freeze,rolling,scale-up"
    )]
    phases: Vec<Phase>,
    /// The coordinator as a process of its own, as in production (by
    /// default it runs inside the bench, sharing its open-file limit).
    #[arg(long)]
    own_coordinator: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Kill,
    Freeze,
    Rolling,
    ScaleUp,
}

/// How long the steady state's CPU is sampled before the first failure.
const STEADY: Duration = Duration::from_secs(10);

struct Holders(Vec<Child>);

impl Holders {
    async fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        for c in &mut self.0 {
            c.tell(line).await?;
        }
        Ok(())
    }

    async fn ask(&mut self, question: &str, tag: &str) -> anyhow::Result<Vec<String>> {
        self.tell(question).await?;
        let mut out = Vec::new();
        for c in &mut self.0 {
            out.push(c.line(tag).await?);
        }
        Ok(out)
    }

    async fn connected(&mut self) -> anyhow::Result<usize> {
        Ok(self.counts().await?.0)
    }

    /// Devices connected, and of them synced since their welcome.
    async fn counts(&mut self) -> anyhow::Result<(usize, usize)> {
        let lines = self.ask("status", "status").await?;
        let field = |l: &str, i: usize| {
            l.split_whitespace()
                .nth(i)
                .and_then(|n| n.parse::<usize>().ok())
        };
        let sum = |i| lines.iter().filter_map(|l| field(l, i)).sum();
        Ok((sum(0), sum(1)))
    }

    /// Waits (at most `limit`) until every device has all it missed —
    /// a device counts as back at its welcome, as synced once its replay
    /// is over — so the outage is read after the last `synced`.
    async fn all_synced(&mut self, devices: usize, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            let (_, synced) = self.counts().await?;
            if synced >= devices {
                return Ok(());
            }
            if t0.elapsed() > limit {
                println!("  devices not synced within {limit:?}: {synced} of {devices}");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every device is connected again; seconds it took.
    async fn all_back(&mut self, devices: usize, limit: Duration) -> anyhow::Result<f64> {
        self.all_back_sampled(devices, limit, None).await
    }

    /// `all_back`, sampling `timeline` each second meanwhile.
    async fn all_back_sampled(
        &mut self,
        devices: usize,
        limit: Duration,
        mut timeline: Option<&mut probe::Timeline>,
    ) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let mut said = Instant::now();
        loop {
            let n = self.connected().await?;
            if let Some(t) = timeline.as_deref_mut() {
                t.tick(n);
            }
            if n >= devices {
                break;
            }
            if said.elapsed() > Duration::from_secs(5) {
                println!("  {n} of {devices} devices connected");
                said = Instant::now();
            }
            if t0.elapsed() > limit {
                println!("  devices not back within {limit:?}: {n} of {devices}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(t0.elapsed().as_secs_f64())
    }
}

/// One failure: `act` runs, devices get `notice` to notice it, then every
/// device must be back.
async fn measure<F, Fut>(
    what: &str,
    watch: Watch,
    holders: &mut Holders,
    (devices, notice, settle): (usize, Duration, Duration),
    act: F,
) -> anyhow::Result<OutageReport>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let (stop, sampler) = probe::route_sampler(watch.coordinator.clone());
    let mut pages_before = probe::pages(&watch.servers).await;
    pages_before.extend(watch.fresh.iter().map(|_| Some(String::new())));
    let mut timeline = probe::Timeline::new(watch.pids.clone());
    let t = super::now_us();
    let drops_before = crate::conntrack::drops();
    let listen_before = crate::netstat::listen_drops();
    act().await?;
    let noticed = Instant::now() + notice;
    while Instant::now() < noticed {
        timeline.tick(holders.connected().await?);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds_until_all_back = holders
        .all_back_sampled(devices, settle, Some(&mut timeline))
        .await?
        + notice.as_secs_f64();
    holders.all_synced(devices, settle).await?;
    let servers: Vec<String> = watch.servers.iter().chain(&watch.fresh).cloned().collect();
    let pages_after = probe::pages(&servers).await;
    let start_steps_ms = probe::step_quantiles(&pages_before, &pages_after);
    let server_closes = probe::closes(&pages_before, &pages_after);
    let _ = stop.send(());
    let (route_peak_per_s, route_requests) = sampler.await?;
    let mut all = Outage::default();
    for line in holders.ask(&format!("storm {t}"), "storm").await? {
        all.merge(serde_json::from_str(&line)?);
    }
    let q = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let p50_p99 = |v: &mut Vec<f64>| [q(v, 0.5), q(v, 0.99)];
    let r = OutageReport {
        what: what.to_owned(),
        devices_disconnected: all.affected,
        devices_back: all.back,
        devices_resumed: all.resumed,
        back_p50_ms: q(&mut all.back_ms, 0.5),
        back_p99_ms: q(&mut all.back_ms, 0.99),
        back_max_ms: q(&mut all.back_ms, 1.0),
        noticed_ms: p50_p99(&mut all.noticed_ms),
        devices_synced: all.synced_ms.len(),
        synced_ms: p50_p99(&mut all.synced_ms),
        first_route_ms: p50_p99(&mut all.first_route_ms),
        last_attempt_ms: p50_p99(&mut all.last_attempt_ms),
        attempts: all.attempts,
        failures: all.failures,
        close_codes: all.close_codes,
        server_closes,
        conntrack_drops: crate::conntrack::drops()
            .zip(drops_before)
            .map(|(a, b)| a.saturating_sub(b)),
        listen_drops: crate::netstat::listen_drops()
            .zip(listen_before)
            .map(|(a, b)| a.saturating_sub(b)),
        route_requests,
        route_peak_per_s,
        seconds_until_all_back,
        start_steps_ms,
        timeline: timeline.samples,
    };
    println!("{}", serde_json::to_string(&r)?);
    Ok(r)
}

fn holder(
    b: &Bench,
    a: &StormArgs,
    first: usize,
    count: usize,
    holders: usize,
) -> anyhow::Result<Child> {
    let flags = [
        ("total", a.devices.to_string()),
        ("senders", (a.senders / holders).max(1).to_string()),
        ("rate", (a.rate / holders as u64).max(1).to_string()),
    ];
    Child::command("storm-devices", &b.span(first, count), &flags)
}

/// Waits for the cluster to settle after a failure; a cluster that does not
/// is said, and the run goes on: what was measured is still reported.
async fn settle_or_say(b: &Bench) {
    if let Err(e) = b.settled().await {
        println!("  the cluster did not settle after the failure: {e:#}");
    }
}

/// How many devices, how long to give them to notice a failure, and how
/// long they may take to be back.
type Pace = (usize, Duration, Duration);

pub async fn storm(infra: Arc<Env>, a: StormArgs) -> anyhow::Result<()> {
    let env = [
        ("SWITCHBOARD_PING_SECS", a.ping_secs.to_string()),
        ("SWITCHBOARD_LEASE_TTL_SECS", a.lease_ttl_secs.to_string()),
    ];
    // Each device's reconnect leaves a few closed connections in the table
    // for two minutes; a full table drops new connections' packets.
    let conntrack_max = crate::conntrack::ensure_room(a.devices as u64 * 32);
    let drops_before = crate::conntrack::drops();
    let mut b = Bench::start_opts(infra.clone(), a.servers, &env, a.own_coordinator).await?;
    // The whole stack: resumes read what the persister has stored from
    // PostgreSQL, the rest from the log.
    let persister = match a.no_persister {
        true => None,
        false => Some(b.spawn_persister()?),
    };
    let t0 = Instant::now();
    let mut holders = start_holders(&b, &a)?;
    holders
        .all_back(a.devices, Duration::from_secs(600))
        .await?;
    let connect_seconds = t0.elapsed().as_secs_f64();
    println!("{} devices connected in {connect_seconds:.1} s", a.devices);
    holders.tell("go").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settle = Duration::from_secs(a.settle_secs);
    // A reset or a drain is noticed within moments; a frozen server only
    // after two silent ping intervals.
    let quick = (a.devices, Duration::from_secs(1), settle);
    let silent = Duration::from_secs(2 * a.ping_secs + 1);
    let mut fixed = match b.coordinator.own() {
        true => vec![
            ("bench".to_owned(), std::process::id()),
            ("coordinator".to_owned(), b.coordinator.pid()),
        ],
        false => vec![("bench (coordinator)".to_owned(), std::process::id())],
    };
    fixed.extend(infra.broker_pid().map(|p| ("broker".to_owned(), p)));
    fixed.extend(
        persister
            .as_ref()
            .and_then(|p| p.pid())
            .map(|p| ("persister".to_owned(), p)),
    );
    for (i, h) in holders.0.iter().enumerate() {
        fixed.extend(h.pid().map(|p| (format!("holder{i}"), p)));
    }
    // What all devices connected cost before any failure: pings (the
    // interval's price) and the DMs.
    let steady = probe::steady(Watch::of(&b, &fixed).pids, a.devices, STEADY).await;
    println!("steady, cores: {}", serde_json::to_string(&steady.cores)?);
    let run = |p: Phase| a.phases.contains(&p);
    let (quick, silent) = (
        (quick, &fixed[..]),
        ((a.devices, silent, settle), &fixed[..]),
    );
    let kill = match run(Phase::Kill) {
        true => Some(kill_one(&mut b, &mut holders, quick).await?),
        false => None,
    };
    let freeze = match run(Phase::Freeze) {
        true => Some(freeze_one(&b, &mut holders, silent).await?),
        false => None,
    };
    let (rolling_restart, rolling_restart_seconds) = match run(Phase::Rolling) {
        true => {
            let t_roll = Instant::now();
            let r = rolling(&mut b, &mut holders, quick).await?;
            (r, Some(t_roll.elapsed().as_secs_f64()))
        }
        false => (Vec::new(), None),
    };
    let scale_up = match run(Phase::ScaleUp) {
        true => Some(add_one(&mut b, &mut holders, quick).await?),
        false => None,
    };
    holders.tell("stop").await?;
    let m = messages::settle(&mut holders, a.devices, settle).await?;
    let lost_sample = m.look_up_lost(&b.db, &mut holders).await?;
    let report = StormReport {
        devices: a.devices,
        persister: !a.no_persister,
        servers: a.servers,
        holders: holders.0.len(),
        connect_seconds,
        conntrack_max,
        conntrack_drops: crate::conntrack::drops()
            .zip(drops_before)
            .map(|(a, b)| a.saturating_sub(b)),
        dm_rate_per_s: a.rate,
        lease_ttl_secs: a.lease_ttl_secs,
        ping_secs: a.ping_secs,
        steady,
        kill,
        freeze,
        rolling_restart,
        rolling_restart_seconds,
        scale_up,
        sent: m.sent,
        acked: m.acked.len() as u64,
        send_errors: m.send_errors,
        unanswered: m.unanswered(),
        delivered: m.delivered(),
        duplicates: m.duplicates(),
        lost: m.lost().count() as u64,
        lost_why: messages::tally_why(&lost_sample),
        lost_sample,
    };
    super::report(&report, a.json.as_deref())?;
    for c in holders.0 {
        c.kill().await;
    }
    if let Some(p) = persister {
        let _ = p.terminate().await;
    }
    b.stop().await;
    Ok(())
}

fn start_holders(b: &Bench, a: &StormArgs) -> anyhow::Result<Holders> {
    let n = a.devices.div_ceil(a.per_holder.max(1));
    let mut holders = Holders(Vec::new());
    for k in 0..n {
        let first = k * a.per_holder;
        let count = a.per_holder.min(a.devices - first);
        holders.0.push(holder(b, a, first, count, n)?);
    }
    Ok(holders)
}

/// `kill -9` of the second server; the orchestrator then restarts it under
/// its own name.
async fn kill_one(
    b: &mut Bench,
    holders: &mut Holders,
    (pace, fixed): (Pace, &[(String, u32)]),
) -> anyhow::Result<OutageReport> {
    let victim = b.servers.remove(1);
    let what = "kill -9 one server";
    let kill = measure(what, Watch::of(b, fixed), holders, pace, || async {
        victim.1.kill().await
    })
    .await?;
    let process = b.spawn_server(&victim.0, victim.2)?;
    b.servers.insert(1, (victim.0, process, victim.2));
    settle_or_say(b).await;
    holders.all_back(pace.0, pace.2).await?;
    Ok(kill)
}

/// SIGSTOP of the last server until its devices are back elsewhere, then
/// SIGCONT: it finds its lease gone, registers again and takes its share
/// of partitions back (those devices move once more before the next step).
async fn freeze_one(
    b: &Bench,
    holders: &mut Holders,
    (pace, fixed): (Pace, &[(String, u32)]),
) -> anyhow::Result<OutageReport> {
    let (_, process, _) = b
        .servers
        .last()
        .ok_or_else(|| anyhow::anyhow!("no server"))?;
    let what = "freeze one server (SIGSTOP: no reset, no refusal)";
    let watch = Watch::of(b, fixed);
    let freeze = measure(what, watch, holders, pace, || process.signal("STOP")).await;
    process.signal("CONT").await?;
    let freeze = freeze?;
    settle_or_say(b).await;
    holders.all_back(pace.0, pace.2).await?;
    Ok(freeze)
}

/// SIGTERM, drain and a new process with the same id, one server at a time.
async fn rolling(
    b: &mut Bench,
    holders: &mut Holders,
    (pace, fixed): (Pace, &[(String, u32)]),
) -> anyhow::Result<Vec<OutageReport>> {
    let mut reports = Vec::new();
    for i in 0..b.servers.len() {
        let (id, process, port) = b.servers.remove(i);
        let what = format!("rolling restart: {id}");
        let r = measure(&what, Watch::of(b, fixed), holders, pace, || async {
            process.terminate().await.map(drop)
        })
        .await?;
        reports.push(r);
        let process = b.spawn_server(&id, port)?;
        b.servers.insert(i, (id, process, port));
        settle_or_say(b).await;
    }
    Ok(reports)
}

/// One more server: the partitions it takes move their devices to it.
async fn add_one(
    b: &mut Bench,
    holders: &mut Holders,
    (pace, fixed): (Pace, &[(String, u32)]),
) -> anyhow::Result<OutageReport> {
    let id = format!("bench{}", b.servers.len());
    let port = super::free_port()?;
    let what = format!("scale up: {id} joins {} servers", b.servers.len());
    let mut watch = Watch::of(b, fixed);
    watch.fresh.push(format!("http://127.0.0.1:{port}"));
    measure(&what, watch, holders, pace, || async {
        let process = b.spawn_server(&id, port)?;
        b.servers.push((id, process, port));
        b.settled().await
    })
    .await
}
