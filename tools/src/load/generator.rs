//! The load generator: one `switchboard_client::Client` per device (it
//! resolves through the coordinator, resumes with its cursor and dedupes, as
//! an app would), sends at a target rate, and records everything in a
//! `Ledger`. At the end each device closes and resumes once more from its
//! cursor, and the ledger tells what never arrived.

use super::ledger::{now_us, Ledger};
use super::traffic::{Mix, Population, To};
use crate::history::record::Recorder;
use crate::history::Op;
use protocol::{ChannelName, ConversationId, MsgId, Target, UserId};
use rand::SeedableRng;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_client::{Api, Client, ClientConfig, Event, SendError, Sender};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Settings {
    pub coordinators: String,
    #[serde(skip)]
    pub jwt_secret: String,
    pub users: usize,
    pub devices: usize,
    pub group_size: usize,
    pub groups: usize,
    pub rate: f64,
    pub mix: Mix,
    /// Channels the devices subscribe to (one each).
    pub channels: usize,
    /// Sends allowed to wait for their ack at once (the rest wait to start).
    pub in_flight: usize,
    pub seed: u64,
}

pub struct Generator {
    pub population: Population,
    pub ledger: Arc<Ledger>,
    pub recorder: Arc<Recorder>,
    /// Partitions of the topic (from the coordinator's map).
    partitions: u32,
    settings: Settings,
    names: Vec<String>,
    senders: Vec<Sender>,
    finish: Vec<oneshot::Sender<()>>,
    devices: JoinSet<bool>,
    connected: Arc<AtomicUsize>,
    in_flight: Arc<Semaphore>,
    sends: JoinSet<()>,
    prefix: String,
}

impl Generator {
    /// Creates the groups and connects every device.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let population = Population::with_channels(
            settings.users,
            settings.devices,
            settings.group_size,
            settings.groups,
            settings.channels,
        );
        let prefix = format!("l{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let names: Vec<String> = (0..settings.users)
            .map(|u| format!("{prefix}u{u}"))
            .collect();
        create_groups(&settings, &population, &names, &prefix).await?;
        let partitions = assignment(&settings.coordinators).await?.partitions;
        let ledger = Arc::new(Ledger::new(population.device_count()));
        let recorder = Arc::new(Recorder::new(population.device_count()));
        let mut g = Self {
            ledger,
            recorder,
            partitions,
            in_flight: Arc::new(Semaphore::new(settings.in_flight)),
            names,
            senders: Vec::new(),
            finish: Vec::new(),
            devices: JoinSet::new(),
            connected: Arc::default(),
            sends: JoinSet::new(),
            prefix,
            population,
            settings,
        };
        for user in 0..g.settings.users {
            for device in 0..g.settings.devices {
                g.spawn_device(user, device);
            }
        }
        let n = g.population.device_count();
        let connected = g.connected.clone();
        harness::wait_until(
            "every device is connected",
            Duration::from_secs(180),
            || {
                let c = connected.clone();
                async move { c.load(Ordering::Relaxed) >= n }
            },
        )
        .await?;
        Ok(g)
    }

    /// The coordinator URL(s) the devices resolve through.
    pub fn coordinators(&self) -> &str {
        &self.settings.coordinators
    }

    /// Every user name of this run starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Channel `c` of this run.
    fn channel(&self, c: usize) -> Option<ChannelName> {
        ChannelName::new(format!("ch:{}.c{c}", self.prefix)).ok()
    }

    fn client_config(&self, user: usize, device: usize) -> ClientConfig {
        let name = &self.names[user];
        // Every channel of this run, to watch and to publish to.
        let run_channels = vec![format!("ch:{}.*", self.prefix)];
        let grants = switchboard_client::token::Grants {
            channels: run_channels.clone(),
            publish: run_channels,
        };
        let secret = &self.settings.jwt_secret;
        ClientConfig {
            coordinator_url: self.settings.coordinators.clone(),
            token: switchboard_client::token::mint_hs256_with(secret, name, 86_400, &grants)
                .unwrap_or_default(),
            user_id: name.clone(),
            device_id: format!("d{device}"),
            cursor: None,
            max_backoff: Duration::from_secs(2),
            refresh: None,
            report_duplicates: true,
            local_address: None,
        }
    }

    fn spawn_device(&mut self, user: usize, device: usize) {
        let config = self.client_config(user, device);
        let client = Client::start(config.clone());
        self.senders.push(client.sender());
        let (tx, rx) = oneshot::channel();
        self.finish.push(tx);
        let index = self.population.device_index(user, device);
        let device = Device {
            channel: self
                .population
                .channel_of(index)
                .and_then(|c| self.channel(c)),
            index,
            partition: protocol::partition_for(&self.names[user], self.partitions),
            recorder: self.recorder.clone(),
            ledger: self.ledger.clone(),
            connected: self.connected.clone(),
            ever_connected: false,
        };
        self.devices.spawn(device.run(client, config, rx));
    }

    /// Sends at the target rate until `until` has passed and `enough` is
    /// cancelled (chaos cancels it once its minimum of failures happened),
    /// but never past `limit`; returns how many sends it started.
    pub async fn send_for(
        &mut self,
        until: Instant,
        enough: &CancellationToken,
        limit: Instant,
    ) -> u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.settings.seed);
        let started = Instant::now();
        let mut n = 0u64;
        let done = |now: Instant| now >= limit || (now >= until && enough.is_cancelled());
        while !done(Instant::now()) {
            let due = (started.elapsed().as_secs_f64() * self.settings.rate) as u64;
            while n < due && !done(Instant::now()) {
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return n;
                };
                self.send_one(n, &mut rng, permit);
                n += 1;
            }
            while self.sends.try_join_next().is_some() {}
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    }

    fn send_one(
        &mut self,
        n: u64,
        rng: &mut impl rand::Rng,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let p = self.population.plan(self.settings.mix, rng);
        let to = match &p.to {
            To::User(u) => UserId::new(self.names[*u].as_str()).ok().map(Target::User),
            To::Group(g) => ConversationId::new(format!("{}g{g}", self.prefix))
                .ok()
                .map(Target::Conversation),
            To::Channel(c) => self.channel(*c).map(Target::Channel),
        };
        let (Some(to), Ok(sender_id), Ok(cmid)) = (
            to,
            UserId::new(self.names[p.sender].as_str()),
            protocol::ClientMsgId::new(format!("m{n}")),
        ) else {
            self.ledger.send_failed("invalid id");
            return;
        };
        let msg_id = MsgId::derive(&sender_id, &cmid);
        let expected = self.population.expected(&p);
        self.ledger.sending(msg_id, p.kind, &expected);
        if matches!(p.to, To::Channel(_)) {
            self.ledger.to_channel(msg_id);
        }
        let index = self.population.device_index(p.sender, p.device);
        let op = Op::Send {
            msg_id,
            kind: p.kind,
            dm: matches!(p.to, To::User(_)),
            to: expected.iter().map(|&d| d as u32).collect(),
        };
        self.recorder.record(index, op);
        let sender = self.senders[index].clone();
        let ledger = self.ledger.clone();
        let recorder = self.recorder.clone();
        let body = serde_json::json!({ "t": now_us(), "n": n });
        let kind = p.kind;
        self.sends.spawn(async move {
            let failed = match sender.send_with_id(&format!("m{n}"), to, body, kind).await {
                Ok(id) if id == msg_id => {
                    recorder.record(index, Op::Ack { msg_id });
                    ledger.acked(id);
                    None
                }
                Ok(_) => Some("unexpected msg_id".to_owned()),
                Err(SendError::Stopped) => Some("unacked when the client closed".to_owned()),
                Err(SendError::Refused { code, .. }) => Some(format!("refused: {code:?}")),
                Err(SendError::Invalid(_)) => Some("invalid".to_owned()),
            };
            if let Some(reason) = failed {
                ledger.send_failed(&reason);
                recorder.record(index, Op::SendFailed { msg_id, reason });
            }
            drop(permit);
        });
    }

    /// Waits for every started send to be acked (or to fail).
    pub async fn drain_sends(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.sends.join_next()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Waits until every expected chat delivery arrived, or until deliveries
    /// stop arriving for `quiet`.
    pub async fn wait_quiet(&self, quiet: Duration, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = self.ledger.counts().chat_deliveries;
        let mut since = Instant::now();
        while Instant::now() < deadline && !self.ledger.complete() {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.ledger.counts().chat_deliveries;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Every device closes and resumes once more from its cursor; returns
    /// how many devices finished the resume with `synced`.
    pub async fn final_resume(mut self) -> usize {
        self.ledger.seal();
        self.recorder.seal();
        for f in self.finish.drain(..) {
            let _ = f.send(());
        }
        let mut synced = 0;
        while let Some(r) = self.devices.join_next().await {
            synced += usize::from(r.unwrap_or(false));
        }
        synced
    }
}

struct Device {
    index: usize,
    /// The channel it watches (recovered from its cursor after a restart).
    channel: Option<ChannelName>,
    partition: u32,
    recorder: Arc<Recorder>,
    ledger: Arc<Ledger>,
    connected: Arc<AtomicUsize>,
    ever_connected: bool,
}

impl Device {
    async fn run(
        mut self,
        mut client: Client,
        config: ClientConfig,
        mut finish: oneshot::Receiver<()>,
    ) -> bool {
        if let Some(ch) = &self.channel {
            // Events wait in the client's queue meanwhile.
            if let Err(e) = client.subscribe(ch).await {
                self.ledger.send_failed(&format!("subscribe: {e}"));
            }
        }
        loop {
            tokio::select! {
                e = client.next_event() => match e {
                    Some(e) => { self.on_event(e); }
                    None => break,
                },
                _ = &mut finish => break,
            }
        }
        let cursor = client.cursor();
        let channel_cursor = self
            .channel
            .as_ref()
            .and_then(|ch| client.channel_cursor(ch));
        self.ledger.client_duplicates(client.duplicates());
        client.close().await;
        self.recorder.record(self.index, Op::FinalResume);
        let mut client = Client::start(ClientConfig { cursor, ..config });
        if let Some(ch) = &self.channel {
            // Resolves after what was published since the cursor was delivered.
            if let Err(e) = client.subscribe_from(ch, channel_cursor).await {
                self.ledger
                    .send_failed(&format!("subscribe at the final resume: {e}"));
            }
        }
        let synced = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(e) = client.next_event().await {
                if self.on_event(e) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        self.ledger.client_duplicates(client.duplicates());
        client.close().await;
        synced
    }

    /// Records one event; true once the replay of a resume is over.
    fn on_event(&mut self, e: Event) -> bool {
        self.record(&e);
        match e {
            Event::Message(m) => self.ledger.delivered(self.index, &m),
            Event::Duplicate(_) => {}
            Event::Connected { resumed, .. } => {
                self.ledger.connected(resumed, self.ever_connected);
                if !self.ever_connected {
                    self.ever_connected = true;
                    self.connected.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Synced(_) => return true,
            Event::Disconnected { code } => self.ledger.disconnected(code),
            Event::Unauthorized => self.ledger.disconnected(Some(4001)),
            Event::Subscribed { .. }
            | Event::Presence(_)
            | Event::Join(_)
            | Event::Leave(_)
            | Event::Connecting { .. }
            | Event::AttemptFailed(_) => {}
        }
        false
    }
}

impl Device {
    fn record(&self, e: &Event) {
        let cursor = |m: &protocol::frames::Message| {
            m.cursor
                .as_ref()
                .filter(|_| m.channel.is_none())
                .map(|c| String::from(c.clone()))
        };
        let op = match e {
            Event::Message(m) => Op::Deliver {
                msg_id: m.msg_id,
                cursor: cursor(m),
                replay: m.replay,
            },
            Event::Duplicate(m) => Op::Duplicate {
                msg_id: m.msg_id,
                cursor: cursor(m),
                replay: m.replay,
            },
            Event::Connected {
                server_id, resumed, ..
            } => Op::Connect {
                server: server_id.to_string(),
                resumed: *resumed,
                partition: self.partition,
            },
            Event::Disconnected { code } => Op::Close { code: *code },
            Event::Unauthorized => Op::Close { code: Some(4001) },
            Event::Synced(_)
            | Event::Connecting { .. }
            | Event::AttemptFailed(_)
            | Event::Subscribed { .. }
            | Event::Presence(_)
            | Event::Join(_)
            | Event::Leave(_) => return,
        };
        self.recorder.record(self.index, op);
    }
}

pub use harness::assignment;

async fn create_groups(
    settings: &Settings,
    population: &Population,
    names: &[String],
    prefix: &str,
) -> anyhow::Result<()> {
    for (g, members) in population.groups.iter().enumerate() {
        let owner = &names[members[0]];
        let token = switchboard_client::token::mint_hs256(&settings.jwt_secret, owner, 3600)?;
        let members: Vec<String> = members.iter().map(|&u| names[u].clone()).collect();
        Api::new(&settings.coordinators, &token)
            .create_conversation(owner, Some(&format!("{prefix}g{g}")), &members)
            .await
            .map_err(|e| anyhow::anyhow!("failed to create group {g}: {e}"))?;
    }
    Ok(())
}
