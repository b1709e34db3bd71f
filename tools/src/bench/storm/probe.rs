//! What a storm's processes did while the devices came back: each second,
//! the devices connected and the cores each process used; and where the
//! survivors' sessions waited after their hello (the servers'
//! `switchboard_server_session_start_seconds{step}` over the outage).

use super::super::stages::Snapshot;
use super::super::Bench;
use crate::procstat::cpu_seconds;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One second of an outage.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Sample {
    /// Seconds since the failure's act.
    pub t_s: f64,
    pub connected: usize,
    /// Cores used since the previous sample, by process.
    pub cores: BTreeMap<String, f64>,
}

/// Samples the named processes' CPU.
pub struct Timeline {
    pids: Vec<(String, u32)>,
    t0: Instant,
    last: (Instant, Vec<f64>),
    pub samples: Vec<Sample>,
}

impl Timeline {
    pub fn new(pids: Vec<(String, u32)>) -> Self {
        let cpu = pids.iter().map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0));
        let now = Instant::now();
        Self {
            last: (now, cpu.collect()),
            pids,
            t0: now,
            samples: Vec::new(),
        }
    }

    /// Takes a sample when a second has passed since the last one.
    pub fn tick(&mut self, connected: usize) {
        let now = Instant::now();
        let dt = now.duration_since(self.last.0);
        if dt < Duration::from_secs(1) {
            return;
        }
        let cpu: Vec<f64> = (self.pids.iter())
            .map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0))
            .collect();
        let mut cores = BTreeMap::new();
        for (((name, _), now_s), then_s) in self.pids.iter().zip(&cpu).zip(&self.last.1) {
            let used = ((now_s - then_s).max(0.0) / dt.as_secs_f64() * 100.0).round() / 100.0;
            *cores.entry(name.clone()).or_insert(0.0) += used;
        }
        self.samples.push(Sample {
            t_s: (now.duration_since(self.t0).as_secs_f64() * 10.0).round() / 10.0,
            connected,
            cores,
        });
        self.last = (now, cpu);
    }
}

/// Cores each process used over `over`, nothing failing (`connected`
/// devices, as the caller knows them).
pub async fn steady(pids: Vec<(String, u32)>, connected: usize, over: Duration) -> Sample {
    let mut t = Timeline::new(pids);
    tokio::time::sleep(over).await;
    t.tick(connected);
    t.samples.pop().unwrap_or(Sample {
        t_s: 0.0,
        connected,
        cores: BTreeMap::new(),
    })
}

const STEPS: &str = "switchboard_server_session_start_seconds";

/// Each server's metrics page (`None`: it did not answer).
pub async fn pages(servers: &[String]) -> Vec<Option<String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut pages = Vec::new();
    for base in servers {
        let page = match http.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.ok(),
            Err(_) => None,
        };
        pages.push(page);
    }
    pages
}

/// The pages of the servers that answered both scrapes, before and after.
fn answered<'a>(
    before: &'a [Option<String>],
    after: &'a [Option<String>],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some((b.as_deref()?, a.as_deref()?)))
}

/// p50 and p99 (ms, bucket bounds) of each session start step between two
/// scrapes of the same servers; a server missing from either is left out.
pub fn step_quantiles(
    before: &[Option<String>],
    after: &[Option<String>],
) -> BTreeMap<String, [f64; 2]> {
    let b = Snapshot::parse_family(answered(before, after).map(|(b, _)| b), STEPS, "step");
    let a = Snapshot::parse_family(answered(before, after).map(|(_, a)| a), STEPS, "step");
    let mut out = BTreeMap::new();
    for step in messaging_server::StartStep::ALL.map(messaging_server::StartStep::as_str) {
        if let (Some(p50), Some(p99)) =
            (a.quantile_ms(&b, step, 0.5), a.quantile_ms(&b, step, 0.99))
        {
            out.insert(step.to_owned(), [p50, p99]);
        }
    }
    out
}

const CLOSES: &str = "switchboard_server_closes_total";

/// Sessions the servers closed between two scrapes, by `"<code> <reason>"`
/// (a server missing from either scrape is left out: a killed one's closes
/// are its clients' resets).
pub fn closes(before: &[Option<String>], after: &[Option<String>]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (b, a) in answered(before, after) {
        for (page, sign) in [(a, 1.0), (b, -1.0)] {
            for s in service::prom::samples(page).filter(|s| s.name == CLOSES) {
                let key = format!(
                    "{} {}",
                    s.label("code").unwrap_or("?"),
                    s.label("reason").unwrap_or("?")
                );
                *out.entry(key).or_default() += sign * s.value;
            }
        }
    }
    out.into_iter()
        .filter(|(_, n)| *n >= 0.5)
        .map(|(k, n)| (k, n.round() as u64))
        .collect()
}

/// What a failure's measurement watches: the servers whose session start
/// steps it reads (`fresh`: started by the failure, counted from zero) and
/// the processes whose CPU it samples.
pub struct Watch {
    pub coordinator: String,
    pub servers: Vec<String>,
    pub fresh: Vec<String>,
    pub pids: Vec<(String, u32)>,
}

impl Watch {
    pub fn of(b: &Bench, fixed: &[(String, u32)]) -> Self {
        let mut pids = fixed.to_vec();
        for (i, (id, _, _)) in b.servers.iter().enumerate() {
            pids.push((id.clone(), b.pid(i)));
        }
        Self {
            coordinator: b.coordinator.url(),
            servers: (0..b.servers.len()).map(|i| b.server_http(i)).collect(),
            fresh: Vec::new(),
            pids,
        }
    }
}

/// Samples the coordinator's route counter until stopped; the peak rate
/// over any one second and the total.
pub fn route_sampler(
    coordinator: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(f64, u64)>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut samples: Vec<(Instant, u64)> = Vec::new();
        loop {
            if let Some(n) = route_requests(&coordinator).await {
                samples.push((Instant::now(), n));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut stopped => break,
            }
        }
        let mut peak = 0.0f64;
        for (i, (t, n)) in samples.iter().enumerate() {
            if let Some((t1, n1)) = samples[i..]
                .iter()
                .find(|(t1, _)| t1.duration_since(*t) >= Duration::from_secs(1))
            {
                peak = peak.max((n1 - n) as f64 / t1.duration_since(*t).as_secs_f64());
            }
        }
        let total = match (samples.first(), samples.last()) {
            (Some((_, a)), Some((_, b))) => b - a,
            _ => 0,
        };
        (peak, total)
    });
    (stop, task)
}

async fn route_requests(coordinator: &str) -> Option<u64> {
    let n = super::super::metric(coordinator, "switchboard_coordinator_route_requests_total").await;
    n.map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(n_fast: u64, n_slow: u64) -> String {
        let step =
            |le: &str, n: u64| format!("{STEPS}_bucket{{le=\"{le}\",step=\"synced\"}} {n}\n");
        [
            step("0.001", n_fast),
            step("1.0", n_fast + n_slow),
            step("+Inf", n_fast + n_slow),
        ]
        .concat()
    }

    #[test]
    fn closes_are_counted_between_scrapes_by_code_and_reason() {
        let line =
            |reason: &str, n: u64| format!("{CLOSES}{{code=\"4006\",reason=\"{reason}\"}} {n}\n");
        let before = [
            Some(line("registration lost", 5)),
            Some(line("gone", 1)),
            Some(String::new()),
        ];
        let after = [
            Some(line("registration lost", 12) + &line("retry later", 3)),
            None,
            Some(line("gone", 4)),
        ];
        let got = closes(&before, &after);
        let want: BTreeMap<String, u64> = [
            ("4006 registration lost", 7),
            ("4006 retry later", 3),
            ("4006 gone", 4),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_server_missing_from_either_scrape_is_left_out() {
        // The second server answered only before: its slow sessions would
        // be taken off the first's.
        let before = [Some(page(0, 0)), Some(page(0, 2))];
        let after = [Some(page(98, 2)), None];
        let q = step_quantiles(&before, &after);
        assert_eq!(q.get("synced"), Some(&[1.0, 1000.0]), "{q:?}");
    }
}
