//! `cargo bench -p switchboard-coordinator --bench assign`: time of the
//! assignment function for P=1024 partitions over 200 servers.

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

fn main() {
    let (p, n) = (1024u32, 200usize);
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
    time("from scratch", 500, || {
        drop(std::hint::black_box(assign(&[], &servers, p)))
    });
    time("unchanged membership", 500, || {
        drop(std::hint::black_box(assign(&base, &servers, p)))
    });
    time("one server joins", 500, || {
        drop(std::hint::black_box(assign(&base, &joined, p)))
    });
    time("one server leaves", 500, || {
        drop(std::hint::black_box(assign(&base, &left, p)))
    });
    time("one server drains", 500, || {
        drop(std::hint::black_box(assign(&base, &drained, p)))
    });
}
