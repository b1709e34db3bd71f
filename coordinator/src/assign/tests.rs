use super::*;
use proptest::prelude::*;

fn sid(id: &str) -> ServerId {
    ServerId::new(id).unwrap()
}

fn server(id: &str, weight: u32, draining: bool) -> ServerInfo {
    ServerInfo {
        weight,
        draining,
        ..ServerInfo::at_host(sid(id), id)
    }
}

fn fleet(n: usize) -> BTreeMap<ServerId, ServerInfo> {
    (0..n)
        .map(|i| {
            (
                sid(&format!("s{i:03}")),
                server(&format!("s{i:03}"), 1, false),
            )
        })
        .collect()
}

fn loads(owners: &Owners) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in owners.iter().flatten() {
        *m.entry(o.to_string()).or_default() += 1;
    }
    m
}

fn name(o: &Option<ServerId>) -> Option<&str> {
    o.as_ref().map(ServerId::as_str)
}

fn moved(a: &Owners, b: &Owners) -> Vec<usize> {
    (0..a.len()).filter(|p| a[*p] != b[*p]).collect()
}

#[test]
fn no_servers_no_owners() {
    assert_eq!(assign(&[], &BTreeMap::new(), 4), vec![None; 4]);
    let mut s = fleet(2);
    s.values_mut().for_each(|x| x.draining = true);
    assert_eq!(assign(&[], &s, 4), vec![None; 4]);
}

#[test]
fn weights_scale_load() {
    let mut s = fleet(2);
    s.get_mut("s000").unwrap().weight = 3;
    let l = loads(&assign(&[], &s, 12));
    assert_eq!((l["s000"], l["s001"]), (9, 3));
}

proptest! {
    #[test]
    fn everything_owned_and_balanced(n in 1usize..20, p in 1u32..300, drain in 0usize..3) {
        let mut s = fleet(n + drain);
        for i in 0..drain { s.get_mut(format!("s{:03}", n + i).as_str()).unwrap().draining = true; }
        let owners = assign(&[], &s, p);
        prop_assert!(owners.iter().all(Option::is_some));
        let l = loads(&owners);
        for i in 0..drain {
            let d = format!("s{:03}", n + i);
            prop_assert!(!l.contains_key(&d));
        }
        let (min, max) = (l.values().min().copied().unwrap_or(0), l.values().max().copied().unwrap_or(0));
        let min = if l.len() < n { 0 } else { min };
        prop_assert!(max - min <= 1, "loads {:?}", l);
    }

    #[test]
    fn deterministic(n in 1usize..10, p in 1u32..100) {
        let s = fleet(n);
        let first = assign(&[], &s, p);
        prop_assert_eq!(assign(&first, &s, p), first.clone());
        prop_assert_eq!(assign(&[], &s, p), first);
    }

    #[test]
    fn leave_moves_only_the_leavers(n in 2usize..16, p in 1u32..256, leaver in 0usize..16) {
        let mut s = fleet(n);
        let before = assign(&[], &s, p);
        let gone = format!("s{:03}", leaver % n);
        s.remove(gone.as_str());
        let after = assign(&before, &s, p);
        for part in moved(&before, &after) {
            prop_assert_eq!(name(&before[part]), Some(gone.as_str()));
        }
        let l = loads(&after);
        prop_assert!(l.values().max().unwrap() - l.values().min().unwrap() <= 1);
    }

    #[test]
    fn drain_moves_only_the_drainers(n in 2usize..16, p in 1u32..256, who in 0usize..16) {
        let mut s = fleet(n);
        let before = assign(&[], &s, p);
        let d = format!("s{:03}", who % n);
        s.get_mut(d.as_str()).unwrap().draining = true;
        let after = assign(&before, &s, p);
        prop_assert!(after.iter().all(|o| o.is_some() && name(o) != Some(d.as_str())));
        for part in moved(&before, &after) {
            prop_assert_eq!(name(&before[part]), Some(d.as_str()));
        }
    }

    #[test]
    fn join_moves_about_p_over_n(n in 1usize..16, p in 1u32..256) {
        let mut s = fleet(n);
        let before = assign(&[], &s, p);
        s.insert(sid("zzz"), server("zzz", 1, false));
        let after = assign(&before, &s, p);
        let m = moved(&before, &after);
        let fair = (p as usize).div_ceil(n + 1);
        prop_assert!(m.len() <= fair, "moved {} > {}", m.len(), fair);
        for part in m { prop_assert_eq!(name(&after[part]), Some("zzz")); }
    }

    #[test]
    fn weighted_loads_are_within_one_of_share(ws in proptest::collection::vec(1u32..5, 1..8), p in 1u32..200) {
        let s: BTreeMap<ServerId, ServerInfo> = ws.iter().enumerate()
            .map(|(i, w)| (sid(&format!("s{i}")), server(&format!("s{i}"), *w, false))).collect();
        let total: u32 = ws.iter().sum();
        let l = loads(&assign(&[], &s, p));
        for (i, w) in ws.iter().enumerate() {
            let share = f64::from(p) * f64::from(*w) / f64::from(total);
            let got = l.get(&format!("s{i}")).copied().unwrap_or(0) as f64;
            prop_assert!((got - share).abs() < 1.0, "server {} got {} share {}", i, got, share);
        }
    }
}

proptest! {
    #[test]
    fn a_server_cut_from_the_broker_owns_nothing_while_another_reaches_it(n in 2usize..12, p in 1u32..128, cut in 0usize..12) {
        let mut s = fleet(n);
        let before = assign(&[], &s, p);
        let id = sid(&format!("s{:03}", cut % n));
        if let Some(info) = s.get_mut(&id) {
            info.broker_unreachable = true;
        }
        let after = assign(&before, &s, p);
        prop_assert!(after.iter().all(|o| o.is_some()));
        prop_assert!(!after.iter().flatten().any(|o| *o == id));
        // Only its partitions moved.
        for part in moved(&before, &after) {
            prop_assert_eq!(before[part].as_ref(), Some(&id));
        }
    }

    #[test]
    fn when_no_server_reaches_the_broker_nothing_moves(n in 1usize..12, p in 1u32..128) {
        let mut s = fleet(n);
        let before = assign(&[], &s, p);
        for info in s.values_mut() {
            info.broker_unreachable = true;
        }
        prop_assert_eq!(assign(&before, &s, p), before);
    }
}
