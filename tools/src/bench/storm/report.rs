//! What `storm` writes: one report per failure, and the run's.

use super::probe;
use std::collections::BTreeMap;

#[derive(serde::Serialize)]
pub struct OutageReport {
    pub what: String,
    pub devices_disconnected: usize,
    pub devices_back: usize,
    pub devices_resumed: usize,
    pub back_p50_ms: f64,
    pub back_p99_ms: f64,
    pub back_max_ms: f64,
    pub close_codes: BTreeMap<String, u64>,
    /// Sessions the answering servers closed over the outage, by
    /// `"<code> <reason>"` (`switchboard_server_closes_total`).
    pub server_closes: BTreeMap<String, u64>,
    /// Packets the host dropped for want of a connection-tracking entry
    /// over the outage (`None`: the host tracks no connections).
    pub conntrack_drops: Option<u64>,
    /// Connections the host's listeners dropped over the outage, their
    /// accept queues full (`TcpExt: ListenDrops`; `crate::netstat`).
    pub listen_drops: Option<u64>,
    /// From the failure to each device's noticing it (its disconnect):
    /// p50, p99 (ms).
    pub noticed_ms: [f64; 2],
    /// From the failure to each device's having all it missed (its
    /// `synced`): p50, p99 (ms); `devices_synced` of them got there.
    #[serde(default)]
    pub synced_ms: [f64; 2],
    #[serde(default)]
    pub devices_synced: usize,
    /// From the failure to each device's first route answer: p50, p99 (ms).
    pub first_route_ms: [f64; 2],
    /// The attempt that got each device back, from its route answer to
    /// the welcome: p50, p99 (ms).
    pub last_attempt_ms: [f64; 2],
    /// Devices back by the sessions they opened to get there.
    pub attempts: BTreeMap<u32, u64>,
    /// Attempts that ended without a welcome, by where (`lookup`,
    /// `connect`, `welcome`, `close <code>`).
    pub failures: BTreeMap<String, u64>,
    pub route_requests: u64,
    pub route_peak_per_s: f64,
    pub seconds_until_all_back: f64,
    /// The survivors' session start steps over the outage: p50, p99 (ms).
    pub start_steps_ms: BTreeMap<String, [f64; 2]>,
    /// Each second: devices connected, cores by process.
    pub timeline: Vec<probe::Sample>,
}

#[derive(serde::Serialize)]
pub struct StormReport {
    pub devices: usize,
    pub persister: bool,
    pub servers: usize,
    pub holders: usize,
    pub connect_seconds: f64,
    /// The host's connection-tracking table size during the run (raised
    /// to 32 entries per device when smaller; `crate::conntrack`).
    pub conntrack_max: Option<u64>,
    /// Packets it dropped over the whole run for want of an entry.
    pub conntrack_drops: Option<u64>,
    pub dm_rate_per_s: u64,
    pub lease_ttl_secs: u64,
    pub ping_secs: u64,
    /// Cores by process over 10 s with every device connected and the DMs
    /// flowing, before the first failure.
    pub steady: super::probe::Sample,
    /// `kill -9` of a server process: its port refuses at once.
    pub kill: Option<OutageReport>,
    /// SIGSTOP of a server until its devices are elsewhere: no reset, no
    /// refusal — what clients see when a host vanishes or is cut off.
    pub freeze: Option<OutageReport>,
    pub rolling_restart: Vec<OutageReport>,
    pub rolling_restart_seconds: Option<f64>,
    /// A fourth server joins the three: the devices of the partitions it
    /// takes move to it.
    pub scale_up: Option<OutageReport>,
    pub sent: u64,
    pub acked: u64,
    pub send_errors: u64,
    /// Sends neither acknowledged nor refused when the bench stopped waiting.
    pub unanswered: u64,
    pub delivered: u64,
    /// DMs a device was handed more than once (must be 0).
    pub duplicates: u64,
    pub lost: u64,
    /// The first lost DMs (up to 50), each with where PostgreSQL has it
    /// and where its recipient's device stood at the end.
    pub lost_sample: Vec<super::messages::LostMessage>,
    /// The sample by what its loss points at (`messages::why_lost`).
    pub lost_why: BTreeMap<String, u64>,
}
