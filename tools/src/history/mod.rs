//! A run's recorded history, for checking after the run rather than
//! trusting counters: every device writes each operation it did (send, ack,
//! every frame delivered with its cursor, connect, close) with the time to
//! `d<device>.jsonl`; the run adds `run.json` (fault windows, the
//! coordinator's map over time). `check` reads them back and reports loss,
//! duplicates, order, cursor regressions, stale ownership and
//! unavailability per fault window.

pub mod check;
pub mod record;

use protocol::{Kind, MsgId};
use serde::{Deserialize, Serialize};

/// One operation of one device, `t_ms` after the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub t_ms: u64,
    pub device: u32,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A send leaves the device; `to` are the devices that must get it.
    Send {
        msg_id: MsgId,
        kind: Kind,
        dm: bool,
        to: Vec<u32>,
    },
    Ack {
        msg_id: MsgId,
    },
    SendFailed {
        msg_id: MsgId,
        reason: String,
    },
    /// A session is up on `server`; `partition` is the device's user's.
    Connect {
        server: String,
        resumed: bool,
        partition: u32,
    },
    /// A frame the app was handed (after the client's dedupe).
    Deliver {
        msg_id: MsgId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        replay: bool,
    },
    /// A frame the client dropped: its msg_id was already handed over.
    Duplicate {
        msg_id: MsgId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        replay: bool,
    },
    Close {
        #[serde(default)]
        code: Option<u16>,
    },
    /// The device starts its final resume from its cursor (a new client).
    FinalResume,
}

/// A fault as it happened: injected at `at_ms`, healed at `healed_ms`,
/// the cluster settled again at `end_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub fault: String,
    pub target: String,
    pub at_ms: u64,
    pub healed_ms: u64,
    pub end_ms: u64,
}

/// The coordinator's map at `t_ms`: the owner of each partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapAt {
    pub t_ms: u64,
    #[serde(default)]
    pub epoch: u64,
    pub owners: Vec<Option<String>>,
}

/// What the run adds to the devices' files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub devices: u32,
    /// When the final resume began: sends acked later are not checked.
    pub sealed_ms: Option<u64>,
    pub faults: Vec<Window>,
    /// The newest map any coordinator replica served, whenever it changed.
    pub maps: Vec<MapAt>,
    /// Two replicas served different maps under one epoch (must not happen:
    /// an epoch names one map).
    #[serde(default)]
    pub map_conflicts: Vec<String>,
}

/// Reads a history directory written by `record::Recorder::write`.
pub fn read(dir: &std::path::Path) -> anyhow::Result<(RunInfo, Vec<Entry>)> {
    use anyhow::Context;
    let run: RunInfo = serde_json::from_slice(
        &std::fs::read(dir.join("run.json"))
            .with_context(|| format!("failed to read {}/run.json", dir.display()))?,
    )
    .context("run.json is not a run description")?;
    let mut entries = Vec::new();
    for d in 0..run.devices {
        let path = dir.join(format!("d{d}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let e: Entry = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a history entry", path.display(), n + 1))?;
            entries.push(e);
        }
    }
    Ok((run, entries))
}
