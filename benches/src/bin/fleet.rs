//! Push to enforced on every host of a fleet: a real etcd cluster on
//! loopback, N hosts (`sgswitch run --no-datapath`, release build beside
//! this program or `$SGSWITCH_BIN`), `--ports` ports published in the store
//! between them, then `--pushes` pushes of a changed group, each timed from
//! the moment its transaction is written (and from the start of the push,
//! its read of the store included) to the moment the last host logged the
//! revision in force (the hosts' log lines carry microsecond wall-clock
//! times; the same clock as this program's).
//!
//! One JSON line per (hosts, ports): `hosts`, `ports`, `members`,
//! `pushes`, `p50_ms`, `p99_ms`, `max_ms` (commit to enforced everywhere),
//! `push_p50_ms`, `push_p99_ms` (push start to enforced everywhere),
//! `reload_p50_ms` (one host's load and compile of a revision, from its
//! log). First, per `--ports`, a `fleet-reload` line: one host's load and
//! compile of a revision alone, without etcd (`--own` ports of its own,
//! 200 by default; `--trials`; `--reload-only` stops there).
//!
//! `cargo build --release -p sgswitch -p sgswitch-benches --bin fleet &&
//! target/release/fleet --hosts 10,50 --ports 0,10000 --pushes 100`

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use sgswitch::control::store;
use sgswitch_tests::fleet::{Etcd, Host, applied_line};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

fn list(name: &str, default: &str) -> Vec<usize> {
    arg(name, default).split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The `per_mille`/1000 quantile of `v` (nearest rank), in tenths.
fn quantile(v: &mut [f64], per_mille: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) * per_mille).div_ceil(1000);
    (v[i.min(v.len() - 1)] * 10.0).round() / 10.0
}

/// Port `k` of the fleet: an address of its own, in sg-web or sg-db.
fn port(k: usize) -> (String, String) {
    let id = format!("p{k}");
    let ip = format!("10.{}.{}.{}", 16 + k / 65_536, (k / 256) % 256, k % 256);
    let group = if k % 2 == 0 { "sg-web" } else { "sg-db" };
    let text = format!("id = \"{id}\"\nipv4 = [\"{ip}\"]\nsecurity_groups = [\"{group}\"]\n");
    (id, text)
}

fn groups(dir: &std::path::Path, k: usize) {
    std::fs::create_dir_all(dir.join("groups")).expect("groups");
    std::fs::write(
        dir.join("groups/sg-web.toml"),
        "id = \"sg-web\"\n[[ingress]]\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"80/80\"\nsource = \"0.0.0.0/0\"\n",
    )
    .expect("sg-web");
    let p = 1000 + k % 60_000;
    std::fs::write(
        dir.join("groups/sg-db.toml"),
        format!("id = \"sg-db\"\n[[ingress]]\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"{p}/{p}\"\nsource = \"sg-web\"\n"),
    )
    .expect("sg-db");
}

/// What has been read of a host's log: where the next read starts, and
/// the generations it put in force with their times.
#[derive(Default)]
struct Tail {
    offset: u64,
    partial: String,
    applied: Vec<(u64, u64)>,
}

impl Tail {
    /// Reads what the log gained since the last call.
    fn read(&mut self, h: &Host) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&h.log) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut more = String::new();
        let Ok(n) = f.read_to_string(&mut more) else { return };
        self.offset += n as u64;
        self.partial.push_str(&more);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.applied.extend(applied_line(&line));
        }
    }
}

/// The microsecond at which every host had put `rev` (or a later one) in
/// force, or `None` after `within`.
fn enforced(hosts: &[Host], tails: &mut [Tail], rev: u64, within: Duration) -> Option<u64> {
    let t = Instant::now();
    loop {
        let mut last = Some(0);
        for (h, tail) in hosts.iter().zip(tails.iter_mut()) {
            tail.read(h);
            let at = tail.applied.iter().find(|&&(g, _)| g >= rev).map(|&(_, us)| us);
            last = last.zip(at).map(|(a, b)| a.max(b));
        }
        if last.is_some() || t.elapsed() >= within {
            return last;
        }
        // The times come from the hosts' logs: polling slower does not
        // change them, and leaves the cores to the hosts.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One host's reload of a push with `ports` in the store (200 of them its
/// own, or `--own`), without etcd: the overlay loaded with the directory, whose files
/// the load before read (`load_ms`), and the plan compiled after the one
/// before (`compile_ms`), best of `--trials` (3).
fn reload_breakdown(ports: usize) {
    use sgswitch::control::store::Snapshot;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    std::fs::create_dir_all(dir.join("ports")).expect("ports");
    let per = list("--own", "200")[0].max(1);
    let own = per.min(ports);
    let mut snap = Snapshot::new("/b");
    for k in 0..ports {
        let (id, text) = port(k);
        if k < own {
            std::fs::write(dir.join(format!("ports/{id}.toml")), &text).expect("port");
        } else {
            snap.set(&format!("/b/hosts/h{}/ports/{id}", k / per), Some(text));
        }
    }
    let admin = dir.join("admin");
    let revision = |snap: &mut Snapshot, k: usize| {
        groups(&admin, k);
        for g in ["sg-web", "sg-db"] {
            snap.set(&format!("/b/groups/{g}"), Some(std::fs::read_to_string(admin.join(format!("groups/{g}.toml"))).expect("group")));
        }
    };
    revision(&mut snap, 1);
    let mut zones = sgswitch::datapath::plan::Zones::default();
    let first = sgswitch_config::load_dir_with(dir, Some(&snap.overlay("h0"))).expect("loads");
    let mut previous = sgswitch::datapath::plan::Plan::build(first, &mut zones, 1).expect("plan").0;
    // Each trial is a push as a host takes it: sg-db changed, loaded with
    // the directory, compiled after the plan before.
    let (mut load_ms, mut compile_ms) = (f64::MAX, f64::MAX);
    let mut local = None;
    for k in 0..list("--trials", "3")[0] {
        revision(&mut snap, k + 2);
        let t = Instant::now();
        let o = snap.overlay("h0");
        let cfg = sgswitch_config::load_dir_reusing(dir, Some(&o), &mut local).expect("loads");
        let t1 = Instant::now();
        let plan = sgswitch::datapath::plan::Plan::build_after(cfg, &mut zones, 2, Some(&previous)).expect("plan").0;
        let t2 = Instant::now();
        previous = plan;
        load_ms = load_ms.min((t1 - t).as_secs_f64() * 1e3);
        compile_ms = compile_ms.min((t2 - t1).as_secs_f64() * 1e3);
    }
    println!(
        "{}",
        serde_json::json!({"bench": "fleet-reload", "ports": ports, "load_ms": (load_ms * 10.0).round() / 10.0, "compile_ms": (compile_ms * 10.0).round() / 10.0})
    );
}

fn main() {
    for &ports in &list("--ports", "0,10000") {
        reload_breakdown(ports.max(1));
    }
    if std::env::args().any(|a| a == "--reload-only") {
        return;
    }
    let bin = std::env::var("SGSWITCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::current_exe().expect("exe").parent().expect("dir").join("sgswitch"));
    let bin = bin.to_str().expect("path").to_owned();
    assert!(std::path::Path::new(&bin).exists(), "no sgswitch at {bin}: cargo build --release -p sgswitch (or set SGSWITCH_BIN)");
    let members = list("--members", "3")[0];
    let pushes = list("--pushes", "100")[0];
    for &n in &list("--hosts", "10,50") {
        for &ports in &list("--ports", "0,10000") {
            let etcd = Etcd::start(members);
            let root = tempfile::tempdir().expect("tempdir");
            let admin = root.path().join("admin");
            groups(&admin, 0);
            std::fs::write(admin.join("host.toml"), etcd.store_toml("/bench", "admin", 10)).expect("host.toml");
            let cfg0 = sgswitch_config::load_dir(&admin).expect("admin");
            let settings = cfg0.host.store.clone().expect("store");
            let push = |k: usize| {
                groups(&admin, k);
                let mut cfg = sgswitch_config::load_dir(&admin).expect("admin");
                let sources = std::mem::take(&mut cfg.sources);
                let t0 = now_us();
                let (prepared, tc) = store::block_on(async {
                    let p = store::prepare(&settings, &cfg, &sources).await.expect("prepare");
                    let tc = now_us();
                    (store::commit(&settings, p).await.expect("commit"), tc)
                })
                .expect("runtime");
                (prepared.revision, t0, tc)
            };
            push(1);
            // Ports: `ports` in all, at least one per host, spread evenly.
            let per = ports.div_ceil(n).max(1);
            let hosts: Vec<Host> = (0..n)
                .map(|h| {
                    let mine: Vec<(String, String)> = (h * per..(h + 1) * per).map(port).collect();
                    let name = format!("h{h}");
                    Host::start(&bin, root.path(), &name, &etcd.store_toml("/bench", &name, 10), &mine)
                })
                .collect();
            // Settled: every host sees every other host's ports.
            let total = per * n;
            let t = Instant::now();
            let want = u64::try_from(total - per).unwrap_or(0);
            while !hosts.iter().all(|h| h.status(&bin).is_some_and(|v| v["store"]["remote_ports"].as_u64() == Some(want))) {
                assert!(t.elapsed() < Duration::from_secs(600), "the fleet did not settle");
                std::thread::sleep(Duration::from_millis(200));
            }
            let settle_s = t.elapsed().as_secs_f64();
            let (mut from_commit, mut from_start) = (Vec::new(), Vec::new());
            let mut missed = 0;
            let mut tails: Vec<Tail> = hosts.iter().map(|_| Tail::default()).collect();
            for k in 0..pushes {
                let (rev, t0, tc) = push(k + 2);
                match enforced(&hosts, &mut tails, u64::try_from(rev).unwrap_or(0), Duration::from_secs(30)) {
                    Some(at) => {
                        from_commit.push(at.saturating_sub(tc) as f64 / 1e3);
                        from_start.push(at.saturating_sub(t0) as f64 / 1e3);
                    }
                    None => missed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let max = from_commit.iter().copied().fold(0.0, f64::max);
            let mut reloads: Vec<f64> = hosts.iter().flat_map(|h| h.reload_ms().into_iter().rev().take(pushes)).collect();
            println!(
                "{}",
                serde_json::json!({
                    "bench": "fleet",
                    "hosts": n,
                    "ports": total,
                    "members": members,
                    "pushes": pushes,
                    "missed": missed,
                    "settle_s": (settle_s * 10.0).round() / 10.0,
                    "p50_ms": quantile(&mut from_commit, 500),
                    "p99_ms": quantile(&mut from_commit, 990),
                    "max_ms": (max * 10.0).round() / 10.0,
                    "push_p50_ms": quantile(&mut from_start, 500),
                    "push_p99_ms": quantile(&mut from_start, 990),
                    "reload_p50_ms": quantile(&mut reloads, 500),
                })
            );
            drop(hosts);
            drop(etcd);
        }
    }
}
