//! `cargo bench -p switchboard-coordinator --bench assign`: time of the
//! assignment function, and partitions moved by a membership change, for
//! P=1024 over 200 servers and P=4096 over 1,000 servers.

use coordinator::assign::assign;
use protocol::{ServerId, ServerInfo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn fleet(n: usize) -> BTreeMap<ServerId, ServerInfo> {
    (0..n)
        .filter_map(|i| ServerId::new(format!("server-{i:04}")).ok())
        .map(|id| (id.clone(), ServerInfo::at_host(id.clone(), id.as_str())))
        .collect()
}

fn time(label: &str, runs: usize, mut f: impl FnMut()) {
    let mut samples: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let p50 = samples[runs / 2];
    let p99 = samples[runs * 99 / 100];
    println!(
        "{label:<40} p50 {:>9.1} µs   p99 {:>9.1} µs",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

/// Partitions whose owner differs between two assignments.
fn moved(a: &[Option<ServerId>], b: &[Option<ServerId>]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn main() {
    for (p, n) in [(1024u32, 200usize), (4096, 1000)] {
        run(p, n);
    }
}

fn run(p: u32, n: usize) {
    let runs = if n > 500 { 100 } else { 500 };
    let servers = fleet(n);
    let base = assign(&[], &servers, p);
    let mut joined = servers.clone();
    joined.extend(fleet(n + 1).into_iter().skip(n));
    let mut left = servers.clone();
    left.remove("server-0100");
    let mut drained = servers.clone();
    if let Some(s) = drained.get_mut("server-0007") {
        s.draining = true;
    }
    println!("assignment function, P={p}, {n} servers");
    time("from scratch", runs, || {
        drop(std::hint::black_box(assign(&[], &servers, p)))
    });
    time("unchanged membership", runs, || {
        drop(std::hint::black_box(assign(&base, &servers, p)))
    });
    time("one server joins", runs, || {
        drop(std::hint::black_box(assign(&base, &joined, p)))
    });
    time("one server leaves", runs, || {
        drop(std::hint::black_box(assign(&base, &left, p)))
    });
    time("one server drains", runs, || {
        drop(std::hint::black_box(assign(&base, &drained, p)))
    });
    for (label, fleet) in [("joins", &joined), ("leaves", &left), ("drains", &drained)] {
        let next = assign(&base, fleet, p);
        println!(
            "one server {label:<7} moves {:>5} of {p} partitions (ideal {:.1})",
            moved(&base, &next),
            f64::from(p) / n as f64
        );
    }
}
