//! A fleet of hosts sharing one etcd: a real 3-member etcd cluster on
//! loopback and ten or more `sgswitch run --no-datapath` hosts, each with
//! its own directory and ports (`docs/fleet.md`).
//!
//! Every host has one port: hosts `w0..` a web port in sg-web (10.1.0.x),
//! hosts `d0..` a database port in sg-db (10.2.0.x). Version k of the
//! pushed groups lets sg-web reach sg-db on TCP 5000+k only, so a
//! database host's traces for 5001..5009 say which version it enforces.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sgswitch::control::store::{self, PushError};
use sgswitch_tests::fleet::{Etcd, Host, eventually, port_toml};

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");
const PREFIX: &str = "/fleet";
const TTL: u32 = 3;

/// Writes the admin directory for version `k` of the groups.
fn admin(root: &Path, etcd: &Etcd, k: u16) -> std::path::PathBuf {
    let dir = root.join("admin");
    std::fs::create_dir_all(dir.join("groups")).expect("admin");
    std::fs::write(dir.join("host.toml"), etcd.store_toml(PREFIX, "admin", TTL)).expect("host.toml");
    std::fs::write(
        dir.join("groups/sg-web.toml"),
        "id = \"sg-web\"\n[[ingress]]\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"80/80\"\nsource = \"0.0.0.0/0\"\n",
    )
    .expect("sg-web");
    std::fs::write(
        dir.join("groups/sg-db.toml"),
        format!(
            "id = \"sg-db\"\n[[ingress]]\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"{0}/{0}\"\nsource = \"sg-web\"\n",
            5000 + k
        ),
    )
    .expect("sg-db");
    dir
}

/// `sgswitch push` of version `k`: the revision it was written as.
fn push(root: &Path, etcd: &Etcd, k: u16) -> u64 {
    let dir = admin(root, etcd, k);
    let o = Command::new(BIN).arg("push").arg(&dir).output().expect("push");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "push v{k}: {out}{}", String::from_utf8_lossy(&o.stderr));
    let rev = out.split("revision ").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).and_then(|r| r.parse().ok());
    rev.unwrap_or_else(|| panic!("push v{k} said {out}"))
}

struct Fleet {
    web: Vec<Host>,
    db: Vec<Host>,
}

impl Fleet {
    fn start(root: &Path, etcd: &Etcd, webs: usize, dbs: usize) -> Fleet {
        let host = |name: String, port: String, ip: String, group: &str| {
            Host::start(BIN, root, &name, &etcd.store_toml(PREFIX, &name, TTL), &[(port.clone(), port_toml(&port, &ip, &[group]))])
        };
        let web = (0..webs).map(|i| host(format!("w{i}"), format!("web{i}"), format!("10.1.0.{}", i + 1), "sg-web")).collect();
        let db = (0..dbs).map(|i| host(format!("d{i}"), format!("db{i}"), format!("10.2.0.{}", i + 1), "sg-db")).collect();
        Fleet { web, db }
    }

    fn all(&self) -> impl Iterator<Item = &Host> {
        self.web.iter().chain(&self.db)
    }

    /// Waits until every host enforces revision `rev` or a later one.
    fn converge(&self, rev: u64, within: Duration) {
        for h in self.all() {
            let ok = eventually(within, || h.generation(BIN).is_some_and(|g| g >= rev));
            assert!(ok, "host {} stays at generation {:?}, not {rev}; its log:\n{}", h.name, h.generation(BIN), log(h));
        }
    }

    /// Waits until every host has every other host's port in force (each
    /// host publishes its port after its first load, so a host can be at
    /// a pushed revision before it sees the others).
    fn settle(&self) {
        let others = self.web.len() + self.db.len() - 1;
        for h in self.all() {
            let ok = eventually(Duration::from_secs(10), || h.status(BIN).is_some_and(|v| v["store"]["remote_ports"] == others));
            assert!(ok, "{} does not see the {others} other ports: {:?}", h.name, h.status(BIN).map(|v| v["store"].clone()));
        }
    }

    /// The versions database host `i` lets `from` reach (1..=9).
    fn versions(&self, i: usize, from: &str) -> Vec<u16> {
        let h = &self.db[i];
        (1..=9).filter(|k| h.trace_tcp(BIN, &format!("db{i}"), from, 5000 + k) == "allow").collect()
    }
}

fn log(h: &Host) -> String {
    std::fs::read_to_string(&h.log).unwrap_or_default()
}

#[test]
fn ten_hosts_share_groups_resolve_references_across_hosts_and_forget_dead_hosts() {
    let etcd = Etcd::start(3);
    let root = tempfile::tempdir().expect("tempdir");
    let r1 = push(root.path(), &etcd, 1);
    let fleet = Fleet::start(root.path(), &etcd, 5, 5);
    fleet.converge(r1, Duration::from_secs(20));
    fleet.settle();

    // "from sg-web" on a database host allows every web port, each on
    // another host, and nothing else.
    for i in 0..5 {
        for w in 1..=5 {
            assert_eq!(fleet.versions(i, &format!("10.1.0.{w}")), vec![1], "d{i} from web{}", w - 1);
        }
        assert_eq!(fleet.versions(i, "10.9.9.9"), Vec::<u16>::new(), "d{i} from outside sg-web");
        // sg-db's intra-group accept spans hosts: another host's database
        // port is a member.
        let other = (i + 1) % 5 + 1;
        assert_eq!(fleet.versions(i, &format!("10.2.0.{other}")), (1..=9).collect::<Vec<u16>>(), "d{i} from db{}", other - 1);
    }

    // A group change reaches every host.
    let r2 = push(root.path(), &etcd, 2);
    fleet.converge(r2, Duration::from_secs(10));
    for i in 0..5 {
        assert_eq!(fleet.versions(i, "10.1.0.3"), vec![2], "d{i} after the push of v2");
    }

    // Two hosts claiming one address: neither claim widens a group, both
    // are reported; withdrawn (the claimant dies), the address is back.
    let mut rogue = Host::start(
        BIN,
        root.path(),
        "rogue",
        &etcd.store_toml(PREFIX, "rogue", TTL),
        &[("imposter".into(), port_toml("imposter", "10.1.0.1", &["sg-web"]))],
    );
    for i in 0..5 {
        let h = &fleet.db[i];
        let ok = eventually(Duration::from_secs(10), || {
            h.status(BIN).is_some_and(|v| {
                v["store"]["conflicts"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["address"] == "10.1.0.1/32" && c["claims"].to_string().contains("rogue/imposter")))
            })
        });
        assert!(ok, "d{i} does not report the conflict: {:?}", h.status(BIN).map(|v| v["store"].clone()));
        assert_eq!(fleet.versions(i, "10.1.0.1"), Vec::<u16>::new(), "d{i}: a claimed address is no member");
        assert_eq!(fleet.versions(i, "10.1.0.2"), vec![2], "d{i}: the others stay members");
    }
    rogue.kill();
    for i in 0..5 {
        let ok = eventually(Duration::from_secs(u64::from(TTL) + 10), || fleet.versions(i, "10.1.0.1") == vec![2]);
        assert!(ok, "d{i}: web0's address is not a member again after the rogue's lease ran out");
    }

    // A host killed: its ports leave every group on every host once its
    // lease runs out.
    let mut fleet = fleet;
    fleet.web[1].kill();
    for i in 0..5 {
        let ok = eventually(Duration::from_secs(u64::from(TTL) + 10), || fleet.versions(i, "10.1.0.2").is_empty());
        assert!(ok, "d{i} still lets the dead host's address in");
        assert_eq!(fleet.versions(i, "10.1.0.3"), vec![2], "d{i}: the living web hosts stay members");
    }

    // A configuration in the store that does not check is refused by every
    // host, which keep the one in force.
    let before: Vec<u64> = fleet.all().filter_map(|h| h.generation(BIN)).collect();
    let put = etcd.ctl(&["put", &format!("{PREFIX}/groups/sg-db"), "id = \"sg-db\"\n[[ingress]]\naction = \"maybe\"\n"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    for h in fleet.all().filter(|h| h.name != "w1") {
        let ok = eventually(Duration::from_secs(10), || h.status(BIN).is_some_and(|v| v["store"]["refused"].is_object()));
        let st = h.status(BIN).expect("status");
        assert!(ok, "{} did not refuse the broken group: {}", h.name, st["store"]);
        assert!(st["store"]["refused"]["why"].as_str().is_some_and(|w| w.contains("/fleet/groups/sg-db:3:")), "{}", st["store"]);
    }
    let after: Vec<u64> = fleet.all().filter_map(|h| h.generation(BIN)).collect();
    assert_eq!(before, after, "a refused revision changed a generation");
    for i in 0..5 {
        assert_eq!(fleet.versions(i, "10.1.0.3"), vec![2], "d{i} keeps v2 while the store holds a broken group");
    }
    let r3 = push(root.path(), &etcd, 3);
    fleet.web.remove(1);
    fleet.converge(r3, Duration::from_secs(10));
    for i in 0..5 {
        assert_eq!(fleet.versions(i, "10.1.0.3"), vec![3], "d{i} after the push of v3");
    }

    // A port removed from its host's directory is withdrawn from the store
    // and leaves its group everywhere; the host's other ports stay.
    let w3 = fleet.web.iter().find(|h| h.name == "w3").expect("w3");
    std::fs::remove_file(w3.dir.join("ports/web3.toml")).expect("remove web3");
    let o = Command::new(BIN).args(["ctl", "--socket"]).arg(&w3.socket).arg("reload").output().expect("ctl reload");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..5 {
        let ok = eventually(Duration::from_secs(10), || fleet.versions(i, "10.1.0.4").is_empty());
        assert!(ok, "d{i} still lets the removed port's address in");
        assert_eq!(fleet.versions(i, "10.1.0.3"), vec![3], "d{i}: the other web ports stay members");
    }
}

#[test]
fn two_pushes_at_once_one_wins_the_other_is_refused() {
    let etcd = Etcd::start(1);
    let root = tempfile::tempdir().expect("tempdir");
    push(root.path(), &etcd, 1);

    // Both read the store before either writes: the second write is refused.
    let a = admin(&root.path().join("a"), &etcd, 2);
    let b = admin(&root.path().join("b"), &etcd, 3);
    let load = |d: &Path| {
        let mut c = sgswitch_config::load_dir(d).expect("admin loads");
        let s = std::mem::take(&mut c.sources);
        (c, s)
    };
    let ((ca, sa), (cb, sb)) = (load(&a), load(&b));
    let settings = ca.host.store.clone().expect("[store]");
    let outcome = store::block_on(async {
        let pa = store::prepare(&settings, &ca, &sa).await.expect("prepare a");
        let pb = store::prepare(&settings, &cb, &sb).await.expect("prepare b");
        assert_eq!(pa.read, pb.read);
        (store::commit(&settings, pa).await, store::commit(&settings, pb).await)
    })
    .expect("runtime");
    let won = outcome.0.expect("the first push is written");
    match outcome.1 {
        Err(e @ PushError::Raced { .. }) => {
            assert!(e.to_string().starts_with("refused: the store changed after this push read it"), "{e}");
        }
        other => panic!("the second push was not refused: {other:?}"),
    }
    let got = etcd.ctl(&["get", &format!("{PREFIX}/groups/sg-db"), "--print-value-only"]);
    assert!(String::from_utf8_lossy(&got.stdout).contains("5002/5002"), "the store holds the winner's group");
    assert!(won.revision > 0);

    // Two `sgswitch push` processes started together: whatever the order,
    // the store ends with one of them whole, and a push that lost says so.
    let spawn = |d: &Path| Command::new(BIN).arg("push").arg(d).output().expect("push");
    let (c, d) = (admin(&root.path().join("c"), &etcd, 4), admin(&root.path().join("d"), &etcd, 5));
    let (oc, od) = std::thread::scope(|s| {
        let hc = s.spawn(|| spawn(&c));
        let hd = s.spawn(|| spawn(&d));
        (hc.join().expect("c"), hd.join().expect("d"))
    });
    for o in [&oc, &od] {
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("refused: the store changed"), "a failed push must say why: {err}");
        }
    }
    assert!(oc.status.success() || od.status.success(), "one of two pushes is written");
    let got = String::from_utf8_lossy(&etcd.ctl(&["get", &format!("{PREFIX}/groups/sg-db"), "--print-value-only"]).stdout).into_owned();
    assert!(got.contains("5004/5004") || got.contains("5005/5005"), "{got}");

    // `pull` writes the store back to a directory that then checks.
    let pulled = root.path().join("pulled");
    std::fs::create_dir_all(&pulled).expect("dir");
    std::fs::write(pulled.join("host.toml"), etcd.store_toml(PREFIX, "admin", TTL)).expect("host.toml");
    let o = Command::new(BIN).arg("pull").arg(&pulled).output().expect("pull");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(pulled.join("groups/sg-db.toml")).expect("pulled sg-db");
    assert_eq!(text.trim_end(), got.trim_end());
    assert!(sgswitch_config::load_dir(&pulled).is_ok());

    // A prefix larger than a read's page is read whole, at one revision.
    let settings = sgswitch_config::load_host(&pulled).expect("host").store.expect("store");
    let before = store::block_on(store::pull(&settings)).expect("runtime").expect("pull");
    store::block_on(async {
        let mut c = store::connect(&settings).await.expect("connect");
        for chunk in (0..2500).collect::<Vec<u32>>().chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|i| {
                    let id = format!("p{i}");
                    let text = port_toml(&id, &format!("10.3.{}.{}", i / 256, i % 256), &["sg-web"]);
                    etcd_client::TxnOp::put(format!("{PREFIX}/hosts/bulk/ports/{id}"), text, None)
                })
                .collect();
            c.txn(etcd_client::Txn::new().and_then(ops)).await.expect("put ports");
        }
    })
    .expect("runtime");
    let after = store::block_on(store::pull(&settings)).expect("runtime").expect("pull");
    assert_eq!(after.hosts().get("bulk"), Some(&2500), "every published port is read");
    assert_eq!(after.groups(), before.groups());
    assert!(after.revision >= before.revision + 25);
    assert_eq!(after.ports_of("bulk").len(), 2500);

    // A push that removes a group published ports are bound to is refused,
    // naming them.
    let strand = admin(&root.path().join("strand"), &etcd, 6);
    std::fs::remove_file(strand.join("groups/sg-web.toml")).expect("remove sg-web");
    std::fs::write(strand.join("groups/sg-db.toml"), "id = \"sg-db\"\n").expect("sg-db");
    let o = Command::new(BIN).arg("push").arg(&strand).output().expect("push");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("removes groups that published ports are bound to: bulk/p0 is bound to sg-web"), "{err}");
    assert!(err.contains("(and 2490 more)"), "{err}");

    // The offline verbs on a host's directory (no groups/ of its own) read
    // the store, as `run` does.
    let host = root.path().join("host");
    std::fs::create_dir_all(host.join("ports")).expect("host dir");
    std::fs::write(host.join("host.toml"), etcd.store_toml(PREFIX, "h1", TTL)).expect("host.toml");
    std::fs::write(host.join("ports/db.toml"), port_toml("db", "10.2.0.1", &["sg-db"])).expect("port");
    let check = Command::new(BIN).arg("check").arg(&host).output().expect("check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let allowed = if got.contains("5004/5004") { 5004 } else { 5005 };
    let trace = Command::new(BIN)
        .arg("trace")
        .arg(&host)
        .args(["--port", "db", "--direction", "ingress", "--proto", "tcp", "--remote", "10.2.0.9", "--local-port", &allowed.to_string()])
        .arg("--json")
        .output()
        .expect("trace");
    let v: serde_json::Value = serde_json::from_slice(&trace.stdout).expect("trace json");
    // 10.2.0.9 is no member of sg-web: denied by default, not by a missing group.
    assert_eq!(v["verdict"], "deny", "{v}");
}

#[test]
fn etcd_faults_never_open_a_host_and_every_host_catches_up() {
    let mut etcd = Etcd::start(3);
    let root = tempfile::tempdir().expect("tempdir");
    let mut pushed = vec![push(root.path(), &etcd, 1)];
    let fleet = Fleet::start(root.path(), &etcd, 5, 5);
    fleet.converge(pushed[0], Duration::from_secs(20));
    fleet.settle();

    // What every database host enforces is exactly one version, pushed,
    // and never anything a web port is not allowed by it.
    let enforces = |fleet: &Fleet, latest: u16, why: &str| {
        for i in 0..fleet.db.len() {
            let v = fleet.versions(i, "10.1.0.1");
            assert!(v.len() == 1 && v[0] >= 1 && v[0] <= latest, "{why}: d{i} enforces {v:?} (pushed: 1..={latest})");
            assert!(fleet.versions(i, "10.9.9.9").is_empty(), "{why}: d{i} fails open");
        }
    };

    // A follower killed: pushes go on and reach everyone.
    let leader = etcd.leader();
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    pushed.push(push(root.path(), &etcd, 2));
    fleet.converge(pushed[1], Duration::from_secs(20));
    enforces(&fleet, 2, "one follower down");
    for i in 0..5 {
        assert_eq!(fleet.versions(i, "10.1.0.1"), vec![2]);
    }
    etcd.restart(follower);
    etcd.wait_healthy(Duration::from_secs(20));

    // The leader killed: a new one is elected, pushes go on.
    let leader = etcd.leader();
    etcd.kill(leader);
    etcd.wait_healthy(Duration::from_secs(20));
    pushed.push(push(root.path(), &etcd, 3));
    fleet.converge(pushed[2], Duration::from_secs(20));
    enforces(&fleet, 3, "the old leader down");
    etcd.restart(leader);
    etcd.wait_healthy(Duration::from_secs(20));

    // All of etcd stopped for 30 s: pushes are refused, every host says the
    // store is unreachable and keeps enforcing v3 at the generation it had,
    // never failing open.
    let had: Vec<Option<u64>> = fleet.all().map(|h| h.generation(BIN)).collect();
    for i in 0..3 {
        etcd.kill(i);
    }
    let admin_dir = admin(root.path(), &etcd, 4);
    let t = std::time::Instant::now();
    let mut checks = 0;
    while t.elapsed() < Duration::from_secs(30) {
        let o = Command::new(BIN).arg("push").arg(&admin_dir).output().expect("push");
        assert!(!o.status.success(), "a push succeeded with etcd down");
        assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be reached"), "{}", String::from_utf8_lossy(&o.stderr));
        for (h, had) in fleet.all().zip(&had) {
            let st = h.status(BIN).expect("a host answers with etcd down");
            assert_eq!(st["generation"].as_u64(), *had, "{} with etcd down: {}", h.name, st["store"]);
            if t.elapsed() > Duration::from_secs(5) {
                assert_eq!(st["store"]["connected"], false, "{} does not say the store is away", h.name);
            }
        }
        enforces(&fleet, 3, "etcd down");
        for i in 0..5 {
            assert_eq!(fleet.versions(i, "10.1.0.1"), vec![3], "d{i} with etcd down");
        }
        checks += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(checks >= 5, "checked {checks} times in 30 s");
    let metrics_ok = fleet.db[0].status(BIN).is_some_and(|v| v["store"]["connected"] == false);
    assert!(metrics_ok);

    // etcd back: the hosts reconnect, catch up, and take the next push.
    for i in 0..3 {
        etcd.restart(i);
    }
    etcd.wait_healthy(Duration::from_secs(30));
    for h in fleet.all() {
        let ok = eventually(Duration::from_secs(20), || h.status(BIN).is_some_and(|v| v["store"]["connected"] == true));
        assert!(ok, "{} did not reconnect: {:?}\n{}", h.name, h.status(BIN).map(|v| v["store"].clone()), log(h));
    }
    pushed.push(push(root.path(), &etcd, 4));
    fleet.converge(pushed[3], Duration::from_secs(20));
    enforces(&fleet, 4, "etcd back");
    for i in 0..5 {
        assert_eq!(fleet.versions(i, "10.1.0.1"), vec![4], "d{i} after etcd came back");
    }
    // Every generation any host logged is a revision the store had after
    // the first push (never one from before, never an invented one).
    for h in fleet.all() {
        for (g, _) in h.applied() {
            assert!(g >= pushed[0], "{} applied generation {g} before the first push ({})", h.name, pushed[0]);
        }
    }
}

#[test]
fn a_store_over_tls_with_client_certificates_is_followed_and_one_without_a_certificate_refused() {
    let etcd = Etcd::start_tls();
    let root = tempfile::tempdir().expect("tempdir");
    let r1 = push(root.path(), &etcd, 1);
    let fleet = Fleet::start(root.path(), &etcd, 1, 1);
    fleet.converge(r1, Duration::from_secs(20));
    fleet.settle();
    assert_eq!(fleet.versions(0, "10.1.0.1"), vec![1], "d0 over TLS");

    // The same store without a client certificate: etcd refuses, and so
    // does push, saying why.
    let dir = root.path().join("nocert");
    std::fs::create_dir_all(dir.join("groups")).expect("dir");
    let ca = etcd.tls().expect("tls").join("ca.pem");
    let eps: Vec<String> = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        dir.join("host.toml"),
        format!(
            "[store]\nkind = \"etcd\"\nendpoints = [{}]\nprefix = \"{PREFIX}\"\nca_file = \"{}\"\ntimeout_ms = 1000\n",
            eps.join(", "),
            ca.display()
        ),
    )
    .expect("host.toml");
    let o = Command::new(BIN).arg("push").arg(&dir).output().expect("push");
    assert!(!o.status.success(), "a push without a client certificate was taken");
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be reached"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A store revision takes the directory's files from the last load when
/// the watcher saw nothing touch them; a file it saw change is read again,
/// even while the file's own reload waits out its debounce (a minute
/// here): the port's new address is what the host publishes.
#[test]
fn a_store_revision_reads_a_port_file_the_watcher_saw_change() {
    let etcd = Etcd::start(1);
    let root = tempfile::tempdir().expect("tempdir");
    let v1 = push(root.path(), &etcd, 1);
    let settings = format!("{}[reload]\ndebounce_ms = 60000\n", etcd.store_toml(PREFIX, "h0", TTL));
    let h = Host::start(BIN, root.path(), "h0", &settings, &[("web0".into(), port_toml("web0", "10.1.0.1", &["sg-web"]))]);
    assert!(eventually(Duration::from_secs(20), || h.generation(BIN).is_some_and(|g| g >= v1)), "h0 never enforced v1:\n{}", log(&h));
    let published =
        || String::from_utf8_lossy(&etcd.ctl(&["get", &format!("{PREFIX}/hosts/h0/ports/web0"), "--print-value-only"]).stdout).into_owned();
    assert!(eventually(Duration::from_secs(10), || published().contains("10.1.0.1")), "{}", published());

    // The same size, a new address; the watcher's event arrives within
    // milliseconds, the file reload only after a minute.
    std::fs::write(h.dir.join("ports/web0.toml"), port_toml("web0", "10.1.0.2", &["sg-web"])).expect("web0");
    std::thread::sleep(Duration::from_millis(300));
    let v2 = push(root.path(), &etcd, 2);
    assert!(eventually(Duration::from_secs(20), || h.generation(BIN).is_some_and(|g| g >= v2)), "h0 never enforced v2:\n{}", log(&h));
    assert!(eventually(Duration::from_secs(10), || published().contains("10.1.0.2")), "still published: {}\n{}", published(), log(&h));
    assert!(!log(&h).contains("(file change)"), "the file reload ran early: the test shows nothing\n{}", log(&h));
}

#[test]
fn a_host_that_reconnects_after_a_push_shows_its_revision_only_once_it_enforces_it() {
    // d0 knows one member only, so killing that member cuts it off while
    // pushes go on through the others; w0 puts a web port in sg-web.
    let mut etcd = Etcd::start(3);
    let root = tempfile::tempdir().expect("tempdir");
    let r1 = push(root.path(), &etcd, 1);
    let w0 = Host::start(
        BIN,
        root.path(),
        "w0",
        &etcd.store_toml(PREFIX, "w0", TTL),
        &[("web0".into(), port_toml("web0", "10.1.0.1", &["sg-web"]))],
    );
    let d0 = Host::start(
        BIN,
        root.path(),
        "d0",
        &etcd.store_toml_on(PREFIX, "d0", TTL, &[0]),
        &[("db0".into(), port_toml("db0", "10.2.0.1", &["sg-db"]))],
    );
    for h in [&w0, &d0] {
        assert!(
            eventually(Duration::from_secs(20), || h.generation(BIN).is_some_and(|g| g >= r1)),
            "{} never at {r1}:\n{}",
            h.name,
            log(h)
        );
    }
    let web_seen = || d0.status(BIN).is_some_and(|v| v["store"]["remote_ports"] == 1);
    assert!(eventually(Duration::from_secs(10), web_seen), "d0 does not see web0");

    for k in 2..=6u16 {
        etcd.kill(0);
        let away = eventually(Duration::from_secs(20), || d0.status(BIN).is_some_and(|v| v["store"]["connected"] == false));
        assert!(away, "d0 does not notice its member is gone");
        // The member killed may have led: the push waits for a new leader.
        etcd.wait_healthy(Duration::from_secs(20));
        let rev = push(root.path(), &etcd, k);
        etcd.restart(0);
        // From the moment d0 shows `rev` (or later), it enforces version k:
        // a trace taken after the status can only be at that generation or
        // a newer one, and no newer push is made in this round.
        let t = std::time::Instant::now();
        let mut shown = None;
        while t.elapsed() < Duration::from_secs(30) {
            let g = d0.generation(BIN);
            let v = (1..=6).filter(|j| d0.trace_tcp(BIN, "db0", "10.1.0.1", 5000 + j) == "allow").collect::<Vec<u16>>();
            if g.is_some_and(|g| g >= rev) {
                assert_eq!(v, vec![k], "round {k}: d0 shows generation {g:?} (push at {rev}) while enforcing {v:?}:\n{}", log(&d0));
                let since = *shown.get_or_insert(std::time::Instant::now());
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
        }
        assert!(shown.is_some(), "round {k}: d0 never reached {rev}:\n{}", log(&d0));
        etcd.wait_healthy(Duration::from_secs(20));
    }
}
