use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// A close code and the reason the server gave with it (a fixed string:
/// the set is small), so the path that closed a session shows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    pub code: String,
    pub reason: String,
}

/// Where a chat message spends its time on the way through a server
/// (`switchboard_server_stage_seconds{stage}`; docs/operations.md, "Metrics").
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Stage {
    /// A send frame read → its records handed to the producer.
    Handed,
    /// Handed to the producer → the broker's ack.
    Acked,
    /// The broker's ack → the `ack` frame written to the socket.
    AckWritten,
    /// Produced (the record's timestamp) → consumed here: the broker's share.
    Broker,
    /// A record consumed → its frame queued for every local device.
    Queued,
    /// A frame queued for a device → written to its socket (flushed).
    Written,
}

impl Stage {
    /// Every stage in the order a message passes them.
    pub const ALL: [Stage; 6] = [
        Self::Handed,
        Self::Acked,
        Self::AckWritten,
        Self::Broker,
        Self::Queued,
        Self::Written,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handed => "handed",
            Self::Acked => "acked",
            Self::AckWritten => "ack_written",
            Self::Broker => "broker",
            Self::Queued => "queued",
            Self::Written => "written",
        }
    }
}

/// How far a session got after its `hello`, timed from the hello
/// (`switchboard_server_session_start_seconds{step}`): where a reconnect
/// herd waits shows here.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StartStep {
    /// Its partition open here (the routing check and any wait for it).
    Open,
    /// A resume's seam read: the log's end, and the live consumer past it.
    CaughtUp,
    /// The `welcome` written.
    Welcomed,
    /// A resume's `synced` written: everything missed replayed.
    Synced,
}

impl StartStep {
    pub const ALL: [StartStep; 4] = [Self::Open, Self::CaughtUp, Self::Welcomed, Self::Synced];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::CaughtUp => "caught_up",
            Self::Welcomed => "welcomed",
            Self::Synced => "synced",
        }
    }
}

/// Where a resume's replay read is: waiting for a store permit
/// (`store_wait`), reading PostgreSQL (`store_read`), or reading the log
/// (`log_read`, a shared range read included).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabel {
    pub read: &'static str,
}

/// One read in progress, counted until dropped.
pub struct InProgress(Gauge);

impl InProgress {
    /// Counts one more of `family` at `read` until the guard is dropped.
    pub fn of(family: &Family<ReadLabel, Gauge>, read: &'static str) -> Self {
        let gauge = family.get_or_create(&ReadLabel { read }).clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: &'static str,
}

fn start_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

fn stage_histogram() -> Histogram {
    // 25 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 18))
}

/// Log range reads (`log_reader`): in progress by step (`slot_wait`,
/// `reading`), and each finished read's time and span of offsets.
#[derive(Clone)]
pub struct RangeReads {
    pub steps: Family<ReadLabel, Gauge>,
    pub seconds: Histogram,
    pub offsets: Histogram,
}

impl Default for RangeReads {
    fn default() -> Self {
        Self {
            steps: Family::default(),
            seconds: start_histogram(),
            // 1 to ~1M offsets, quadrupling.
            offsets: Histogram::new(exponential_buckets(1.0, 4.0, 11)),
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub connections: Gauge,
    pub connection_limit: Gauge,
    pub sends: Counter,
    pub send_errors: Family<CodeLabel, Counter>,
    pub deliveries: Counter,
    pub replayed: Counter,
    pub resumes: Counter,
    pub replay_retries: Counter,
    pub log_only_plans: Counter,
    pub replay_reads: Family<ReadLabel, Gauge>,
    pub range_reads: RangeReads,
    pub overflows: Counter,
    pub closes: Family<CloseLabel, Counter>,
    pub decode_failures: Counter,
    pub too_new_records: Counter,
    pub position: Family<PartitionLabel, Gauge>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub owned_partitions: Gauge,
    pub etcd_reachable: Gauge,
    pub broker_reachable: Gauge,
    pub registered: Gauge,
    pub connections_refused: Counter,
    pub send_ack_seconds: Histogram,
    pub producer_restarts: Counter,
    pub producer_ready: Gauge,
    pub produce_in_flight: Gauge,
    pub channel_deliveries: Counter,
    pub channels: Gauge,
    pub channel_subscriptions: Gauge,
    pub channel_recoveries: Family<RecoveredLabel, Counter>,
    pub connection_events: Counter,
    pub connection_events_lost: Counter,
    pub sessions_reaped: Counter,
    pub stages: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Records the consumer handed over at once (a run): each is timed in
    /// `queued` until the whole run's fan-out is done.
    pub run_records: Histogram,
    pub session_start: Family<StepLabel, Histogram, fn() -> Histogram>,
    pub anycast_redelivered: Counter,
    pub anycast_handled: Counter,
    pub anycast_pending: Gauge,
    pub anycast_given_up: Family<ReasonLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl ReasonLabel {
    /// Why anycast gives a publication up: pushed out by newer ones, or
    /// nobody handled it in time.
    pub const GIVEN_UP: [&'static str; 2] = ["overflowed", "expired"];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecoveredLabel {
    pub recovered: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Gauge::default(),
            connection_limit: Gauge::default(),
            sends: Counter::default(),
            send_errors: Family::default(),
            deliveries: Counter::default(),
            replayed: Counter::default(),
            resumes: Counter::default(),
            replay_retries: Counter::default(),
            log_only_plans: Counter::default(),
            replay_reads: Family::default(),
            range_reads: RangeReads::default(),
            overflows: Counter::default(),
            closes: Family::default(),
            decode_failures: Counter::default(),
            too_new_records: Counter::default(),
            position: Family::default(),
            lag: Family::default(),
            owned_partitions: Gauge::default(),
            etcd_reachable: Gauge::default(),
            broker_reachable: Gauge::default(),
            registered: Gauge::default(),
            connections_refused: Counter::default(),
            send_ack_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            producer_restarts: Counter::default(),
            producer_ready: Gauge::default(),
            produce_in_flight: Gauge::default(),
            channel_deliveries: Counter::default(),
            channels: Gauge::default(),
            channel_subscriptions: Gauge::default(),
            channel_recoveries: Family::default(),
            connection_events: Counter::default(),
            connection_events_lost: Counter::default(),
            sessions_reaped: Counter::default(),
            stages: Family::new_with_constructor(stage_histogram),
            // 1 to 512 (the consumer's largest run), doubling.
            run_records: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            session_start: Family::new_with_constructor(start_histogram),
            anycast_redelivered: Counter::default(),
            anycast_handled: Counter::default(),
            anycast_pending: Gauge::default(),
            anycast_given_up: Family::default(),
        }
    }
}

impl Metrics {
    /// Records `seconds` spent in `stage`.
    pub fn stage(&self, stage: Stage, seconds: f64) {
        self.stage_histogram(stage).observe(seconds);
    }

    /// `stage`'s histogram, for a loop that observes it many times.
    pub fn stage_histogram(&self, stage: Stage) -> Histogram {
        let label = StageLabel {
            stage: stage.as_str(),
        };
        self.stages.get_or_create(&label).clone()
    }

    /// A replay read now at `read`, counted until the guard is dropped.
    pub fn replay_read(&self, read: &'static str) -> InProgress {
        InProgress::of(&self.replay_reads, read)
    }

    /// A session reached `step`, `since` its hello.
    pub fn session_step(&self, step: StartStep, since: std::time::Instant) {
        let label = StepLabel {
            step: step.as_str(),
        };
        let seconds = since.elapsed().as_secs_f64();
        self.session_start.get_or_create(&label).observe(seconds);
    }

    /// Anycast publications given up for `reason` (one of
    /// [`ReasonLabel::GIVEN_UP`]).
    pub fn anycast_given_up(&self, reason: &'static str) -> Counter {
        self.anycast_given_up
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }

    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("switchboard_server");
        for reason in ReasonLabel::GIVEN_UP {
            self.anycast_given_up(reason);
        }
        r.register(
            "anycast_redelivered",
            "Anycast publications delivered to another subscriber (the first did not answer handled in time, or left)",
            self.anycast_redelivered.clone(),
        );
        r.register(
            "anycast_handled",
            "handled answers from this server's subscribers",
            self.anycast_handled.clone(),
        );
        r.register(
            "anycast_pending",
            "Chat anycast publications this server follows until a handled mark",
            self.anycast_pending.clone(),
        );
        r.register(
            "anycast_given_up",
            "Chat anycast publications given up, by reason: overflowed (past SWITCHBOARD_ANYCAST_MAX_PENDING of a channel), expired (SWITCHBOARD_ANYCAST_MAX_WAIT_SECS)",
            self.anycast_given_up.clone(),
        );
        r.register(
            "connections",
            "Open WebSocket sessions",
            self.connections.clone(),
        );
        r.register(
            "connection_limit",
            "WebSocket sessions this server accepts at most (the configured limit, or fewer if the open-file limit is lower)",
            self.connection_limit.clone(),
        );
        r.register(
            "sends",
            "Messages accepted (acked after Kafka)",
            self.sends.clone(),
        );
        r.register(
            "send_errors",
            "Sends refused, by error code",
            self.send_errors.clone(),
        );
        r.register(
            "channel_deliveries",
            "Channel publications queued to subscribed devices",
            self.channel_deliveries.clone(),
        );
        r.register(
            "channels",
            "Channels with at least one subscriber on this server",
            self.channels.clone(),
        );
        r.register(
            "channel_subscriptions",
            "Channel subscriptions of this server's connections",
            self.channel_subscriptions.clone(),
        );
        r.register(
            "channel_resubscribes",
            "Subscribes with a cursor, by whether everything missed was recovered",
            self.channel_recoveries.clone(),
        );
        r.register(
            "connection_events",
            "Connection events written to <topic>.events",
            self.connection_events.clone(),
        );
        r.register(
            "connection_events_lost",
            "Connection events given up after retrying for 30 s",
            self.connection_events_lost.clone(),
        );
        r.register(
            "sessions_reaped",
            "Sessions of a lost registration reported disconnected (server_lost) by this server",
            self.sessions_reaped.clone(),
        );
        r.register(
            "deliveries",
            "Frames queued to devices live",
            self.deliveries.clone(),
        );
        r.register(
            "replayed",
            "Frames sent during resume replays",
            self.replayed.clone(),
        );
        r.register(
            "resumes",
            "Sessions that resumed from a cursor",
            self.resumes.clone(),
        );
        r.register(
            "replay_read_retries",
            "Replay reads tried again because PostgreSQL's pool or the broker was busy",
            self.replay_retries.clone(),
        );
        r.register(
            "queue_overflows",
            "Devices closed with 4004 because their queue overflowed",
            self.overflows.clone(),
        );
        r.register(
            "closes",
            "Connections closed by the server, by close code and reason",
            self.closes.clone(),
        );
        r.register(
            "decode_failures",
            "Consumed records that could not be decoded",
            self.decode_failures.clone(),
        );
        r.register(
            "too_new_records",
            "Records of a newer version than this server reads: it stopped rather than skip them (upgrade it)",
            self.too_new_records.clone(),
        );
        r.register(
            "partition_position",
            "Last offset consumed per owned partition",
            self.position.clone(),
        );
        r.register(
            "consumer_lag",
            "Records between the log end and live delivery, per partition",
            self.lag.clone(),
        );
        r.register(
            "owned_partitions",
            "Partitions this server serves",
            self.owned_partitions.clone(),
        );
        r.register(
            "connections_refused",
            "WebSocket upgrades refused at SWITCHBOARD_MAX_CONNECTIONS",
            self.connections_refused.clone(),
        );
        r.register(
            "etcd_reachable",
            "1 while etcd confirms this server's lease, 0 while it does not answer",
            self.etcd_reachable.clone(),
        );
        r.register(
            "broker_reachable",
            "1 while the broker answers this server's metadata requests; 0 after a lease TTL without an answer (its partitions are then moved)",
            self.broker_reachable.clone(),
        );
        r.register(
            "registered",
            "1 while this server holds a live registration lease; 0 while it owns nothing because it is not registered",
            self.registered.clone(),
        );
        r.register(
            "stage_seconds",
            "Time a chat message spends in each stage through this server: handed, acked, ack_written (send side), broker (produce to consume), queued (consume to every device's queue), written (a device's queue to its socket)",
            self.stages.clone(),
        );
        r.register(
            "resume_plans_log_only",
            "Resumes planned from the log alone because the persister's position could not be read from PostgreSQL: each reads its whole gap from the log",
            self.log_only_plans.clone(),
        );
        r.register(
            "replay_reads_in_progress",
            "Resume replay reads now waiting for a store permit (store_wait), reading PostgreSQL (store_read) or reading the log (log_read): a count that stays up while PostgreSQL and the broker are idle is a stalled replay",
            self.replay_reads.clone(),
        );
        r.register(
            "range_reads_in_progress",
            "Log range reads (shared resume reads and channel recoveries) waiting for one of the server's reader slots (slot_wait) or reading the broker (reading)",
            self.range_reads.steps.clone(),
        );
        r.register(
            "range_read_seconds",
            "Time each log range read took, from its reader slot to its last record",
            self.range_reads.seconds.clone(),
        );
        r.register(
            "range_read_offsets",
            "Offsets each log range read spanned (a shared resume read spans the union of its devices' ranges)",
            self.range_reads.offsets.clone(),
        );
        r.register(
            "consumed_run_records",
            "Chat records the consumer handed to delivery at once (a run, at most 512): each waits in the queued stage for the whole run's fan-out, so a broker that delivers in bursts makes runs large",
            self.run_records.clone(),
        );
        r.register(
            "session_start_seconds",
            "Time from a session's hello to each step of its start: open (its partition open here), caught_up (a resume's seam read), welcomed, synced (a resume's replay written)",
            self.session_start.clone(),
        );
        r.register(
            "send_ack_seconds",
            "Time from a send frame to its ack",
            self.send_ack_seconds.clone(),
        );
        r.register(
            "producer_restarts",
            "Kafka producers replaced after a fatal error",
            self.producer_restarts.clone(),
        );
        r.register(
            "producer_ready",
            "1 while the Kafka producer works, 0 while it is being replaced",
            self.producer_ready.clone(),
        );
        r.register(
            "produce_in_flight",
            "Kafka records handed to the producer and not yet acknowledged",
            self.produce_in_flight.clone(),
        );
    }

    pub fn set_position(&self, partition: u32, offset: i64) {
        self.position
            .get_or_create(&PartitionLabel { partition })
            .set(offset);
    }

    pub fn close(&self, code: u16, reason: &str) {
        self.closes
            .get_or_create(&CloseLabel {
                code: code.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn send_error(&self, code: &str) {
        self.send_errors
            .get_or_create(&CodeLabel {
                code: code.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_read_is_counted_until_its_guard_drops() {
        let m = Metrics::default();
        let now = |read| m.replay_reads.get_or_create(&ReadLabel { read }).get();
        let (a, b) = (m.replay_read("store_wait"), m.replay_read("store_wait"));
        assert_eq!((now("store_wait"), now("log_read")), (2, 0));
        drop(a);
        assert_eq!(now("store_wait"), 1);
        drop(b);
        assert_eq!(now("store_wait"), 0);
    }
}
