//! Publishing compiled policies while readers classify, as the switch's
//! control plane does (an `ArcSwap` of an immutable snapshot, swapped whole):
//! every read sees one whole generation, and an old snapshot is freed when
//! its last reader lets go.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use arc_swap::ArcSwap;
use sgswitch_config::{Action, Config};
use sgswitch_filter::{By, Compiled, Direction, Packet, Policy, Verdict};

fn examples() -> Config {
    sgswitch_config::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).expect("examples load")
}

/// The examples with every rule of every group turned to `action`.
fn all(action: Action) -> Config {
    let mut cfg = examples();
    for g in &mut cfg.groups {
        for r in g.ingress.iter_mut().chain(g.egress.iter_mut()) {
            r.action = action;
        }
    }
    cfg
}

#[test]
fn readers_always_see_one_whole_generation() {
    // Even generations allow every rule, odd ones deny: a reader that
    // classified with a table of one generation and rules of another, or a
    // half-built snapshot, would see a verdict that disagrees with the
    // generation it loaded.
    let allow = Arc::new(Policy::new(all(Action::Allow)));
    let deny = Arc::new(Policy::new(all(Action::Deny)));
    let port = allow.port_index("eni-bastion").expect("bastion");
    let ssh = Packet {
        direction: Direction::Ingress,
        proto: 6,
        remote: "198.51.100.7".parse().unwrap(),
        local: "10.0.2.31".parse().unwrap(),
        remote_port: 40000,
        local_port: 22,
        icmp_type: 0,
        icmp_code: 0,
    };
    let published = Arc::new(ArcSwap::from_pointee(Compiled::new(allow.clone(), 0)));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(3));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (published, stop, start) = (published.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut seen = [0u64; 2];
                while !stop.load(Ordering::Relaxed) {
                    let snap = published.load();
                    let d = snap.decide(port, &ssh);
                    let want = if snap.generation() % 2 == 0 { Verdict::Allow } else { Verdict::Deny };
                    assert_eq!(d.verdict, want, "generation {}", snap.generation());
                    assert!(matches!(d.by, By::Rule(_)));
                    seen[usize::try_from(snap.generation() % 2).unwrap()] += 1;
                }
                seen
            })
        })
        .collect();
    start.wait();
    for generation in 1..=200u64 {
        let policy = if generation % 2 == 0 { allow.clone() } else { deny.clone() };
        published.store(Arc::new(Compiled::new(policy, generation)));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.join().expect("reader");
        assert!(seen[0] + seen[1] > 0);
    }
    assert_eq!(published.load().generation(), 200);
}

#[test]
fn an_old_snapshot_is_freed_when_its_last_reader_lets_go() {
    let published = ArcSwap::from_pointee(Compiled::new(Arc::new(Policy::new(examples())), 1));
    let held = published.load_full();
    let weak = Arc::downgrade(&held);
    let old = published.swap(Arc::new(Compiled::new(Arc::new(Policy::new(examples())), 2)));
    drop(old);
    assert!(weak.upgrade().is_some(), "a reader still holds generation 1");
    assert_eq!(held.generation(), 1);
    drop(held);
    assert!(weak.upgrade().is_none(), "generation 1 was freed");
    assert_eq!(published.load().generation(), 2);
}
