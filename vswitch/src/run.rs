//! `sgswitch run`: the switch. A control thread (the caller's) loads,
//! validates and compiles configurations and publishes them; a poll loop,
//! pinned to its core, moves frames between the ports' and the uplink's
//! AF_XDP sockets through the pipeline.
//!
//! - **Reload**: a change under the configuration directory (inotify through
//!   the `notify` crate, debounced 200 ms) or SIGHUP loads the directory
//!   again. A valid configuration is compiled off the hot path and published
//!   with one atomic swap ([`arc_swap`]); the loop picks it up between
//!   batches, opens the sockets of new ports and closes those of removed
//!   ones, and flushes a removed port's flows. An invalid one is refused
//!   with its file:line messages on stderr; the running one stays.
//! - **Shutdown**: SIGINT or SIGTERM stops the loop; dropping the sockets
//!   detaches the XDP programs libxdp attached, so nothing is left on the
//!   interfaces.
//! - **One poll loop** runs on the first core of `[datapath] cores`; the
//!   others are not used yet (the pipeline and conntrack are per-loop, ready
//!   for more loops; the hand-over between loops is not built).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sgswitch_config::{Config, Host, load_dir};
use sgswitch_conntrack::{FragSettings, Now, Zone};
use xsk_rs::FrameDesc;

use crate::pipeline::{Action, Counters, Outcome, Pipeline, REASONS, Reason, Source, To, conntrack_settings};
use crate::plan::{Plan, Zones};
use crate::xdp::{Memory, Socket};

/// Frames taken from one rx ring at a time.
const BATCH: usize = 64;
/// Free frames kept back from the fill rings for copies (floods).
const KEEP_FOR_COPIES: usize = 256;

/// A configuration ready to publish, with the zones of ports that went away.
#[derive(Debug)]
pub struct Published {
    pub plan: Plan,
    pub gone: Vec<Zone>,
}

/// Loads `dir` into a plan, keeping zones stable across loads.
///
/// # Errors
/// The configuration's file:line messages.
pub fn load(dir: &Path, zones: &mut Zones, generation: u32) -> Result<Published, String> {
    let cfg: Config = load_dir(dir).map_err(|e| e.to_string())?;
    let (plan, gone) = Plan::build(cfg, zones, generation)?;
    Ok(Published { plan, gone })
}

/// What the loop reports back for the shutdown summary.
#[derive(Debug, Default)]
pub struct Report {
    pub counters: Option<Counters>,
    pub rule_hits: HashMap<(String, String, u16), u64>,
    pub tx_dropped: u64,
    /// (zone, port id) of the last configuration.
    pub ports: Vec<(Zone, String)>,
}

/// Runs the switch on `dir` until SIGINT or SIGTERM.
///
/// # Errors
/// The configuration is invalid, the uplink is not configured, or a socket
/// cannot be opened (the message names the interface and the reason).
pub fn run(dir: &Path) -> Result<Report, String> {
    crate::xdp::quiet_libraries();
    let mut zones = Zones::default();
    let first = load(dir, &mut zones, 1)?;
    let host = first.plan.policy().config().host.clone();
    let uplink = host.uplink_interface.clone().ok_or("host.toml: [uplink] interface is required to run the datapath")?;
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("installing signal handlers: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).map_err(|e| format!("installing signal handlers: {e}"))?;

    let published = Arc::new(ArcSwap::from_pointee(first));
    let generation = Arc::new(AtomicU64::new(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let core = host.datapath.cores.first().copied().unwrap_or(0);
    if host.datapath.cores.len() > 1 {
        eprintln!("sgswitch: one poll loop runs, on core {core}; more loops are not built yet (cores = {:?})", host.datapath.cores);
    }
    let worker = {
        let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
        std::thread::Builder::new()
            .name(format!("sgswitch-loop-{core}"))
            .spawn(move || poll_loop(&host, &uplink, core, &published, &stop, &ready_tx))
            .map_err(|e| format!("starting the poll loop: {e}"))?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = worker.join();
            return Err(e);
        }
        Err(_) => return Err("the poll loop ended before it was ready".into()),
    }
    eprintln!("sgswitch: running on {} (generation 1); SIGHUP or a file change reloads, SIGINT/SIGTERM stops", dir.display());
    watch(dir, &published, &mut zones, &generation, &stop, &hup);
    worker.join().map_err(|_| "the poll loop panicked".to_owned())?
}

/// The control thread: reloads on file changes (debounced) and SIGHUP until
/// told to stop.
fn watch(dir: &Path, published: &ArcSwap<Published>, zones: &mut Zones, generation: &AtomicU64, stop: &AtomicBool, hup: &AtomicBool) {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // Configuration files only (editors' swap files and logs beside
        // them do not count).
        if e.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| p.extension().is_some_and(|x| x == "toml"))) {
            let _ = tx.send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                eprintln!("sgswitch: watching {} failed ({e}); reload with SIGHUP", dir.display());
                None
            }
        },
        Err(e) => {
            eprintln!("sgswitch: cannot watch files ({e}); reload with SIGHUP");
            None
        }
    };
    let mut due: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            due = Some(Instant::now() + Duration::from_millis(200));
        }
        let now = Instant::now();
        let signalled = hup.swap(false, Ordering::Relaxed);
        if signalled || due.is_some_and(|d| now >= d) {
            due = None;
            reload(dir, published, zones, generation, if signalled { "SIGHUP" } else { "file change" });
        }
    }
}

/// Loads, validates, compiles and publishes; logs the outcome.
pub fn reload(dir: &Path, published: &ArcSwap<Published>, zones: &mut Zones, generation: &AtomicU64, why: &str) {
    let next = generation.load(Ordering::Relaxed) + 1;
    let t = Instant::now();
    match load(dir, zones, u32::try_from(next).unwrap_or(u32::MAX)) {
        Ok(p) => {
            generation.store(next, Ordering::Relaxed);
            let ports = p.plan.ports.len();
            published.store(Arc::new(p));
            eprintln!(
                "sgswitch: reloaded ({why}): generation {next}, {ports} ports, compiled in {:.1} ms",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        Err(e) => {
            eprintln!("sgswitch: reload ({why}) refused; the running configuration stays in force:\n{e}");
        }
    }
}

/// A socket and where its frames come from.
struct Port {
    sock: Socket,
    src: Source,
    pending: Vec<FrameDesc>,
}

fn open(mem: &Memory, host: &Host, interface: &str) -> Result<Socket, String> {
    let s = mem.bind(interface, 0, host.datapath.mode, host.datapath.zero_copy)?;
    eprintln!("sgswitch: {interface}: AF_XDP socket on queue 0, {}", s.mode.describe());
    Ok(s)
}

/// Opens the sockets of the plan's ports that have none, closes those of
/// ports that went away, and maps the plan's port indexes to sockets.
fn reconcile(
    plan: &Plan,
    mem: &Memory,
    host: &Host,
    socks: &mut Vec<Port>,
    by_port: &mut Vec<Option<usize>>,
    cap: usize,
) -> Result<(), String> {
    let wanted: Vec<Option<&str>> = plan.ports.iter().map(|p| p.interface.as_deref()).collect();
    // Keep the uplink (it stays first) and ports still configured.
    socks.retain(|s| {
        let keep = s.src == Source::Uplink || wanted.contains(&Some(s.sock.interface.as_str()));
        if !keep {
            eprintln!("sgswitch: {}: port removed, socket closed", s.sock.interface);
        }
        keep
    });
    by_port.clear();
    for (p, w) in wanted.iter().enumerate() {
        let Some(name) = w else {
            by_port.push(None);
            continue;
        };
        let at = match socks.iter().position(|s| s.sock.interface == *name) {
            Some(at) => at,
            None => {
                let sock = open(mem, host, name)?;
                socks.push(Port { sock, src: Source::Port(p), pending: Vec::with_capacity(cap) });
                socks.len() - 1
            }
        };
        socks[at].src = Source::Port(p);
        by_port.push(Some(at));
    }
    Ok(())
}

/// The poll loop: owns the UMEM, the sockets and the pipeline.
fn poll_loop(
    host: &Host,
    uplink: &str,
    core: usize,
    published: &ArcSwap<Published>,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<Report, String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("sgswitch: could not pin the poll loop to core {core}; running unpinned");
    }
    let setup = || -> Result<(Memory, Vec<Port>), String> {
        let mem = Memory::new(host.datapath.frames, host.datapath.ring_size)?;
        let cap = host.datapath.frames as usize;
        let sock = open(&mem, host, uplink)?;
        Ok((mem, vec![Port { sock, src: Source::Uplink, pending: Vec::with_capacity(cap) }]))
    };
    let (mut mem, mut socks) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let cap = host.datapath.frames as usize;
    let mut by_port: Vec<Option<usize>> = Vec::new();
    let mut current = published.load_full();
    if let Err(e) = reconcile(&current.plan, &mem, host, &mut socks, &mut by_port, cap) {
        let _ = ready.send(Err(e.clone()));
        return Err(e);
    }
    let _ = ready.send(Ok(()));
    let mut pipe: Pipeline<FrameDesc> = Pipeline::new(conntrack_settings(host, seed()), FragSettings::default());
    let mut report = Report::default();
    fold(&mut report, &current.plan, pipe.adopt(&current.plan));
    let start = Instant::now();
    let mut rx = vec![FrameDesc::default(); BATCH];
    let mut scratch = vec![FrameDesc::default(); host.datapath.ring_size as usize];
    let none = Outcome { action: Action::Drop, reason: Reason::Default, port: None, direction: sgswitch_config::Direction::Ingress };
    let mut outs = [none; BATCH];
    while !stop.load(Ordering::Relaxed) {
        let latest = published.load();
        if !Arc::ptr_eq(&latest, &current) {
            let next = arc_swap::Guard::into_inner(latest);
            // The old plan's rule hits are named by the old plan.
            let old = pipe.adopt(&next.plan);
            fold(&mut report, &current.plan, old);
            current = next;
            for &z in &current.gone {
                pipe.conntrack.flush(Some(z));
            }
            if let Err(e) = reconcile(&current.plan, &mem, host, &mut socks, &mut by_port, cap) {
                eprintln!("sgswitch: {e}; the port stays without a socket until the next reload");
            }
        }
        let plan = &current.plan;
        let now = Now(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut busy = false;
        // Each socket's share of the UMEM for its fill ring; the rest is
        // for frames in flight and copies.
        let share = u32::try_from((host.datapath.frames as usize).saturating_sub(KEEP_FOR_COPIES) / (2 * socks.len())).unwrap_or(0);
        for s in 0..socks.len() {
            socks[s].sock.reclaim(&mut mem.free, &mut scratch);
            socks[s].sock.refill(&mut mem.free, share);
            let n = socks[s].sock.receive(&mut rx);
            if n == 0 {
                continue;
            }
            busy = true;
            let src = socks[s].src;
            {
                let items: [(Source, &[u8], FrameDesc); BATCH] =
                    std::array::from_fn(|i| (src, if i < n { mem.data(&rx[i]) } else { &[][..] }, rx[i]));
                pipe.process_batch(plan, &items[..n], now, &mut outs[..n]);
            }
            for i in 0..n {
                dispatch(&mut mem, &mut socks, &by_port, s, rx[i], &outs[i]);
            }
            while let Some((d, o)) = pipe.take_released().next() {
                dispatch(&mut mem, &mut socks, &by_port, usize::MAX, d, &o);
            }
        }
        for p in &mut socks {
            let sent = p.sock.transmit(&p.pending);
            report.tx_dropped += (p.pending.len() - sent) as u64;
            mem.free.extend_from_slice(&p.pending[sent..]);
            p.pending.clear();
        }
        pipe.tick(plan, now);
        while let Some((d, o)) = pipe.take_released().next() {
            dispatch(&mut mem, &mut socks, &by_port, usize::MAX, d, &o);
        }
        if !busy {
            if host.datapath.busy_poll {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    report.ports = current.plan.ports.iter().map(|p| (p.zone, p.id.to_string())).collect();
    fold(&mut report, &current.plan, Some((current.plan.generation, pipe.counters.rule_hits.clone())));
    report.counters = Some(pipe.counters.clone());
    // Sockets close here, detaching the XDP programs.
    drop(socks);
    Ok(report)
}

/// Adds a plan's rule hits to the report by rule name.
fn fold(report: &mut Report, plan: &Plan, hits: Option<(u32, Vec<u64>)>) {
    let Some((generation, hits)) = hits else { return };
    if generation != plan.generation {
        return;
    }
    let policy = plan.policy();
    for (gi, g) in policy.config().groups.iter().enumerate() {
        for d in sgswitch_config::Direction::ALL {
            for (i, _) in g.rules(d).iter().enumerate() {
                let r = policy.rule_ref(u16::try_from(gi).unwrap_or(u16::MAX), d, i);
                let n = hits.get(plan.rule_slot(r)).copied().unwrap_or(0);
                if n > 0 {
                    *report.rule_hits.entry((g.id.clone(), d.as_str().to_owned(), r.index)).or_default() += n;
                }
            }
        }
    }
}

/// Sends a decided frame on its way: its descriptor to the target socket's
/// tx batch, copies for a flood, or back to the free list.
fn dispatch(mem: &mut Memory, socks: &mut [Port], by_port: &[Option<usize>], from: usize, d: FrameDesc, o: &Outcome) {
    match o.action {
        Action::Forward(To::Port(q)) => match by_port.get(q).copied().flatten() {
            Some(t) if t != from => socks[t].pending.push(d),
            _ => mem.free.push(d),
        },
        Action::Forward(To::Uplink) if from != 0 => socks[0].pending.push(d),
        Action::Forward(To::Flood { except, uplink }) => {
            let mut buf = [0u8; crate::xdp::FRAME_SIZE as usize];
            let bytes = mem.data(&d);
            let len = bytes.len().min(buf.len());
            buf[..len].copy_from_slice(&bytes[..len]);
            for (t, p) in socks.iter_mut().enumerate() {
                let skip = t == from || (t == 0 && !uplink) || matches!(p.src, Source::Port(q) if Some(q) == except);
                if !skip && let Some(c) = mem.copy_in(&buf[..len]) {
                    p.pending.push(c);
                }
            }
            mem.free.push(d);
        }
        Action::Held => {}
        _ => mem.free.push(d),
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()).rotate_left(32)
}

/// The shutdown summary: per port and direction, packets by action and
/// reason; rule hits by rule.
pub fn summary(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let Some(c) = &r.counters else { return s };
    let _ = writeln!(s, "counters (packets):");
    for (slot, pc) in c.ports.iter().enumerate() {
        let name = match slot.checked_sub(1) {
            None => "(no port)".to_owned(),
            Some(z) => r.ports.iter().find(|(zone, _)| usize::from(*zone) == z).map_or(format!("zone {z}"), |(_, id)| id.clone()),
        };
        for (di, d) in ["ingress", "egress"].iter().enumerate() {
            for (fi, f) in ["dropped", "forwarded"].iter().enumerate() {
                let parts: Vec<String> =
                    REASONS.iter().zip(pc.by[di][fi]).filter(|(_, (n, _))| *n > 0).map(|(r, (n, _))| format!("{r}={n}")).collect();
                if !parts.is_empty() {
                    let _ = writeln!(s, "  {name} {d} {f}: {}", parts.join(" "));
                }
            }
        }
    }
    let mut hits: Vec<_> = r.rule_hits.iter().collect();
    hits.sort();
    for ((g, d, i), n) in hits {
        let _ = writeln!(s, "  rule {g}/{d}/{i}: {n} hits");
    }
    if r.tx_dropped > 0 {
        let _ = writeln!(s, "  tx ring full: {} frames dropped", r.tx_dropped);
    }
    s
}
