//! The load run's report: a table for people, JSON for machines.

use super::chaos::Happened;
use super::ledger::{Counts, Tally};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PgCheck {
    pub rows: u64,
    pub distinct_chat_msg_ids_sent: u64,
    pub missing: u64,
    pub extra: u64,
    pub equal: bool,
}

/// CPU a process used during the send window (not reported for a process
/// that was restarted inside it).
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub name: String,
    pub cpu_seconds: f64,
    pub us_per_send: f64,
    pub us_per_delivery: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub settings: serde_json::Value,
    pub send_seconds: f64,
    pub sends_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency_live: Percentiles,
    pub latency_all: Percentiles,
    pub counts: Counts,
    pub tally: Tally,
    pub devices_resumed_at_end: usize,
    pub devices: usize,
    pub postgres: Option<PgCheck>,
    pub faults: Vec<Happened>,
    pub fault_counts: BTreeMap<String, usize>,
    pub cpu: Vec<CpuUse>,
    /// The recorded history's check (`history/` beside report.json).
    pub history: crate::history::check::Findings,
    pub failures: Vec<String>,
}

impl Report {
    /// Fills in `failures`: every way this run fell short of zero loss.
    pub fn judge(&mut self) {
        let mut f = Vec::new();
        let t = &self.tally;
        if t.lost > 0 {
            f.push(format!(
                "{} chat deliveries lost ({:?})",
                t.lost, t.lost_examples
            ));
        }
        // Duplicates are reported, not failed: a retried send whose first
        // ack was lost is in the log twice by design (same msg_id), and a
        // fresh client (the final resume) has no memory of what it saw.
        if t.chat_unacked > 0 || t.chat_acked_late > 0 || self.counts.send_errors > 0 {
            f.push(format!(
                "{} chat sends never acked, {} acked only after the final resume began, send errors {:?}",
                t.chat_unacked, t.chat_acked_late, self.counts.send_error_kinds
            ));
        }
        if self.devices_resumed_at_end < self.devices {
            f.push(format!(
                "only {} of {} devices finished the final resume",
                self.devices_resumed_at_end, self.devices
            ));
        }
        match &self.postgres {
            Some(pg) if !pg.equal => f.push(format!(
                "PostgreSQL has {} rows for {} distinct chat msg_ids ({} missing, {} extra)",
                pg.rows, pg.distinct_chat_msg_ids_sent, pg.missing, pg.extra
            )),
            _ => {}
        }
        if !self.history.passed() {
            let h = &self.history.total;
            f.push(format!(
                "the history check found {} lost, {} app duplicates, {} DM order violations, {} cursor regressions (e.g. {:?})",
                h.lost, h.app_duplicates, h.dm_order_violations, h.cursor_regressions,
                self.history.examples.iter().take(5).collect::<Vec<_>>()
            ));
        }
        for h in self.faults.iter().filter(|h| h.error.is_some()) {
            f.push(format!(
                "{} ({}) failed: {:?}",
                h.fault.label(),
                h.target,
                h.error
            ));
        }
        self.failures = f;
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let t = &self.tally;
        let c = &self.counts;
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<38} {v}");
        };
        let _ = writeln!(s, "Switchboard load run on {}", self.machine);
        row(
            &mut s,
            "devices (users x devices)",
            self.devices.to_string(),
        );
        row(&mut s, "send window", format!("{:.1} s", self.send_seconds));
        row(&mut s, "sends/s", format!("{:.1}", self.sends_per_s));
        row(
            &mut s,
            "deliveries/s",
            format!("{:.1}", self.deliveries_per_s),
        );
        for (name, p) in [
            ("latency live", &self.latency_live),
            ("latency incl. replay", &self.latency_all),
        ] {
            row(
                &mut s,
                &format!("{name} (ms) p50/p90/p99/p99.9/max"),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} / {:.1}  (n={})",
                    p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
                ),
            );
        }
        row(
            &mut s,
            "chat sent / acked / acked late / unacked",
            format!(
                "{} / {} / {} / {}",
                t.chat_sent, t.chat_acked, t.chat_acked_late, t.chat_unacked
            ),
        );
        row(
            &mut s,
            "chat deliveries expected / delivered",
            format!("{} / {}", t.expected_chat_deliveries, t.delivered_chat),
        );
        row(&mut s, "chat deliveries LOST", t.lost.to_string());
        row(
            &mut s,
            "duplicates reaching the app",
            c.duplicates.to_string(),
        );
        row(
            &mut s,
            "duplicates dropped by the client",
            c.client_dropped_duplicates.to_string(),
        );
        row(
            &mut s,
            "ephemeral sent / delivered / expected",
            format!(
                "{} / {} / {}",
                t.ephemeral_sent, t.delivered_ephemeral, t.expected_ephemeral_deliveries
            ),
        );
        row(&mut s, "replayed deliveries", c.replayed.to_string());
        row(
            &mut s,
            "connects / resumes / refused resumes",
            format!("{} / {} / {}", c.connects, c.resumes, c.resume_refused),
        );
        row(
            &mut s,
            "disconnects by close code",
            format!("{:?}", c.disconnect_codes),
        );
        row(
            &mut s,
            "send errors",
            format!("{} {:?}", c.send_errors, c.send_error_kinds),
        );
        row(
            &mut s,
            "devices resumed at the end",
            self.devices_resumed_at_end.to_string(),
        );
        if let Some(pg) = &self.postgres {
            row(
                &mut s,
                "PostgreSQL rows / distinct chat msg_ids",
                format!(
                    "{} / {} (equal: {})",
                    pg.rows, pg.distinct_chat_msg_ids_sent, pg.equal
                ),
            );
        }
        for c in &self.cpu {
            row(
                &mut s,
                &format!("CPU {}", c.name),
                format!(
                    "{:.1} s = {:.0} µs/send, {:.1} µs/delivery",
                    c.cpu_seconds, c.us_per_send, c.us_per_delivery
                ),
            );
        }
        if !self.fault_counts.is_empty() {
            row(
                &mut s,
                "failures injected",
                format!("{:?}", self.fault_counts),
            );
        }
        let verdict = if self.passed() {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", self.failures.join("; "))
        };
        row(&mut s, "verdict", verdict);
        s
    }
}

/// CPU model, cores and memory of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let gib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {gib:.0} GiB")
}
