//! Collects the history while the run goes on and writes it at the end.
//! Entries stay in memory (a run has a few hundred thousand), one list per
//! device, so a device's file is in the order its operations happened.

use super::{Entry, MapAt, Op, RunInfo, Window};
use anyhow::Context;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

pub struct Recorder {
    started: Instant,
    devices: Vec<Mutex<Vec<Entry>>>,
    run: Mutex<RunInfo>,
}

impl Recorder {
    pub fn new(devices: usize) -> Self {
        Self {
            started: Instant::now(),
            devices: (0..devices).map(|_| Mutex::default()).collect(),
            run: Mutex::new(RunInfo {
                devices: devices as u32,
                ..RunInfo::default()
            }),
        }
    }

    /// Milliseconds since the run started (the history's clock).
    pub fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    pub fn record(&self, device: usize, op: Op) {
        let t_ms = self.now_ms();
        if let Some(d) = self.devices.get(device) {
            let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
            d.push(Entry {
                t_ms,
                device: device as u32,
                op,
            });
        }
    }

    fn with_run(&self, f: impl FnOnce(&mut RunInfo)) {
        f(&mut self.run.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn seal(&self) {
        let t = self.now_ms();
        self.with_run(|r| r.sealed_ms = Some(t));
    }

    pub fn fault(&self, w: Window) {
        self.with_run(|r| r.faults.push(w));
    }

    /// A map a coordinator replica served: kept when it is newer than the
    /// last one kept; a different map under a kept epoch is a conflict.
    pub fn map(&self, from: &str, epoch: u64, owners: Vec<Option<String>>) {
        let t_ms = self.now_ms();
        self.with_run(|r| {
            let same_epoch = r.maps.iter().rev().find(|m| m.epoch == epoch);
            if same_epoch.is_some_and(|m| m.owners != owners) {
                r.map_conflicts.push(format!(
                    "{from} served another map under epoch {epoch} at {t_ms} ms"
                ));
            }
            if r.maps.last().is_none_or(|m| epoch > m.epoch) {
                r.maps.push(MapAt {
                    t_ms,
                    epoch,
                    owners,
                });
            }
        });
    }

    pub fn run_info(&self) -> RunInfo {
        self.run.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes `run.json` and one `d<n>.jsonl` per device into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        std::fs::write(
            dir.join("run.json"),
            serde_json::to_vec_pretty(&self.run_info())?,
        )?;
        for (n, d) in self.devices.iter().enumerate() {
            let d = d.lock().unwrap_or_else(|p| p.into_inner());
            let mut text = String::new();
            for e in d.iter() {
                text.push_str(&serde_json::to_string(e)?);
                text.push('\n');
            }
            let path = dir.join(format!("d{n}.jsonl"));
            std::fs::write(&path, text)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        Ok(())
    }
}
