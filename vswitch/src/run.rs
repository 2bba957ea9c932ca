//! `sgswitch run`: the switch. A control thread (the caller's) loads,
//! validates and compiles configurations and publishes them; poll loops,
//! each pinned to its core, move frames between the ports' and the uplink's
//! AF_XDP sockets through the pipeline. Beside them: the metrics endpoint
//! ([`crate::metrics`]), the control socket ([`crate::control`]) and the
//! flow-log writer ([`crate::flowlog`]), each its own thread that reads the
//! loop's counters and never makes the loop wait.
//!
//! - **Reload**: a change under the configuration directory (inotify through
//!   the `notify` crate, debounced 200 ms), SIGHUP or `sgswitch ctl reload`
//!   loads the directory again. A valid configuration is compiled off the
//!   hot path and published with one atomic swap ([`arc_swap`]); the loop
//!   picks it up between batches, opens the sockets of new ports and closes
//!   those of removed ones, and flushes a removed port's flows. An invalid
//!   one is refused with its file:line messages in the log; the running one
//!   stays. `[metrics]`, `[control]`, `[flow_log]` and `[datapath]` are read
//!   at start only.
//! - **Shutdown**: SIGINT or SIGTERM stops the loops; dropping the sockets
//!   detaches the XDP programs libxdp attached, so nothing is left on the
//!   interfaces; the control socket's file is removed.
//! - **Poll loops**: one per core of `[datapath] cores`, pinned. Loop `i`
//!   owns the ports whose conntrack zone is `i` modulo the number of loops
//!   (zones are stable per port id, so a port stays with its loop across
//!   reloads), their sockets and their flows. The uplink's receive queues are
//!   spread over the loops (queue `q` is loop `q` modulo the loops; loop 0
//!   has queue 0). A frame whose next stage or whose target socket belongs to
//!   another loop is copied into that loop's bounded inbox (a lock-free
//!   `ArrayQueue`): the sender's egress is judged where the frame arrived,
//!   the receiver's ingress in the receiver's loop. A full inbox drops the
//!   frame and counts it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use sgswitch_config::{Config, Host, load_dir};
use sgswitch_conntrack::{self as ct, FragSettings, Now, Tuple, Zone};
use tracing::{info, warn};
use xsk_rs::FrameDesc;

use crate::flowlog::{self, FlowLog};
use crate::pipeline::{Action, Outcome, Owner, Pipeline, REASONS, Reason, Source, To, conntrack_settings, owner_of};
use crate::plan::{Plan, PortIdx, Zones};
use crate::stats::{ControlStats, Counter, Counters, LinkState, LoopStats, RuleLabel, SocketStats};
use crate::xdp::{Memory, Socket};

/// Frames taken from one rx ring at a time.
const BATCH: usize = 64;
/// Free frames kept back from the fill rings for copies (floods).
const KEEP_FOR_COPIES: usize = 256;
/// How often a loop looks at its interfaces without a link event.
const LINK_CHECK_MS: u64 = 1000;
/// How often a loop copies the kernel's socket statistics and its
/// connection table's totals into its counters.
const STATS_EVERY_MS: u64 = 250;
/// Requests a loop takes from the control socket per iteration.
const REQUESTS_PER_ITERATION: usize = 4;
/// How long an idle loop (`busy_poll = false`) waits for its sockets to
/// receive before it looks at its inbox and timers again.
const IDLE_WAIT: Duration = Duration::from_micros(200);

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

/// A flow as the control socket lists it: its original tuple, state and
/// per-direction counts.
pub type FlowRow = (Tuple, ct::State, ct::Counters);

/// What the control socket asks of a poll loop (answered between batches).
#[derive(Debug)]
pub enum LoopRequest {
    /// The flows (of one zone, or all) among the table's entries `from..`
    /// [`SCAN_STEP`] on, up to `limit` of them; replies with them, how many
    /// there were, and where the next step starts (the table's end when it
    /// is done). A large table is listed in steps, one per request, so the
    /// loop never stops for long.
    Flows { zone: Option<Zone>, from: usize, limit: usize, reply: SyncSender<Step<Vec<FlowRow>>> },
    /// Removes the flows of one zone, or all, among the entries `from..`
    /// [`SCAN_STEP`] on; replies how many, and where the next step starts.
    Flush { zone: Option<Zone>, from: usize, reply: SyncSender<Step<()>> },
    /// The live entry of a flow, if any.
    Lookup { tuple: Tuple, reply: SyncSender<Option<(ct::State, ct::Counters)>> },
}

/// Entries of the connection table a loop looks at for one step of a
/// listing or a flush (a few hundred microseconds of work).
pub const SCAN_STEP: usize = 4096;

/// One step's answer: what it found, how many flows it counted, where the
/// next step starts, and the end.
#[derive(Debug)]
pub struct Step<T> {
    pub found: T,
    pub counted: usize,
    pub next: usize,
    pub end: usize,
}

/// Everything the switch's threads share.
#[derive(Debug)]
pub struct Shared {
    pub dir: PathBuf,
    /// `host.toml` as it was at start (the settings read once).
    pub host: Host,
    pub published: ArcSwap<Published>,
    zones: Mutex<Zones>,
    pub control: ControlStats,
    pub loops: Vec<Arc<LoopStats>>,
    pub requests: Vec<SyncSender<LoopRequest>>,
    /// Per loop: frames other loops hand over to it.
    inboxes: Vec<Arc<ArrayQueue<Parcel>>>,
    /// Per loop, when the flow log is on.
    pub flow_log: Vec<Arc<flowlog::Stats>>,
    /// Set by SIGINT/SIGTERM, or when the start fails: every thread ends.
    pub stop: Arc<AtomicBool>,
    /// To the reloader thread, which loads configurations one at a time.
    reloads: SyncSender<ReloadJob>,
    /// When the reload in progress started (ms on the loops' clock + 1), 0
    /// when none is.
    pub reloading_since: std::sync::atomic::AtomicU64,
    /// Link events seen (interfaces made, deleted or changed): the loops
    /// look at their interfaces again when it moves.
    pub link_events: std::sync::atomic::AtomicU64,
    /// Wall-clock time at start, and the same moment on the loops' clock.
    pub started: SystemTime,
    pub epoch: Instant,
}

impl Shared {
    /// Loads, validates, compiles and publishes `dir`; logs and counts the
    /// outcome. Serialised: the file watcher, SIGHUP and `ctl reload` may
    /// ask at once.
    ///
    /// # Errors
    /// The new configuration's messages; the running one stays.
    pub fn reload(&self, why: &str) -> Result<Reloaded, String> {
        let mut zones = self.zones.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = self.control.generation.load(Ordering::Relaxed) + 1;
        let t = Instant::now();
        match load(&self.dir, &mut zones, u32::try_from(next).unwrap_or(u32::MAX)) {
            Ok(p) => {
                let ports = p.plan.ports.len();
                let needs_restart = restart_needed(&self.host, &p.plan.policy().config().host);
                self.published.store(Arc::new(p));
                self.control.generation.store(next, Ordering::Relaxed);
                self.control.loaded_at_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                self.control.reloads_ok.fetch_add(1, Ordering::Relaxed);
                *self.control.needs_restart.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = needs_restart.clone();
                info!(
                    generation = next,
                    ports,
                    "reloaded ({why}): generation {next}, {ports} ports, compiled in {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
                if !needs_restart.is_empty() {
                    warn!(
                        "generation {next}: these settings of host.toml take effect at the next start, not now: {}",
                        needs_restart.join("; ")
                    );
                }
                Ok(Reloaded { generation: next, needs_restart })
            }
            Err(e) => {
                self.control.reloads_failed.fetch_add(1, Ordering::Relaxed);
                warn!("reload ({why}) refused; the running configuration stays in force:\n{e}");
                Err(e)
            }
        }
    }

    /// Asks the reloader for a reload and waits for its outcome, at most
    /// `wait`: a reload in progress is finished first.
    ///
    /// # Errors
    /// The new configuration's messages, or that the reload did not end in
    /// time (it goes on, and the log says how it ended).
    pub fn request_reload(&self, why: &str, wait: Duration) -> Result<Reloaded, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.reloads
            .try_send(ReloadJob { why: why.to_owned(), reply: Some(tx) })
            .map_err(|_| "reloads are queued already; try again when they are done".to_owned())?;
        rx.recv_timeout(wait).map_err(|_| {
            format!(
                "the reload did not finish within {} s (a slow or blocked file?); it goes on, and the log will say how it ended",
                wait.as_secs()
            )
        })?
    }

    /// Asks the reloader for a reload without waiting; one already queued
    /// and not started covers this one.
    fn queue_reload(&self, why: &str) {
        let _ = self.reloads.try_send(ReloadJob { why: why.to_owned(), reply: None });
    }

    /// Asks loop `i` and waits for the answer (at most two seconds).
    ///
    /// # Errors
    /// The loop is gone or did not answer in time.
    pub fn ask<T>(&self, i: usize, make: impl FnOnce(SyncSender<T>) -> LoopRequest) -> Result<T, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let q = self.requests.get(i).ok_or("no such poll loop")?;
        q.try_send(make(tx)).map_err(|_| format!("poll loop {i} is busy with other requests; try again"))?;
        rx.recv_timeout(Duration::from_secs(2)).map_err(|_| format!("poll loop {i} did not answer"))
    }
}

/// A reload to do, and who waits for its outcome.
#[derive(Debug)]
struct ReloadJob {
    why: String,
    reply: Option<SyncSender<Result<Reloaded, String>>>,
}

/// Reloads queued at most: a file change, a SIGHUP and a few `ctl reload`s.
const RELOAD_QUEUE: usize = 4;

/// The reloader: loads, compiles and publishes one configuration at a time,
/// off the control socket's and the watcher's threads, so that a slow or
/// blocked load holds up nothing but the reloads queued behind it.
fn reloader(shared: &Shared, jobs: &Receiver<ReloadJob>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Ok(job) = jobs.recv_timeout(Duration::from_millis(100)) else { continue };
        let since = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        shared.reloading_since.store(since, Ordering::Relaxed);
        let r = shared.reload(&job.why);
        shared.reloading_since.store(0, Ordering::Relaxed);
        if let Some(reply) = job.reply {
            let _ = reply.try_send(r);
        }
    }
}

/// What a reload applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    /// Settings the new `host.toml` changes that the running switch keeps
    /// until it restarts, each as `<setting> = <new> (running <old>)`.
    pub needs_restart: Vec<String>,
}

/// The settings of `next` that differ from those the switch started with
/// (`running`) and that only a restart applies: the uplink, `[datapath]`
/// (cores, sockets and UMEM are built at start), the metrics address and
/// control socket (bound at start), `[flow_log]` (its writer is opened at
/// start), `[reload]` (the watcher is set up at start) and the conntrack
/// `capacity` (each loop's table is allocated at start). Everything else
/// applies on reload.
pub fn restart_needed(running: &Host, next: &Host) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |name: &str, old: String, new: String| {
        if old != new {
            out.push(format!("{name} = {new} (running {old})"));
        }
    };
    let (a, b) = (running, next);
    diff("[uplink] interface", format!("{:?}", a.uplink_interface), format!("{:?}", b.uplink_interface));
    let (d, e) = (&a.datapath, &b.datapath);
    diff("[datapath] cores", format!("{:?}", d.cores), format!("{:?}", e.cores));
    diff("[datapath] mode", format!("{:?}", d.mode).to_lowercase(), format!("{:?}", e.mode).to_lowercase());
    diff("[datapath] zero_copy", format!("{:?}", d.zero_copy).to_lowercase(), format!("{:?}", e.zero_copy).to_lowercase());
    diff("[datapath] busy_poll", d.busy_poll.to_string(), e.busy_poll.to_string());
    diff("[datapath] frames", d.frames.to_string(), e.frames.to_string());
    diff("[datapath] ring_size", d.ring_size.to_string(), e.ring_size.to_string());
    diff("[metrics] listen", a.metrics_listen.to_string(), b.metrics_listen.to_string());
    diff("[control] socket", a.control_socket.display().to_string(), b.control_socket.display().to_string());
    diff("[flow_log]", format!("{:?}", a.flow_log), format!("{:?}", b.flow_log));
    diff("[reload]", format!("{:?}", a.reload), format!("{:?}", b.reload));
    diff("[conntrack] capacity", a.conntrack.capacity.to_string(), b.conntrack.capacity.to_string());
    out
}

/// Totals over the poll loops, for the metrics endpoint, the control socket
/// and the shutdown summary.
impl Shared {
    /// Packets and bytes of one counter cell (`slot` is the zone + 1, 0 for
    /// traffic of no port; `direction`, `forwarded` and `reason` index
    /// [`crate::stats::PortCounters::by`]).
    pub fn cell(&self, slot: usize, direction: usize, forwarded: usize, reason: usize) -> (u64, u64) {
        self.loops.iter().fold((0, 0), |(p, b), l| {
            let c = &l.pipeline.ports[slot].by[direction][forwarded][reason];
            (p + c.packets.get(), b + c.bytes.get())
        })
    }

    /// Every rule's hits, current plan and earlier ones.
    pub fn rule_totals(&self) -> std::collections::BTreeMap<RuleLabel, u64> {
        let mut hits = std::collections::BTreeMap::new();
        for l in &self.loops {
            for (label, n) in l.pipeline.rules.load().totals() {
                *hits.entry(label).or_insert(0) += n;
            }
        }
        hits
    }

    /// Tracked flows of a zone.
    pub fn flows(&self, zone: Zone) -> u64 {
        self.loops.iter().map(|l| l.conntrack_entries.get(usize::from(zone)).map_or(0, |e| u64::from(e.load(Ordering::Relaxed)))).sum()
    }

    /// The loops that hold the flows of `zone` (its owner), or of every
    /// zone.
    pub fn loops_for(&self, zone: Option<Zone>) -> std::ops::Range<usize> {
        match zone {
            Some(z) => {
                let o = owner_of(z, self.loops.len());
                o..o + 1
            }
            None => 0..self.loops.len(),
        }
    }

    /// Every loop's sockets.
    pub fn sockets(&self) -> Vec<Arc<SocketStats>> {
        self.loops.iter().flat_map(|l| l.sockets.load().iter().map(Arc::clone).collect::<Vec<_>>()).collect()
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs the switch on `dir` until SIGINT or SIGTERM; returns the shutdown
/// summary.
///
/// # Errors
/// The configuration is invalid, the uplink is not configured, a socket
/// cannot be opened (the message names the interface and the reason), or
/// the metrics address or control socket cannot be bound.
pub fn run(dir: &Path) -> Result<String, String> {
    crate::xdp::quiet_libraries();
    crate::xdp::raise_open_files();
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

    // Bind the operator's endpoints first: a taken address fails the start
    // before any interface is touched.
    let metrics = crate::metrics::bind(host.metrics_listen)?;
    let control = crate::control::bind(&host.control_socket)?;

    let cores = if host.datapath.cores.is_empty() { vec![0] } else { host.datapath.cores.clone() };
    let n = cores.len();
    if let Some(avail) = crate::pipeline::meminfo("MemAvailable") {
        crate::pipeline::check_conntrack_memory(&host, n, avail, "MemAvailable")?;
    }
    let stats: Vec<Arc<LoopStats>> =
        cores.iter().enumerate().map(|(i, &c)| Arc::new(LoopStats::new(i, c, Arc::new(Counters::default())))).collect();
    let (requests, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| std::sync::mpsc::sync_channel::<LoopRequest>(8)).unzip();
    let (logs, writer): (Vec<Option<FlowLog>>, _) = if host.flow_log.enabled {
        let (logs, w) = FlowLog::per_loop(&host.flow_log, n);
        (logs.into_iter().map(Some).collect(), Some(w))
    } else {
        ((0..n).map(|_| None).collect(), None)
    };
    let (reload_tx, reload_rx) = std::sync::mpsc::sync_channel::<ReloadJob>(RELOAD_QUEUE);
    let shared = Arc::new(Shared {
        reloads: reload_tx,
        reloading_since: std::sync::atomic::AtomicU64::new(0),
        link_events: std::sync::atomic::AtomicU64::new(0),
        dir: dir.to_owned(),
        host: host.clone(),
        published: ArcSwap::from_pointee(first),
        zones: Mutex::new(zones),
        control: ControlStats::default(),
        loops: stats.clone(),
        requests,
        inboxes: (0..n).map(|_| Arc::new(ArrayQueue::new(HANDOVER))).collect(),
        flow_log: logs.iter().flatten().map(|l| Arc::clone(l.stats())).collect(),
        stop: Arc::clone(&stop),
        started: SystemTime::now(),
        epoch: Instant::now(),
    });
    shared.control.generation.store(1, Ordering::Relaxed);
    shared.control.loaded_at_ms.store(unix_ms(shared.started), Ordering::Relaxed);

    let finish = |shared: &Shared| {
        shared.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&shared.host.control_socket);
    };
    let writer = match writer.map(|w| w.start(Arc::clone(&shared))).transpose() {
        Ok(w) => w,
        Err(e) => {
            finish(&shared);
            return Err(e);
        }
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut workers = Vec::with_capacity(n);
    for ((stats, log), requests) in stats.into_iter().zip(logs).zip(receivers) {
        let (mine, uplink, ready) = (Arc::clone(&shared), uplink.clone(), ready_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sgswitch-loop-{}", stats.index))
            .spawn(move || poll_loop(&mine, &uplink, &stats, log, &requests, &ready));
        match spawned {
            Ok(w) => workers.push(w),
            Err(e) => {
                finish(&shared);
                return Err(format!("starting poll loop {}: {e}", workers.len()));
            }
        }
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert_with(|| "a poll loop ended before it was ready".to_owned());
            }
        }
    }
    if let Some(e) = failed {
        finish(&shared);
        for w in workers {
            let _ = w.join();
        }
        return Err(e);
    }
    let threads = [crate::metrics::serve(metrics, Arc::clone(&shared)), crate::control::serve(control, Arc::clone(&shared))];
    // Link events prompt the loops to look at their interfaces (a VM's tap
    // deleted and made again when it restarts); without them, they look
    // once a second.
    {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("sgswitch-links".into()).spawn(move || {
            if let Err(e) = crate::xdp::watch_links(&shared.stop, &shared.link_events) {
                warn!("cannot watch link events ({e}); interfaces are looked at once a second");
            }
        });
        if let Err(e) = spawned {
            warn!("cannot watch link events ({e}); interfaces are looked at once a second");
        }
    }
    // The reloader is not joined at exit: a load blocked in a read must not
    // keep the switch from stopping.
    {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("sgswitch-reload".into()).spawn(move || reloader(&shared, &reload_rx));
        if let Err(e) = spawned {
            warn!("cannot start the reloader ({e}); the configuration will not be reloaded");
        }
    }
    info!(
        metrics = %host.metrics_listen,
        control = %host.control_socket.display(),
        loops = n,
        "running on {} (generation 1, {n} poll loop{} on cores {cores:?}); SIGHUP or a file change reloads, SIGINT/SIGTERM stops",
        dir.display(),
        if n == 1 { "" } else { "s" }
    );
    watch(&shared, &hup);
    // Stopping: the loops end within an idle wait and close their sockets
    // (detaching the XDP programs); the endpoints' threads within a tenth
    // of a second. Whatever is stuck after STOP_WITHIN (a load blocked in
    // a read) does not hold the exit.
    watchdog(STOP_WITHIN);
    let mut result = Ok(());
    for w in workers {
        let r = w.join().map_err(|_| "a poll loop panicked".to_owned()).and_then(|r| r);
        result = result.and(r);
    }
    finish(&shared);
    let deadline = Instant::now() + Duration::from_secs(2);
    for t in threads.into_iter().flatten().chain(writer) {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    result.map(|()| summary(&shared))
}

/// How long the switch takes at most to exit after SIGINT or SIGTERM.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

/// Ends the process with status 2 if it is still running `after` from now:
/// the last resort of a stop that something holds up. The next start
/// removes any XDP program left behind.
fn watchdog(after: Duration) {
    let _ = std::thread::Builder::new().name("sgswitch-stop".into()).spawn(move || {
        std::thread::sleep(after);
        eprintln!("sgswitch: did not stop within {} s of the signal; exiting", after.as_secs());
        std::process::exit(2);
    });
}

/// The size and modification time of every configuration file, in a fixed
/// order.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The [`Fingerprint`] of `dir` (`host.toml` and the `.toml` files of its
/// folders): two equal fingerprints a debounce interval apart mean nobody
/// is writing.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut add = |p: PathBuf| {
        let m = std::fs::metadata(&p).ok();
        out.push((p, m.as_ref().map_or(0, std::fs::Metadata::len), m.and_then(|m| m.modified().ok())));
    };
    add(dir.join("host.toml"));
    for folder in ["ports", "groups", "prefix-lists"] {
        let Ok(rd) = std::fs::read_dir(dir.join(folder)) else { continue };
        let mut files: Vec<PathBuf> =
            rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        files.sort();
        files.into_iter().for_each(&mut add);
    }
    out
}

/// The control thread: reloads on SIGHUP, and on file changes once the
/// files have stopped changing (`[reload] watch`, `debounce_ms`), until
/// told to stop.
fn watch(shared: &Shared, hup: &AtomicBool) {
    use notify::Watcher;
    let dir = &shared.dir;
    let (tx, rx) = std::sync::mpsc::channel();
    let debounce = Duration::from_millis(u64::from(shared.host.reload.debounce_ms));
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // Configuration files only (editors' swap files and logs beside
        // them do not count).
        if e.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| p.extension().is_some_and(|x| x == "toml"))) {
            let _ = tx.send(());
        }
    });
    let _watcher = if shared.host.reload.watch {
        match watcher {
            Ok(mut w) => match w.watch(dir, notify::RecursiveMode::Recursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    warn!("watching {} failed ({e}); reload with SIGHUP or `sgswitch ctl reload`", dir.display());
                    None
                }
            },
            Err(e) => {
                warn!("cannot watch files ({e}); reload with SIGHUP or `sgswitch ctl reload`");
                None
            }
        }
    } else {
        None
    };
    // A change is applied once the files are unchanged (sizes and
    // modification times) for `debounce`: a file caught half-written by a
    // writer that pauses waits for the rest.
    let mut due: Option<(Instant, Fingerprint)> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
            while rx.try_recv().is_ok() {}
            due = Some((Instant::now() + debounce, fingerprint(dir)));
        }
        let now = Instant::now();
        if hup.swap(false, Ordering::Relaxed) {
            shared.queue_reload("SIGHUP");
        }
        if let Some((at, before)) = due.take() {
            if now < at {
                due = Some((at, before));
            } else {
                let after = fingerprint(dir);
                if after == before {
                    shared.queue_reload("file change");
                } else {
                    due = Some((now + debounce, after));
                }
            }
        }
    }
}

/// A socket, where its frames come from, and its counters.
struct Port {
    sock: Socket,
    src: Source,
    pending: Vec<FrameDesc>,
    stats: Arc<SocketStats>,
}

impl Port {
    /// The socket on queue 0 is its interface's primary: unicast to the
    /// interface and floods go out there, once.
    fn primary(&self) -> bool {
        self.sock.queue == 0
    }
}

fn open(mem: &mut Memory, host: &Host, interface: &str, queue: u32, src: Source, cap: usize) -> Result<Port, String> {
    let sock = mem.bind(interface, queue, host.datapath.mode, host.datapath.zero_copy)?;
    info!(interface, queue, mode = %sock.mode.describe(), "{interface}: AF_XDP socket on queue {queue}, {}", sock.mode.describe());
    let stats = Arc::new(SocketStats {
        interface: interface.to_owned(),
        queue: sock.queue,
        native: sock.mode.native,
        zero_copy: sock.mode.zero_copy,
        kernel: Default::default(),
        tx_full: Counter::default(),
    });
    Ok(Port { sock, src, pending: Vec::with_capacity(cap), stats })
}

/// A loop's I/O: its UMEM, its sockets (the uplink's first, by queue),
/// which of them is each plan port's, and the interfaces it could not open
/// a socket on, with why.
struct Io {
    mem: Memory,
    socks: Vec<Port>,
    by_port: Vec<Option<usize>>,
    down: Vec<(String, String)>,
}

/// The link state of this loop's interfaces as last logged: `None` up,
/// `Some(reason)` down. A change is logged once.
type LinkLog = std::collections::HashMap<String, Option<String>>;

impl Io {
    fn new(host: &Host) -> Result<Io, String> {
        Ok(Io {
            mem: Memory::new(host.datapath.frames, host.datapath.ring_size)?,
            socks: Vec::new(),
            by_port: Vec::new(),
            down: Vec::new(),
        })
    }

    /// Opens the sockets this loop should have and has not: its share of
    /// the uplink's queues (queue q is loop q's, modulo the loops; loop 0
    /// has queue 0, the primary) and every queue of the plan's ports it
    /// owns; closes those of ports that went away (or are another loop's);
    /// maps the plan's ports to sockets. An interface that cannot be opened
    /// is recorded as down, with the reason; with `strict` (at start), a
    /// failure on the uplink is an error.
    fn connect(&mut self, plan: &Plan, host: &Host, me: Owner, uplink: &str, strict: bool) -> Result<(), String> {
        let cap = host.datapath.frames as usize;
        self.down.clear();
        let queues: Vec<u32> = (0..crate::xdp::rx_queues(uplink)).filter(|&q| q as usize % me.loops == me.index).collect();
        let mut at = 0;
        for queue in queues {
            if self.socks.iter().any(|s| s.src == Source::Uplink && s.sock.queue == queue) {
                at += 1;
                continue;
            }
            match open(&mut self.mem, host, uplink, queue, Source::Uplink, cap) {
                Ok(p) => {
                    self.socks.insert(at, p);
                    at += 1;
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    self.down.push((uplink.to_owned(), e));
                    break;
                }
            }
        }
        let wanted: Vec<Option<&str>> = plan.ports.iter().map(|p| p.interface.as_deref().filter(|_| me.owns(p.zone))).collect();
        // Keep the uplink and the ports still configured here.
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.socks.len() {
            let s = &self.socks[i];
            if s.src == Source::Uplink || wanted.contains(&Some(s.sock.interface.as_str())) {
                i += 1;
            } else {
                info!(interface = %s.sock.interface, "{}: port removed, socket closed", s.sock.interface);
                gone.push(self.socks.remove(i));
            }
        }
        for p in gone {
            self.close(p);
        }
        self.by_port.clear();
        for (p, w) in (0..).zip(wanted) {
            self.by_port.push(None);
            let Some(name) = w else { continue };
            // Every receive queue of the port's interface; all in this loop,
            // which owns the port's zone.
            for queue in 0..crate::xdp::rx_queues(name) {
                let at = match self.socks.iter().position(|s| s.sock.interface == *name && s.sock.queue == queue) {
                    Some(at) => at,
                    None => match open(&mut self.mem, host, name, queue, Source::Port(p), cap) {
                        Ok(port) => {
                            self.socks.push(port);
                            self.socks.len() - 1
                        }
                        Err(e) => {
                            self.down.push((name.to_owned(), e));
                            break;
                        }
                    },
                };
                self.socks[at].src = Source::Port(p);
                if queue == 0 {
                    self.by_port[usize::from(p)] = Some(at);
                }
            }
        }
        Ok(())
    }

    /// Closes a socket: its pending frames and those its rings held go
    /// back to the free list. Returns whether the UMEM must be made anew.
    fn close(&mut self, mut p: Port) -> bool {
        self.mem.free.append(&mut p.pending);
        self.mem.forget(p.sock)
    }

    /// Closes the sockets whose interface was deleted (or deleted and made
    /// again: another index under the name); returns whether any was. If
    /// one of them carried the UMEM's registration, every socket is closed
    /// and the UMEM made anew (then frames the pipeline holds are of the
    /// old one: `forget_held`).
    fn unlink_gone(&mut self, host: &Host, forget_held: impl FnOnce()) -> Result<bool, String> {
        let (mut i, before) = (0, self.socks.len());
        let mut rebuild = false;
        while i < self.socks.len() {
            let s = &self.socks[i].sock;
            if crate::xdp::ifindex(&s.interface) == s.ifindex {
                i += 1;
                continue;
            }
            let p = self.socks.remove(i);
            rebuild |= self.close(p);
        }
        if rebuild {
            self.socks.clear();
            self.by_port.clear();
            forget_held();
            self.mem = Memory::new(host.datapath.frames, host.datapath.ring_size)?;
        }
        Ok(self.socks.len() != before)
    }

    /// Logs each interface whose state changed since `log` last saw it, and
    /// the state of all of them for status and metrics.
    fn report(&self, plan: &Plan, me: Owner, uplink: &str, log: &mut LinkLog) -> Vec<LinkState> {
        let mut states = Vec::new();
        let mut names: Vec<(&str, Option<&str>)> = vec![(uplink, None)];
        names.extend(plan.ports.iter().filter(|p| me.owns(p.zone)).filter_map(|p| Some((p.interface.as_deref()?, Some(&*p.id)))));
        for (name, port) in names {
            let reason = self.down.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone());
            let up = reason.is_none() && self.socks.iter().any(|s| s.sock.interface == name);
            if port.is_none() && !up && reason.is_none() {
                // No uplink queue is this loop's.
                continue;
            }
            let before = log.get(name).cloned();
            if before.as_ref() != Some(&reason) {
                match (&reason, before.is_some()) {
                    (None, true) => info!(interface = name, "{name}: interface back, AF_XDP sockets open"),
                    (None, false) => {}
                    (Some(r), _) => warn!(
                        interface = name,
                        "{name}: down ({r}); traffic of {} is dropped until it comes back",
                        port.unwrap_or("the uplink")
                    ),
                }
                log.insert(name.to_owned(), reason.clone());
            }
            states.push(LinkState { interface: name.to_owned(), port: port.map(str::to_owned), up, reason: reason.unwrap_or_default() });
        }
        states
    }
}

/// Copies the kernel's socket statistics and the table's totals into the
/// loop's counters.
fn publish_stats(stats: &LoopStats, socks: &[Port], pipe: &Pipeline<FrameDesc>, plan: &Plan) {
    for p in socks {
        if let Ok(k) = p.sock.rx.fd().xdp_statistics() {
            let v = [
                k.rx_dropped(),
                k.rx_invalid_descs(),
                k.tx_invalid_descs(),
                k.rx_ring_full(),
                k.rx_fill_ring_empty_descs(),
                k.tx_ring_empty_descs(),
            ];
            for (c, v) in p.stats.kernel.iter().zip(v) {
                c.set(v);
            }
        }
    }
    let t = pipe.conntrack.stats();
    let v = [t.created, t.expired, t.evicted, t.full, t.invalid, t.revalidated, t.revalidation_removed];
    for (c, v) in stats.conntrack.iter().zip(v) {
        c.set(v);
    }
    for port in &plan.ports {
        if let Some(e) = stats.conntrack_entries.get(usize::from(port.zone)) {
            e.store(u32::try_from(pipe.conntrack.zone_len(port.zone)).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
    }
}

/// Answers the control socket's requests (bounded work per iteration).
fn answer(requests: &Receiver<LoopRequest>, pipe: &mut Pipeline<FrameDesc>, stats: &LoopStats) {
    for _ in 0..REQUESTS_PER_ITERATION {
        let Ok(r) = requests.try_recv() else { return };
        match r {
            LoopRequest::Flows { zone, from, limit, reply } => {
                let (end, next) = (pipe.conntrack.slots(), from.saturating_add(SCAN_STEP));
                let mut counted = 0;
                let mut rows = Vec::new();
                for f in pipe.conntrack.flows_in(from..next).filter(|f| zone.is_none_or(|z| f.0.zone == z)) {
                    counted += 1;
                    if rows.len() < limit {
                        rows.push(f);
                    }
                }
                let _ = reply.try_send(Step { found: rows, counted, next: next.min(end), end });
            }
            LoopRequest::Flush { zone, from, reply } => {
                let (end, next) = (pipe.conntrack.slots(), from.saturating_add(SCAN_STEP));
                let counted = pipe.conntrack.flush_in(zone, from..next);
                if let Some(z) = zone
                    && let Some(e) = stats.conntrack_entries.get(usize::from(z))
                {
                    e.store(u32::try_from(pipe.conntrack.zone_len(z)).unwrap_or(u32::MAX), Ordering::Relaxed);
                }
                let _ = reply.try_send(Step { found: (), counted, next: next.min(end), end });
            }
            LoopRequest::Lookup { tuple, reply } => {
                let _ = reply.try_send(pipe.conntrack.get(&tuple));
            }
        }
    }
}

/// Frames one loop's inbox holds at most (each a 2 KiB parcel: 2 MiB).
const HANDOVER: usize = 1024;

/// What the receiving loop does with a handed-over frame.
#[derive(Clone, Copy, Debug)]
enum Task {
    /// Judge it with this port's ingress (the loop owns the port's zone),
    /// then send it on.
    Judge(PortIdx),
    /// Transmit it: to a port's socket or the uplink of the receiving loop,
    /// or flood it to the receiving loop's sockets.
    Send(To),
}

/// A frame handed from one poll loop to another. Each loop has its own
/// UMEM, so the bytes are copied (`docs/design.md`).
pub struct Parcel {
    task: Task,
    len: u16,
    data: [u8; crate::xdp::FRAME_SIZE as usize],
}

impl std::fmt::Debug for Parcel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parcel({:?}, {} bytes)", self.task, self.len)
    }
}

/// What a loop needs to send frames to the others.
struct Peers<'a> {
    me: Owner,
    inboxes: &'a [Arc<ArrayQueue<Parcel>>],
    stats: &'a LoopStats,
}

impl Peers<'_> {
    /// Hands a copy of `bytes` to loop `to`; a full inbox drops and counts.
    fn send(&self, to: usize, task: Task, bytes: &[u8]) {
        let Some(inbox) = self.inboxes.get(to) else { return };
        let mut p = Parcel { task, len: 0, data: [0; crate::xdp::FRAME_SIZE as usize] };
        let n = bytes.len().min(p.data.len());
        p.data[..n].copy_from_slice(&bytes[..n]);
        p.len = u16::try_from(n).unwrap_or(u16::MAX);
        if inbox.push(p).is_ok() {
            self.stats.handover_sent.add(1);
        } else {
            self.stats.handover_dropped.add(1);
        }
    }

    fn owner(&self, plan: &Plan, q: PortIdx) -> Option<usize> {
        plan.port(q).map(|p| owner_of(p.zone, self.me.loops))
    }
}

/// The poll loop: owns its UMEM, the sockets of its ports and of its share
/// of the uplink's queues, their conntrack zones and its pipeline.
fn poll_loop(
    shared: &Shared,
    uplink: &str,
    stats: &LoopStats,
    log: Option<FlowLog>,
    requests: &Receiver<LoopRequest>,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let host = &shared.host;
    let me = Owner { index: stats.index, loops: shared.loops.len() };
    let peers = Peers { me, inboxes: &shared.inboxes, stats };
    let inbox = &shared.inboxes[me.index];
    let core = stats.core;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        warn!("could not pin poll loop {} to core {core}; running unpinned", me.index);
    }
    let mut current = shared.published.load_full();
    let mut links = LinkLog::new();
    let started = Io::new(host).and_then(|mut io| io.connect(&current.plan, host, me, uplink, true).map(|()| io));
    let mut io = match started {
        Ok(io) => io,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    stats.sockets.store(Arc::new(io.socks.iter().map(|p| Arc::clone(&p.stats)).collect()));
    stats.links.store(Arc::new(io.report(&current.plan, me, uplink, &mut links)));
    let _ = ready.send(Ok(()));
    // This loop's share of the host's connection capacity.
    let mut settings = conntrack_settings(host, seed());
    settings.capacity = crate::pipeline::capacity_share(host.conntrack.capacity, me.loops, me.index);
    stats.conntrack_capacity.set(u64::from(settings.capacity));
    let mut pipe: Pipeline<FrameDesc> = Pipeline::with_counters(settings, FragSettings::default(), Arc::clone(&stats.pipeline));
    pipe.set_owner(me);
    pipe.flow_log = log;
    pipe.adopt(&current.plan);
    let mut rx = vec![FrameDesc::default(); BATCH];
    let mut peer_src = [Source::Uplink; BATCH];
    let mut scratch = vec![FrameDesc::default(); host.datapath.ring_size as usize];
    let none = Outcome { action: Action::Drop, reason: Reason::Default, port: None, direction: sgswitch_config::Direction::Ingress };
    let mut outs = [none; BATCH];
    let mut stats_due = 0u64;
    let mut links_due = 0u64;
    let mut links_seen = shared.link_events.load(Ordering::Relaxed);
    let mut waits: Vec<libc::pollfd> = Vec::with_capacity(io.socks.len() + 8);
    while !shared.stop.load(Ordering::Relaxed) {
        let latest = shared.published.load();
        let mut reconnect = false;
        if !Arc::ptr_eq(&latest, &current) {
            current = arc_swap::Guard::into_inner(latest);
            pipe.adopt(&current.plan);
            for &z in &current.gone {
                pipe.conntrack.flush(Some(z));
                pipe.counters.reset_zone(z);
                if let Some(e) = stats.conntrack_entries.get(usize::from(z)) {
                    e.store(0, Ordering::Relaxed);
                }
            }
            reconnect = true;
        }
        let ms = u64::try_from(shared.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // An interface made, deleted or changed (or a second passed, or a
        // reload): sockets of interfaces that went away are closed, and
        // those missing opened.
        let events = shared.link_events.load(Ordering::Relaxed);
        if reconnect || events != links_seen || ms >= links_due {
            let prompted = reconnect || events != links_seen;
            links_seen = events;
            links_due = ms + LINK_CHECK_MS;
            let lost = io.unlink_gone(host, || pipe.forget_held()).unwrap_or_else(|e| {
                warn!("loop {}: {e}", me.index);
                true
            });
            // Opening is looked at on a prompt, after a loss, and while an
            // interface is down; the check of a quiet second costs one
            // ioctl per socket.
            if prompted || lost || !io.down.is_empty() {
                let _ = io.connect(&current.plan, host, me, uplink, false);
                stats.sockets.store(Arc::new(io.socks.iter().map(|p| Arc::clone(&p.stats)).collect()));
                stats.links.store(Arc::new(io.report(&current.plan, me, uplink, &mut links)));
            }
        }
        let plan = &current.plan;
        let now = Now(ms);
        let mut busy = false;
        let Io { mem, socks, by_port, .. } = &mut io;
        let by_port = &by_port[..];
        // Each socket's share of the UMEM for its fill ring; the rest is
        // for frames in flight, copies and handed-over frames.
        let share = u32::try_from((host.datapath.frames as usize).saturating_sub(KEEP_FOR_COPIES) / (2 * socks.len().max(1))).unwrap_or(0);
        for s in 0..socks.len() {
            socks[s].sock.reclaim(&mut mem.free, &mut mem.ledger, &mut scratch);
            socks[s].sock.refill(&mut mem.free, &mut mem.ledger, share);
            let n = socks[s].sock.receive(&mut rx, &mut mem.ledger);
            if n == 0 {
                continue;
            }
            busy = true;
            stats.batch(n);
            let src = socks[s].src;
            {
                let items: [(Source, &[u8], FrameDesc); BATCH] =
                    std::array::from_fn(|i| (src, if i < n { mem.data(&rx[i]) } else { &[][..] }, rx[i]));
                pipe.process_batch(plan, &items[..n], now, &mut outs[..n]);
            }
            for i in 0..n {
                dispatch(plan, mem, socks, by_port, s, rx[i], &outs[i], &peers);
            }
            while let Some((d, o)) = pipe.take_released().next() {
                dispatch(plan, mem, socks, by_port, usize::MAX, d, &o, &peers);
            }
        }
        // Frames the other loops handed over: sent on, or judged first.
        let mut n = 0;
        while n < BATCH
            && let Some(p) = inbox.pop()
        {
            busy = true;
            stats.handover_received.add(1);
            let bytes = &p.data[..usize::from(p.len)];
            match p.task {
                Task::Judge(q) => match mem.copy_in(bytes) {
                    Some(d) => {
                        rx[n] = d;
                        peer_src[n] = Source::Peer(q);
                        n += 1;
                    }
                    None => stats.copy_failed.add(1),
                },
                Task::Send(to) => deliver(mem, socks, by_port, usize::MAX, bytes, to, stats),
            }
        }
        if n > 0 {
            {
                let items: [(Source, &[u8], FrameDesc); BATCH] =
                    std::array::from_fn(|i| (peer_src[i], if i < n { mem.data(&rx[i]) } else { &[][..] }, rx[i]));
                pipe.process_batch(plan, &items[..n], now, &mut outs[..n]);
            }
            for i in 0..n {
                dispatch(plan, mem, socks, by_port, usize::MAX, rx[i], &outs[i], &peers);
            }
        }
        for p in socks.iter_mut() {
            let sent = p.sock.transmit(&p.pending, &mut mem.ledger);
            p.stats.tx_full.add((p.pending.len() - sent) as u64);
            mem.free.extend_from_slice(&p.pending[sent..]);
            p.pending.clear();
        }
        pipe.tick(plan, now);
        while let Some((d, o)) = pipe.take_released().next() {
            dispatch(plan, mem, socks, by_port, usize::MAX, d, &o, &peers);
        }
        answer(requests, &mut pipe, stats);
        if ms >= stats_due {
            stats_due = ms + STATS_EVERY_MS;
            publish_stats(stats, socks, &pipe, plan);
        }
        if busy {
            stats.busy.add(1);
        } else {
            stats.idle.add(1);
            if host.datapath.busy_poll {
                std::hint::spin_loop();
            } else {
                // Until a socket receives, or for as long as a frame handed
                // over by another loop may wait.
                waits.clear();
                waits.extend(socks.iter().map(|p| p.sock.poll_fd()));
                crate::xdp::wait_for_frames(&mut waits, IDLE_WAIT);
            }
        }
    }
    publish_stats(stats, &io.socks, &pipe, &current.plan);
    // Sockets close here, detaching the XDP programs.
    drop(io);
    Ok(())
}

/// This loop's uplink socket, if it has one. The uplink's sockets are opened
/// before any port's and `reconcile` keeps the order, so it is the first.
fn uplink_socket(socks: &[Port]) -> Option<usize> {
    socks.first().filter(|p| p.src == Source::Uplink).map(|_| 0)
}

/// This loop's socket for a unicast target, if it has it (a flood has none).
fn socket_for(socks: &[Port], by_port: &[Option<usize>], to: To) -> Option<usize> {
    match to {
        To::Port(q) => by_port.get(usize::from(q)).copied().flatten(),
        To::Uplink => uplink_socket(socks),
        To::Flood { .. } => None,
    }
}

/// Copies `bytes` to this loop's sockets for `to`: one port's, the
/// uplink's, or every socket a flood reaches (but `from`).
fn deliver(mem: &mut Memory, socks: &mut [Port], by_port: &[Option<usize>], from: usize, bytes: &[u8], to: To, stats: &LoopStats) {
    let mut copy = |p: &mut Port| match mem.copy_in(bytes) {
        Some(c) => p.pending.push(c),
        None => stats.copy_failed.add(1),
    };
    if let To::Flood { except, uplink } = to {
        for (t, p) in socks.iter_mut().enumerate() {
            if p.primary() && t != from && (p.src != Source::Uplink || uplink) && !matches!(p.src, Source::Port(q) if Some(q) == except) {
                copy(p);
            }
        }
    } else if let Some(t) = socket_for(socks, by_port, to) {
        copy(&mut socks[t]);
    }
}

/// Sends a decided frame on its way: its descriptor to one of this loop's
/// sockets, copies for a flood, a copy to the loop that owns the target
/// (to send, or to judge its ingress), or back to the free list.
#[expect(clippy::too_many_arguments, reason = "the loop's state, passed apart so that the borrows stay disjoint")]
fn dispatch(
    plan: &Plan,
    mem: &mut Memory,
    socks: &mut [Port],
    by_port: &[Option<usize>],
    from: usize,
    d: FrameDesc,
    o: &Outcome,
    peers: &Peers<'_>,
) {
    match o.action {
        Action::Forward(to @ (To::Port(_) | To::Uplink)) => {
            match socket_for(socks, by_port, to) {
                Some(t) if t != from => return socks[t].pending.push(d),
                Some(_) => {}
                None => {
                    let owner = match to {
                        To::Port(q) => peers.owner(plan, q),
                        _ => Some(0),
                    };
                    if let Some(l) = owner.filter(|&l| l != peers.me.index) {
                        peers.send(l, Task::Send(to), mem.data(&d));
                    }
                }
            }
            mem.free.push(d);
        }
        Action::Forward(to @ To::Flood { .. }) => {
            let mut buf = [0u8; crate::xdp::FRAME_SIZE as usize];
            let bytes = mem.data(&d);
            let len = bytes.len().min(buf.len());
            buf[..len].copy_from_slice(&bytes[..len]);
            mem.free.push(d);
            deliver(mem, socks, by_port, from, &buf[..len], to, peers.stats);
            for l in (0..peers.me.loops).filter(|&l| l != peers.me.index) {
                peers.send(l, Task::Send(to), &buf[..len]);
            }
        }
        Action::Handover(q) => {
            if let Some(l) = peers.owner(plan, q).filter(|&l| l != peers.me.index) {
                peers.send(l, Task::Judge(q), mem.data(&d));
            }
            mem.free.push(d);
        }
        Action::Held => {}
        Action::Drop => mem.free.push(d),
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()).rotate_left(32)
}

/// The shutdown summary: per port and direction, packets by action and
/// reason (summed over the loops); rule hits by rule.
pub fn summary(shared: &Shared) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let current = shared.published.load();
    let _ = writeln!(s, "counters (packets):");
    let mut names: Vec<(usize, String)> = vec![(0, "(no port)".to_owned())];
    names.extend(current.plan.ports.iter().map(|p| (usize::from(p.zone) + 1, p.id.to_string())));
    for (slot, name) in &names {
        for (di, d) in ["ingress", "egress"].iter().enumerate() {
            for (fi, f) in ["dropped", "forwarded"].iter().enumerate() {
                let parts: Vec<String> = REASONS
                    .iter()
                    .enumerate()
                    .filter_map(|(ri, r)| {
                        let (n, _) = shared.cell(*slot, di, fi, ri);
                        (n > 0).then(|| format!("{r}={n}"))
                    })
                    .collect();
                if !parts.is_empty() {
                    let _ = writeln!(s, "  {name} {d} {f}: {}", parts.join(" "));
                }
            }
        }
    }
    let mut hits = std::collections::BTreeMap::new();
    for (label, n) in shared.rule_totals() {
        *hits.entry((label.group.to_string(), label.direction, label.index)).or_insert(0u64) += n;
    }
    for ((g, d, i), n) in hits.into_iter().filter(|(_, n)| *n > 0) {
        let _ = writeln!(s, "  rule {g}/{d}/{i}: {n} hits");
    }
    let tx_full: u64 = shared.sockets().iter().map(|p| p.tx_full.get()).sum();
    if tx_full > 0 {
        let _ = writeln!(s, "  tx ring full: {tx_full} frames dropped");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_every_setting_that_waits_for_a_restart_and_only_those() {
        let a = Host::default();
        let mut b = a.clone();
        assert!(restart_needed(&a, &b).is_empty());
        // Applied on reload: not named.
        b.on_policy_change = sgswitch_config::OnPolicyChange::Keep;
        b.conntrack.tcp_strict = true;
        b.conntrack.per_port_capacity = 10;
        b.conntrack.timeouts.udp = 5;
        b.dhcp_server = vec!["10.0.0.1/32".parse().expect("cidr")];
        assert!(restart_needed(&a, &b).is_empty());
        b.datapath.cores = vec![0, 1];
        b.conntrack.capacity = 2048;
        b.metrics_listen = "127.0.0.1:1".parse().expect("addr");
        b.flow_log.enabled = true;
        let n = restart_needed(&a, &b);
        assert_eq!(n.len(), 4, "{n:?}");
        assert_eq!(n[0], "[datapath] cores = [0, 1] (running [0])");
        assert!(n.iter().any(|s| s.starts_with("[conntrack] capacity = 2048 (running 1048576)")), "{n:?}");
    }
}
