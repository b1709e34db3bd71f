//! The servers' stage histograms (`switchboard_server_stage_seconds`) over a
//! benchmark's window: where a message's time went, ours against the
//! broker's (docs/benchmarks.md, "Where the time goes").

use serde::Serialize;
use std::collections::BTreeMap;

/// Cumulative bucket counts by (stage, upper bound in seconds).
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<(String, u64), f64>);

/// Bounds are kept in nanoseconds so they order as numbers.
fn nanos(le: &str) -> u64 {
    match le {
        "+Inf" => u64::MAX,
        s => s
            .parse::<f64>()
            .map_or(u64::MAX, |v| (v * 1e9).round() as u64),
    }
}

impl Snapshot {
    /// The stage buckets of one or more Prometheus text pages, summed, and
    /// the consumed runs' sizes as the series [`RUNS`].
    pub fn parse<'a>(pages: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        let mut s = Self::parse_family(pages.clone(), "switchboard_server_stage_seconds", "stage");
        let runs = Self::parse_family(pages, "switchboard_server_consumed_run_records", "");
        for ((_, le), n) in runs.0 {
            s.0.insert((RUNS.to_owned(), le), n);
        }
        s
    }

    /// The buckets of histogram family `name`, keyed by its `label` (`""`:
    /// a histogram without labels, keyed by `""`).
    pub fn parse_family<'a>(
        pages: impl IntoIterator<Item = &'a str>,
        name: &str,
        label: &str,
    ) -> Self {
        let (prefix, key) = (format!("{name}_bucket{{"), format!("{label}="));
        let unlabelled = label.is_empty();
        let mut buckets = BTreeMap::new();
        for line in pages.into_iter().flat_map(str::lines) {
            let Some(rest) = line.strip_prefix(prefix.as_str()) else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_owned())
            };
            let series = if unlabelled {
                Some(String::new())
            } else {
                label(&key)
            };
            if let (Some(stage), Some(le), Ok(n)) =
                (series, label("le="), value.trim().parse::<f64>())
            {
                *buckets.entry((stage, nanos(&le))).or_insert(0.0) += n;
            }
        }
        Self(buckets)
    }

    /// The `q` quantile of `stage` over what happened between `earlier` and
    /// `self`, in ms (the upper bound of the bucket it falls in), if any.
    pub fn quantile_ms(&self, earlier: &Snapshot, stage: &str, q: f64) -> Option<f64> {
        self.quantile(earlier, stage, q).map(|v| v * 1e3)
    }

    /// The same in the histogram's own unit (records, seconds).
    pub fn quantile(&self, earlier: &Snapshot, stage: &str, q: f64) -> Option<f64> {
        let counts: Vec<(u64, f64)> = self
            .0
            .range((stage.to_owned(), 0)..=(stage.to_owned(), u64::MAX))
            .map(|((_, le), n)| {
                (
                    *le,
                    n - earlier.0.get(&(stage.to_owned(), *le)).unwrap_or(&0.0),
                )
            })
            .collect();
        let total = counts.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let (le, _) = counts.iter().find(|(_, n)| *n >= q * total)?;
        Some(if *le == u64::MAX {
            f64::INFINITY
        } else {
            *le as f64 / 1e9
        })
    }
}

/// The series of [`Snapshot::parse`] holding the records per consumed run.
const RUNS: &str = "consumed_run_records";

/// Stages that are Switchboard's own work, and the broker's share.
const OWN: [&str; 4] = ["handed", "ack_written", "queued", "written"];

#[derive(Debug, Clone, Serialize, Default)]
pub struct Shares {
    /// Sum of our stages' p50 (and p99: an upper bound of the p99 of the sum).
    pub own_p50_ms: f64,
    pub own_p99_ms: f64,
    /// Produce timestamp → consumed: the broker, with the producer's linger.
    pub broker_p50_ms: f64,
    pub broker_p99_ms: f64,
    /// Every stage's p50 and p99, ms (`acked`: handed → the broker's ack).
    pub stages_ms: BTreeMap<String, [f64; 2]>,
    /// Records per consumed run, p50 and p99 (bucket bounds: powers of
    /// two): each record of a run is in `queued` until the run is out.
    pub run_records: [f64; 2],
}

pub fn shares(before: &Snapshot, after: &Snapshot) -> Shares {
    let mut s = Shares::default();
    for stage in messaging_server::Stage::ALL.map(messaging_server::Stage::as_str) {
        let q = |q| after.quantile_ms(before, stage, q).unwrap_or(f64::NAN);
        s.stages_ms.insert(stage.to_owned(), [q(0.5), q(0.99)]);
    }
    let get = |stage: &str, i: usize| s.stages_ms.get(stage).map_or(f64::NAN, |v| v[i]);
    s.own_p50_ms = OWN.iter().map(|st| get(st, 0)).sum();
    s.own_p99_ms = OWN.iter().map(|st| get(st, 1)).sum();
    s.broker_p50_ms = get("broker", 0);
    s.broker_p99_ms = get("broker", 1);
    let runs = |q| after.quantile(before, RUNS, q).unwrap_or(f64::NAN);
    s.run_records = [runs(0.5), runs(0.99)];
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(counts: &[(&str, &str, u64)]) -> String {
        counts
            .iter()
            .map(|(stage, le, n)| format!("switchboard_server_stage_seconds_bucket{{le=\"{le}\",stage=\"{stage}\"}} {n}\n"))
            .collect()
    }

    #[test]
    fn quantiles_come_from_the_window_between_two_snapshots() {
        let before = Snapshot::parse([page(&[
            ("queued", "0.001", 10),
            ("queued", "0.002", 10),
            ("queued", "+Inf", 10),
        ])
        .as_str()]);
        // In the window: 90 under 1 ms, 9 more under 2 ms, 1 above.
        let after = Snapshot::parse([
            page(&[
                ("queued", "0.001", 100),
                ("queued", "0.002", 109),
                ("queued", "+Inf", 110),
            ])
            .as_str(),
            "switchboard_server_stage_seconds_count{stage=\"queued\"} 110\n",
        ]);
        assert_eq!(after.quantile_ms(&before, "queued", 0.5), Some(1.0));
        assert_eq!(after.quantile_ms(&before, "queued", 0.95), Some(2.0));
        assert_eq!(
            after.quantile_ms(&before, "queued", 0.999),
            Some(f64::INFINITY)
        );
        assert_eq!(after.quantile_ms(&before, "handed", 0.5), None);
        // Two servers' pages add up.
        let two = Snapshot::parse([
            page(&[("broker", "0.004", 3)]).as_str(),
            page(&[("broker", "0.004", 4)]).as_str(),
        ]);
        assert_eq!(two.0.get(&("broker".to_owned(), 4_000_000)), Some(&7.0));
        let s = shares(&before, &after);
        assert_eq!(
            (s.own_p50_ms.is_nan(), s.stages_ms["queued"]),
            (true, [1.0, 2.0])
        );
    }

    fn runs(counts: &[(&str, u64)]) -> String {
        counts
            .iter()
            .map(|(le, n)| {
                format!("switchboard_server_consumed_run_records_bucket{{le=\"{le}\"}} {n}\n")
            })
            .collect()
    }

    #[test]
    fn run_sizes_are_read_beside_the_stages() {
        let before = Snapshot::parse([runs(&[("1.0", 5), ("512.0", 5), ("+Inf", 5)]).as_str()]);
        // In the window, over two servers: 60 single records, 40 runs of
        // 257–512 records (the consumer's largest).
        let after = Snapshot::parse([
            runs(&[("1.0", 35), ("512.0", 45), ("+Inf", 45)]).as_str(),
            runs(&[("1.0", 30), ("512.0", 60), ("+Inf", 60)]).as_str(),
            page(&[("queued", "0.001", 1)]).as_str(),
        ]);
        let s = shares(&before, &after);
        assert_eq!(s.run_records, [1.0, 512.0]);
        assert_eq!(s.stages_ms["queued"], [1.0, 1.0], "the stages still parse");
    }
}
