//! The load generator and chaos run (`switchboard-load`, `./dev load`):
//! starts the whole system in containers (or uses a running one), drives
//! N users × D devices through the client library, optionally injects
//! failures, then checks that no chat message was lost or duplicated and
//! that PostgreSQL holds exactly one row per message.

pub mod backing;
pub mod chaos;
pub mod cluster;
pub mod generator;
pub mod ledger;
pub mod net;
pub mod partitions;
pub mod plot;
pub mod report;
pub mod traffic;

use anyhow::Context;
use cluster::{Cluster, Role, Shape};
use report::{Percentiles, PgCheck, Report};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Options {
    /// Users taking part.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Devices per user, each its own WebSocket session.
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Members per group conversation.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// Group conversations (default: one per 8 users).
    #[arg(long)]
    pub groups: Option<usize>,
    /// Target sends per second (all kinds together).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Percent of sends that are chat DMs.
    #[arg(long, default_value_t = 60)]
    pub dm: u32,
    /// Percent of sends that are chat group messages.
    #[arg(long, default_value_t = 25)]
    pub group: u32,
    /// Percent of sends that are ephemeral (DM or group).
    #[arg(long, default_value_t = 15)]
    pub ephemeral: u32,
    /// Percent of sends that are chat publications to a channel (each
    /// device subscribes to one of --channels channels).
    #[arg(long, default_value_t = 0)]
    pub channel: u32,
    /// Channels, with --channel.
    #[arg(long, default_value_t = 4)]
    pub channels: usize,
    /// Sends waiting for their ack at once; beyond it the rate drops.
    #[arg(long, default_value_t = 4000)]
    pub in_flight: usize,
    /// Seed of the traffic plan (same seed, same sequence of sends).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Inject failures during the load (needs the containerised system).
    #[arg(long)]
    pub chaos: bool,
    /// Seconds between the recovery from one failure and the next failure.
    #[arg(long, default_value_t = 20)]
    pub chaos_every: u64,
    /// Send for longer than --seconds if needed, until every kind of
    /// failure happened this many times.
    #[arg(long, default_value_t = 1)]
    pub chaos_rounds: usize,
    /// Seconds a failed service stays down before its restart (a cut link
    /// or a frozen process, with --partitions).
    #[arg(long, default_value_t = 3)]
    pub chaos_down: u64,
    /// Network faults and gray failures instead of kills (needs --chaos and
    /// --network).
    #[arg(long)]
    pub network_faults: bool,
    /// Only these faults (comma-separated), instead of every kill
    /// (--chaos) or every network fault (--network-faults).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<chaos::Fault>,
    /// With --network-faults: seconds the servers' link to the broker stays slow and lossy.
    #[arg(long, default_value_t = 60)]
    pub slow_secs: u64,
    /// Coordinator replicas to start.
    #[arg(long, default_value_t = 2)]
    pub coordinators: usize,
    /// Messaging servers to start.
    #[arg(long, default_value_t = 3)]
    pub servers: usize,
    /// Persister replicas to start.
    #[arg(long, default_value_t = 1)]
    pub persisters: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// Every process on an address of its own, on a Docker network of the
    /// run's own (needed by --network-faults).
    #[arg(long)]
    pub network: bool,
    /// The servers' ping interval: a half-open connection is noticed by the
    /// client after two, by the server after three.
    #[arg(long, default_value_t = 20)]
    pub ping_secs: u64,
    /// Extra librdkafka settings for the servers' producers, `k=v,k=v`.
    #[arg(long, default_value = "")]
    pub producer_config: String,
    /// Use a running system instead of starting containers: its
    /// coordinator URL(s), comma-separated.
    #[arg(long, env = "SWITCHBOARD_COORDINATOR_URL", requires = "jwt_secret")]
    pub coordinator_url: Option<String>,
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
    /// With --coordinator-url: the database to check row counts in.
    #[arg(long, env = "SWITCHBOARD_DATABASE_URL", hide_env_values = true)]
    #[serde(skip)]
    pub database_url: Option<String>,
    /// Where report.json and latency.png go.
    #[arg(long, default_value = "target/load")]
    pub out: PathBuf,
    /// Where the report goes (default: report.json in --out).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Upper bound for each wait after the send window (acks, deliveries, rows).
    #[arg(long, default_value_t = 180)]
    pub settle_secs: u64,
}

impl Options {
    pub fn validate(&self) -> Result<(), String> {
        if self.users < 2 || self.devices == 0 {
            return Err("--users must be at least 2 and --devices at least 1".into());
        }
        if !self.rate.is_finite() || self.rate <= 0.0 || self.seconds == 0 {
            return Err("--rate and --seconds must be positive".into());
        }
        if self.dm + self.group + self.ephemeral + self.channel == 0 {
            return Err("--dm, --group, --ephemeral and --channel cannot all be 0".into());
        }
        if self.channel > 0 && self.channels == 0 {
            return Err("--channel needs --channels of at least 1".into());
        }
        if self.chaos && self.coordinator_url.is_some() {
            return Err("--chaos needs the containerised system (drop --coordinator-url)".into());
        }
        if self.network_faults && !self.chaos {
            return Err("--network-faults needs --chaos".into());
        }
        if self.fault_kinds().iter().any(|f| f.is_network()) && !self.network {
            return Err("network faults need --network".into());
        }
        if self.chaos && (self.servers < 2 || self.coordinators < 2) {
            return Err("--chaos needs at least 2 servers and 2 coordinators".into());
        }
        Ok(())
    }

    fn fault_kinds(&self) -> Vec<chaos::Fault> {
        match (self.faults.is_empty(), self.network_faults) {
            (false, _) => self.faults.clone(),
            (true, true) => chaos::PARTITIONS.to_vec(),
            (true, false) => chaos::ALL.to_vec(),
        }
    }

    pub fn report_path(&self) -> PathBuf {
        self.report
            .clone()
            .unwrap_or_else(|| self.out.join("report.json"))
    }

    /// The generator's settings and the database to check, from the
    /// containerised system or from the flags for a running one.
    fn settings(&self, cluster: Option<&Cluster>) -> (generator::Settings, Option<String>) {
        let (coordinators, jwt_secret, db) = match cluster {
            Some(c) => (
                c.coordinator_urls(),
                c.jwt_secret.clone(),
                Some(c.database_url.clone()),
            ),
            None => (
                self.coordinator_url.clone().unwrap_or_default(),
                self.jwt_secret.clone().unwrap_or_default(),
                self.database_url.clone(),
            ),
        };
        let settings = generator::Settings {
            coordinators,
            jwt_secret,
            users: self.users,
            devices: self.devices,
            group_size: self.group_size,
            groups: self.groups.unwrap_or(self.users / 8),
            rate: self.rate,
            mix: traffic::Mix {
                dm: self.dm,
                group: self.group,
                ephemeral: self.ephemeral,
                channel: self.channel,
            },
            channels: if self.channel > 0 { self.channels } else { 0 },
            in_flight: self.in_flight,
            seed: self.seed,
        };
        (settings, db)
    }

    fn shape(&self) -> Shape {
        Shape {
            coordinators: self.coordinators,
            servers: self.servers,
            persisters: self.persisters,
            partitions: self.partitions,
            producer_config: self.producer_config.clone(),
            network: self.network,
            ping_secs: self.ping_secs,
        }
    }
}

/// Options from command-line words, as `switchboard-load` takes them (for
/// the tests' short runs).
pub fn options_from<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        options: Options,
    }
    <Args as clap::Parser>::try_parse_from(args).map(|a| a.options)
}

/// Runs the whole load (and chaos) run and writes the report files.
/// `infra`: broker, etcd and PostgreSQL to share (tests); `None` starts them.
pub async fn run(
    opts: &Options,
    infra: Option<std::sync::Arc<harness::Infra>>,
) -> anyhow::Result<Report> {
    opts.validate().map_err(anyhow::Error::msg)?;
    let cluster = match &opts.coordinator_url {
        Some(_) => None,
        None => {
            eprintln!(
                "[load] starting the system in containers: {:?}",
                opts.shape()
            );
            Some(Cluster::start(&opts.shape(), infra).await?)
        }
    };
    let result = drive(opts, cluster.as_ref()).await;
    if let Some(c) = cluster {
        if let Err(e) = c.save_logs(&opts.out.join("logs")).await {
            eprintln!("[load] could not save the service logs: {e:#}");
        }
        c.stop().await;
    }
    let report = result?;
    write(opts, &report)?;
    Ok(report)
}

/// What the send window produced.
struct Window {
    seconds: f64,
    during: ledger::Counts,
    cpu: Vec<report::CpuUse>,
    faults: Vec<chaos::Happened>,
}

async fn drive(opts: &Options, cluster: Option<&Cluster>) -> anyhow::Result<Report> {
    let (settings, db) = opts.settings(cluster);
    if let Some(c) = cluster {
        let n = c.of(Role::Server).count();
        harness::wait_until("the system settles", Duration::from_secs(120), || {
            c.settled(n)
        })
        .await?;
    }
    eprintln!("[load] connecting {} devices", opts.users * opts.devices);
    let mut gen = generator::Generator::start(settings).await?;
    let recorder = gen.recorder.clone();
    let maps = CancellationToken::new();
    let poller = tokio::spawn(poll_maps(
        recorder.clone(),
        gen.coordinators().to_owned(),
        maps.clone(),
    ));
    let ledger = gen.ledger.clone();
    let prefix = gen.prefix().to_owned();
    let devices = gen.population.device_count();
    let window = send_window(opts, cluster, &mut gen).await;
    let settle = Duration::from_secs(opts.settle_secs);
    eprintln!("[load] send window over; waiting for acks and deliveries");
    gen.drain_sends(settle).await;
    gen.wait_quiet(Duration::from_secs(5), settle).await;
    eprintln!("[load] final resume of every device");
    let resumed = gen.final_resume().await;
    maps.cancel();
    let _ = poller.await;
    let history_dir = opts.out.join("history");
    recorder.write(&history_dir)?;
    let (run, entries) = crate::history::read(&history_dir)?;
    let history = crate::history::check::check(&run, &entries);
    let postgres = match db {
        Some(url) => Some(pg_check(&url, &prefix, &ledger.chat_ids(), settle).await?),
        None => None,
    };
    let (live, all) = ledger.histograms();
    let mut fault_counts = std::collections::BTreeMap::new();
    for f in &window.faults {
        *fault_counts.entry(f.fault.label().to_owned()).or_insert(0) += 1;
    }
    let d = &window.during;
    let mut report = Report {
        machine: report::machine(),
        settings: serde_json::to_value(opts)?,
        send_seconds: window.seconds,
        sends_per_s: d.sends as f64 / window.seconds,
        deliveries_per_s: (d.chat_deliveries + d.ephemeral_deliveries) as f64 / window.seconds,
        latency_live: Percentiles::of(&live),
        latency_all: Percentiles::of(&all),
        counts: ledger.counts(),
        tally: ledger.tally(),
        devices_resumed_at_end: resumed,
        devices,
        postgres,
        faults: window.faults,
        fault_counts,
        cpu: window.cpu,
        history,
        failures: Vec::new(),
    };
    report.judge();
    if opts.chaos {
        for f in opts.fault_kinds() {
            let n = report.faults.iter().filter(|h| h.fault == f).count();
            if n < opts.chaos_rounds {
                report.failures.push(format!(
                    "{} happened {n} times, fewer than --chaos-rounds {} (a longer --seconds lets the run go on)",
                    f.label(),
                    opts.chaos_rounds
                ));
            }
        }
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("failed to create {}", opts.out.display()))?;
    let title = format!(
        "Switchboard send → deliver, {devices} devices at {}/s",
        opts.rate
    );
    let series = [("live deliveries", &live), ("all incl. replays", &all)];
    plot::latency_png(&opts.out.join("latency.png"), &title, &series)?;
    Ok(report)
}

/// Sends (and injects failures, with --chaos) for the window.
async fn send_window(
    opts: &Options,
    cluster: Option<&Cluster>,
    gen: &mut generator::Generator,
) -> Window {
    eprintln!(
        "[load] sending at {}/s for {} s{}",
        opts.rate,
        opts.seconds,
        if opts.chaos { " with chaos" } else { "" }
    );
    let cpu_before = cpu_snapshot(cluster);
    let recorder = gen.recorder.clone();
    let started = Instant::now();
    let stop = CancellationToken::new();
    let until = started + Duration::from_secs(opts.seconds);
    let enough = CancellationToken::new();
    if !opts.chaos {
        enough.cancel();
    }
    // However slow recovery is, the run ends: three times the asked window.
    let limit = started + Duration::from_secs(opts.seconds * 3 + 60);
    let schedule = chaos::Schedule {
        rounds: opts.chaos_rounds,
        every: Duration::from_secs(opts.chaos_every),
        down: Duration::from_secs(opts.chaos_down),
        slow: Duration::from_secs(opts.slow_secs),
        faults: opts.fault_kinds(),
    };
    let (_, faults) = tokio::join!(
        async {
            gen.send_for(until, &enough, limit).await;
            stop.cancel();
        },
        async {
            match (cluster, opts.chaos) {
                (Some(c), true) => {
                    chaos::run(
                        c,
                        schedule,
                        (started, &recorder),
                        enough.clone(),
                        stop.clone(),
                    )
                    .await
                }
                _ => Vec::new(),
            }
        }
    );
    let seconds = started.elapsed().as_secs_f64().max(opts.seconds as f64);
    let during = gen.ledger.counts();
    let cpu = cpu_use(&cpu_before, &cpu_snapshot(cluster), &during);
    Window {
        seconds,
        during,
        cpu,
        faults,
    }
}

type CpuSnapshot = Vec<(String, Option<u32>, Option<f64>)>;

fn cpu_snapshot(cluster: Option<&Cluster>) -> CpuSnapshot {
    let Some(c) = cluster else { return Vec::new() };
    c.pids()
        .into_iter()
        .map(|(name, pid)| (name, pid, pid.and_then(crate::procstat::cpu_seconds)))
        .collect()
}

fn cpu_use(
    before: &CpuSnapshot,
    after: &CpuSnapshot,
    counts: &ledger::Counts,
) -> Vec<report::CpuUse> {
    let sends = counts.sends.max(1) as f64;
    let deliveries = (counts.chat_deliveries + counts.ephemeral_deliveries).max(1) as f64;
    before
        .iter()
        .zip(after)
        .filter_map(|((name, pid0, c0), (_, pid1, c1))| {
            // A restarted process has a new PID and a fresh CPU counter.
            let used = (pid0 == pid1).then_some(c1.as_ref()? - c0.as_ref()?)?;
            Some(report::CpuUse {
                name: name.clone(),
                cpu_seconds: used,
                us_per_send: used * 1e6 / sends,
                us_per_delivery: used * 1e6 / deliveries,
            })
        })
        .collect()
}

/// Records the coordinator's map every 100 ms (kept only when it changed),
/// for the checker's stale-ownership count.
async fn poll_maps(
    recorder: std::sync::Arc<crate::history::record::Recorder>,
    coordinators: String,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        for url in coordinators.split(',') {
            if let Ok(a) = generator::assignment(url).await {
                let owners = a
                    .owners
                    .iter()
                    .map(|o| o.as_ref().map(|s| s.to_string()))
                    .collect();
                recorder.map(url, a.epoch, owners);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

fn write(opts: &Options, report: &Report) -> anyhow::Result<()> {
    let path = opts.report_path();
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Polls PostgreSQL until it holds exactly the chat messages this run sent
/// (rows from its users, whose names start with `prefix`; the persister may
/// still be catching up after a restart) or `within` passes.
async fn pg_check(
    url: &str,
    prefix: &str,
    sent: &HashSet<protocol::MsgId>,
    within: Duration,
) -> anyhow::Result<PgCheck> {
    let db = store::Store::connect(url)
        .await
        .context("failed to connect to PostgreSQL for the row check")?;
    let deadline = Instant::now() + within;
    loop {
        let rows = db
            .msg_ids_from(prefix)
            .await
            .context("failed to read the messages table")?;
        let stored: HashSet<uuid::Uuid> = rows.iter().copied().collect();
        let missing = sent.iter().filter(|id| !stored.contains(&id.0)).count() as u64;
        let extra = stored
            .iter()
            .filter(|id| !sent.contains(&protocol::MsgId(**id)))
            .count() as u64;
        let check = PgCheck {
            rows: rows.len() as u64,
            distinct_chat_msg_ids_sent: sent.len() as u64,
            missing,
            extra,
            equal: rows.len() == sent.len() && missing == 0 && extra == 0,
        };
        if check.equal || Instant::now() >= deadline {
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
