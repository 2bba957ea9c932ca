//! `sgswitch run` (the top layer): the switch put together. The caller's
//! thread loads the configuration, starts the poll loops ([`crate::engine`])
//! pinned to their cores, the reloader ([`crate::control`]), the link
//! watcher, the metrics endpoint, the control socket and the flow-log
//! writer ([`crate::ops`]), then watches the directory and signals. None
//! of these threads wakes but for work or the stop
//! ([`crate::control::stop`]).
//!
//! - **Reload**: a change under the configuration directory (inotify through
//!   the `notify` crate, applied once the files are stable), SIGHUP or
//!   `sgswitch ctl reload` queue a reload on the reloader thread. A valid
//!   configuration is compiled off the hot path and published with one
//!   atomic swap ([`arc_swap`]); the loops pick it up between batches, open
//!   the sockets of new ports and close those of removed ones, and flush a
//!   removed port's flows. An invalid one is refused with its file:line
//!   messages in the log; the running one stays. Settings only a start
//!   applies are named ([`crate::control::restart_needed`]).
//! - **Shutdown**: SIGINT or SIGTERM stops the loops; dropping the sockets
//!   detaches the XDP programs libxdp attached, so nothing is left on the
//!   interfaces; the control socket's file is removed. The process exits
//!   within [`STOP_WITHIN`] whatever is stuck.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{info, warn};

use crate::control::sizing::{MemoryError, check_conntrack_memory, meminfo};
use crate::control::stop::Stop;
use crate::control::store::StoreLink;
use crate::control::{Control, LoadError, load};
use crate::datapath::plan::Zones;
use crate::datapath::stats::Counters;
use crate::engine::forward::{Inbox, Inboxes, nudge_all};
use crate::engine::stats::LoopStats;
use crate::engine::{Context, Loops, poll_loop};
use crate::ops::View;
use crate::ops::flowlog::FlowLogError;
use crate::packet::flowlog::FlowLog;
use crate::port::PortError;
use crate::port::xdp::sys;

/// Why the switch could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("host.toml: [uplink] interface is required to run the datapath")]
    NoUplink,
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Endpoint(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    FlowLog(#[from] FlowLogError),
    #[error("starting poll loop {index}: {source}")]
    Thread { index: usize, source: std::io::Error },
    #[error("a poll loop ended before it was ready")]
    NotReady,
    #[error("a poll loop panicked")]
    Panicked,
}

/// What the switch's own threads share (the endpoints get a [`View`]).
#[derive(Debug)]
struct Shared {
    /// `[reload]` of host.toml at start.
    reload: sgswitch_config::Reload,
    control: Arc<Control>,
    stop: Arc<Stop>,
    /// Link events seen (interfaces made, deleted or changed): the loops
    /// look at their interfaces again when it moves.
    link_events: Arc<AtomicU64>,
}

/// How `run` runs.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// `false` (`run --no-datapath`): the control plane alone: it loads,
    /// reloads, follows the store and answers `ctl` (trace included), but
    /// opens no socket and moves no frame.
    pub datapath: bool,
}

/// What wakes the control thread.
#[derive(Debug)]
enum Wake {
    /// A configuration file changed.
    File,
    /// The store is at a new revision.
    Store(i64),
    /// SIGHUP.
    Hup,
    /// SIGINT or SIGTERM (the stop is set).
    Stop,
}

/// Runs the switch on `dir` until SIGINT or SIGTERM; returns the shutdown
/// summary.
///
/// # Errors
/// The configuration is invalid, the uplink is not configured, a socket
/// cannot be opened (the message names the interface and the reason), or
/// the metrics address or control socket cannot be bound.
#[expect(clippy::too_many_lines, reason = "the start reads top to bottom: load, signals, endpoints, loops, threads, watch, stop")]
pub fn run(dir: &Path, opts: RunOptions) -> Result<String, RunError> {
    sys::quiet_libraries();
    sys::raise_open_files();
    let epoch = Instant::now();
    let started = SystemTime::now();
    let stop = Arc::new(Stop::new());
    // Signals are caught from here on, and handed to the control thread
    // by a thread of their own once the others' cores are known.
    let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(RunError::Signals)?;
    let (wake_tx, wake_rx) = std::sync::mpsc::channel::<Wake>();
    // With a store, nothing is enforced before its first revision is read:
    // until then the ports are not attached, so nothing passes.
    let local = sgswitch_config::load_host(dir).map_err(LoadError::from)?;
    if opts.datapath {
        place_helpers(&loop_cores(&local.datapath.cores));
    }
    forward_signals(signals, &stop, &wake_tx)?;
    let store = local.store;
    let store = match store {
        Some(settings) => match start_store(settings, &wake_tx, &wake_rx, &stop)? {
            Some(s) => Some(s),
            None => return Ok("stopped before the store was read\n".into()),
        },
        None => None,
    };
    let mut zones = Zones::default();
    let snapshot = store.as_ref().and_then(|l| l.snapshot());
    let view = store.as_ref().zip(snapshot.as_deref()).map(|(l, s)| (s, l.settings.host.as_str()));
    let (first, sources) = load(dir, view, &mut zones, 1, None, &mut None)?;
    drop(snapshot);
    let host = first.plan.policy().config().host.clone();
    let uplink = if opts.datapath { host.uplink_interface.clone().ok_or(RunError::NoUplink)? } else { String::new() };

    // Bind the operator's endpoints first: a taken address fails the start
    // before any interface is touched.
    let metrics = crate::ops::metrics::bind(host.metrics_listen).map_err(RunError::Endpoint)?;
    let control_socket = crate::ops::control::bind(&host.control_socket).map_err(RunError::Endpoint)?;

    let cores = if opts.datapath { loop_cores(&host.datapath.cores) } else { Vec::new() };
    let n = cores.len();
    crate::port::xdp::bpf::size_fast_path(crate::engine::fast::PER_LOOP * n);
    if let Some(avail) = meminfo("MemAvailable").filter(|_| n > 0) {
        check_conntrack_memory(&host, n, avail, "MemAvailable")?;
    }
    let stats: Vec<Arc<LoopStats>> =
        cores.iter().enumerate().map(|(i, &c)| Arc::new(LoopStats::new(i, c, Arc::new(Counters::default())))).collect();
    let inboxes: Arc<Inboxes> = Arc::new((0..n).map(|_| Arc::new(Inbox::new())).collect());
    let (loops, receivers) = Loops::new(stats.clone(), Arc::clone(&inboxes));
    let loops = Arc::new(loops);
    let (logs, writer): (Vec<Option<FlowLog>>, _) = if host.flow_log.enabled && n > 0 {
        let (logs, w) = FlowLog::per_loop(&host.flow_log, n);
        (logs.into_iter().map(Some).collect(), Some(w))
    } else {
        ((0..n).map(|_| None).collect(), None)
    };
    if let Some(link) = &store {
        link.applied(first.plan.policy().config(), &sources);
    }
    let (control, reload_jobs) = Control::new(dir, first, zones, epoch, store.clone());
    control.remember(&sources, 1, &host.history);
    drop(sources);
    let control = Arc::new(control);
    let shared =
        Shared { reload: host.reload, control: Arc::clone(&control), stop: Arc::clone(&stop), link_events: Arc::new(AtomicU64::new(0)) };
    let view = Arc::new(View {
        dir: dir.to_owned(),
        host: host.clone(),
        started,
        loops: Arc::clone(&loops),
        control: Arc::clone(&control),
        flow_log: logs.iter().flatten().map(|l| Arc::clone(l.stats())).collect(),
        stop: Arc::clone(&stop),
    });
    {
        let inboxes = Arc::clone(&inboxes);
        control.on_publish(move || nudge_all(&inboxes));
    }

    let finish = |stop: &Stop| {
        stop.set();
        let _ = std::fs::remove_file(&host.control_socket);
    };
    let flow_handle = || crate::ops::flowlog::Handle { published: Arc::clone(&control.published), started, stop: Arc::clone(&stop) };
    let writer = match writer.map(|w| crate::ops::flowlog::start(w, flow_handle())).transpose() {
        Ok(w) => w,
        Err(e) => {
            finish(&stop);
            return Err(e.into());
        }
    };
    // Held until the loops have ended: each core is put back as it was.
    let (_polling, idle) = crate::port::xdp::idle::keep_polling(&cores, host.datapath.core_idle);
    for (s, i) in stats.iter().zip(idle) {
        let _ = s.core_idle.set(i);
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), PortError>>();
    let mut workers = Vec::with_capacity(n);
    for ((stats, log), requests) in stats.into_iter().zip(logs).zip(receivers) {
        let (host, uplink, ready) = (host.clone(), uplink.clone(), ready_tx.clone());
        let (published, halt, events, inboxes) =
            (Arc::clone(&control.published), Arc::clone(&stop), Arc::clone(&shared.link_events), Arc::clone(&inboxes));
        let index = stats.index;
        let spawned = std::thread::Builder::new().name(format!("sgswitch-loop-{index}")).spawn(move || {
            let cx = Context {
                host: &host,
                uplink: &uplink,
                published: &published,
                stop: halt.flag(),
                link_events: &events,
                inboxes: &inboxes,
                epoch,
            };
            poll_loop(&cx, &stats, log, &requests, &ready)
        });
        match spawned {
            Ok(w) => workers.push(w),
            Err(source) => {
                finish(&stop);
                return Err(RunError::Thread { index, source });
            }
        }
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(RunError::Port(e));
            }
            Err(_) => {
                failed.get_or_insert(RunError::NotReady);
            }
        }
    }
    if let Some(e) = failed {
        finish(&stop);
        for w in workers {
            let _ = w.join();
        }
        return Err(e);
    }
    let threads = [crate::ops::metrics::serve(metrics, Arc::clone(&view)), crate::ops::control::serve(control_socket, Arc::clone(&view))];
    // Link events prompt the loops to look at their interfaces (a VM's tap
    // deleted and made again when it restarts); without them, they look
    // once a second.
    {
        let (stop, events, inboxes) = (Arc::clone(&stop), Arc::clone(&shared.link_events), Arc::clone(&inboxes));
        let spawned = std::thread::Builder::new().name("sgswitch-links".into()).spawn(move || {
            if let Err(e) = sys::watch_links(stop.halt(), &events, &|| nudge_all(&inboxes)) {
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
        let (control, stop) = (Arc::clone(&control), Arc::clone(&stop));
        let spawned =
            std::thread::Builder::new().name("sgswitch-reload".into()).spawn(move || control.run_reloader(&reload_jobs, stop.flag()));
        if let Err(e) = spawned {
            warn!("cannot start the reloader ({e}); the configuration will not be reloaded");
        }
    }
    let generation = control.stats.shown();
    if opts.datapath {
        info!(
            metrics = %host.metrics_listen,
            control = %host.control_socket.display(),
            loops = n,
            "running on {} (generation {generation}, {n} poll loop{} on cores {cores:?}); SIGHUP or a file change reloads, SIGINT/SIGTERM stops",
            dir.display(),
            if n == 1 { "" } else { "s" }
        );
    } else {
        info!(
            metrics = %host.metrics_listen,
            control = %host.control_socket.display(),
            "running on {} without a datapath (generation {generation}): the control plane answers `ctl`, no frame is moved",
            dir.display()
        );
    }
    watch(&shared, &wake_tx, &wake_rx);
    // Told to stop: the loops see it now, not at their next timer, and
    // the reloader, which sleeps until a job comes.
    nudge_all(&inboxes);
    control.wake_reloader();
    // Stopping: the loops end within an idle wait and close their sockets
    // (detaching the XDP programs); the endpoints' threads, woken by the
    // stop, at once. Whatever is stuck after STOP_WITHIN (a load blocked
    // in a read) does not hold the exit.
    watchdog(STOP_WITHIN);
    let mut result = Ok(());
    for w in workers {
        let r = w.join().map_err(|_| RunError::Panicked).and_then(|r| r.map_err(RunError::from));
        result = result.and(r);
    }
    finish(&stop);
    let deadline = Instant::now() + Duration::from_secs(2);
    for t in threads.into_iter().flatten().chain(writer) {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    result.map(|()| loops.summary(&control.published.load().plan))
}

/// Starts the store thread and waits for its first revision (saying why
/// while it waits); `None` if told to stop first.
fn start_store(
    settings: sgswitch_config::Store,
    wake_tx: &std::sync::mpsc::Sender<Wake>,
    wake_rx: &std::sync::mpsc::Receiver<Wake>,
    stop: &Arc<Stop>,
) -> Result<Option<Arc<StoreLink>>, RunError> {
    let link = StoreLink::new(settings);
    info!("reading the configuration from etcd at {} (prefix {})", link.settings.endpoints.join(", "), link.settings.prefix);
    {
        let (link, tx, stop) = (Arc::clone(&link), wake_tx.clone(), Arc::clone(stop));
        std::thread::Builder::new()
            .name("sgswitch-store".into())
            .spawn(move || crate::control::store::serve(&link, &move |r| drop(tx.send(Wake::Store(r))), stop.flag()))
            .map_err(|e| RunError::Endpoint(format!("starting the store thread: {e}")))?;
    }
    let waited = Instant::now();
    let mut said = Instant::now();
    loop {
        // A SIGHUP before the first revision asks for nothing the first
        // load does not do.
        match wake_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Wake::Store(_)) => return Ok(Some(link)),
            Ok(Wake::File | Wake::Hup | Wake::Stop) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(RunError::Endpoint("the store thread ended".into())),
        }
        if stop.is_set() {
            return Ok(None);
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            warn!(
                "waiting {} s for the store, nothing is enforced and no port is attached yet: {}",
                waited.elapsed().as_secs(),
                link.status.detail().error
            );
        }
    }
}

/// How long the switch takes at most to exit after SIGINT or SIGTERM.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);

/// The poll loops' cores: `[datapath] cores`, or core 0 when it names
/// none.
fn loop_cores(configured: &[usize]) -> Vec<usize> {
    if configured.is_empty() { vec![0] } else { configured.to_vec() }
}

/// Where the switch's other threads run: the cores the process may use
/// that no loop has, or all it may use when the loops have every one.
fn helper_cores(allowed: &[usize], loops: &[usize]) -> Vec<usize> {
    let free: Vec<usize> = allowed.iter().copied().filter(|c| !loops.contains(c)).collect();
    if free.is_empty() { allowed.to_vec() } else { free }
}

/// Keeps the switch's threads other than the loops (metrics, control,
/// reloads, link events, the store's client, the flow log: all started
/// after this, from this thread; a vhost-user port's handshake thread,
/// which its loop starts, moves itself) off the loops' cores, where the
/// process may run on others. Each wake of one on a loop's core is time
/// the loop waits, or the kernel's receive work that yields to it: with
/// the metrics page scraped once a second, the fast path's p99 latency at
/// a tenth of the peak measured 59-133 µs with them free to run there and
/// 48-51 kept off (`docs/bench/README.md`). The loops pin themselves to
/// their own cores.
fn place_helpers(loops: &[usize]) {
    let allowed: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let helpers = helper_cores(&allowed, loops);
    if allowed.is_empty() {
        warn!("cannot read which cores the process may use; the switch's other threads may share the loops' cores {loops:?}");
        return;
    }
    if helpers == allowed {
        info!("the switch's other threads share the loops' cores {loops:?}: the process may run on no other");
        return;
    }
    match sys::keep_helpers_on(&helpers) {
        Ok(()) => info!("the switch's other threads run on cores {helpers:?}, off the loops' {loops:?}"),
        Err(e) => warn!("cannot keep the switch's other threads off the loops' cores ({e}); they run anywhere"),
    }
}

/// Hands SIGINT and SIGTERM (which set the stop) and SIGHUP to the control
/// thread, from a thread that sleeps until one comes.
fn forward_signals(
    mut signals: signal_hook::iterator::Signals,
    stop: &Arc<Stop>,
    wake: &std::sync::mpsc::Sender<Wake>,
) -> Result<(), RunError> {
    let (stop, wake) = (Arc::clone(stop), wake.clone());
    std::thread::Builder::new()
        .name("sgswitch-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    let _ = wake.send(Wake::Hup);
                } else {
                    stop.set();
                    let _ = wake.send(Wake::Stop);
                }
            }
        })
        .map(drop)
        .map_err(RunError::Signals)
}

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
type Fingerprint = Vec<sgswitch_config::Stamp>;

/// The [`Fingerprint`] of `dir` (`host.toml` and the `.toml` files of its
/// folders): two equal fingerprints a debounce interval apart mean nobody
/// is writing.
fn fingerprint(dir: &Path) -> Fingerprint {
    sgswitch_config::file_stamps(dir, &["ports", "groups", "prefix-lists"]).0
}

/// The control thread: reloads on SIGHUP, and on file changes once the
/// files have stopped changing (`[reload] watch`, `debounce_ms`), until
/// told to stop.
fn watch(shared: &Shared, wake: &std::sync::mpsc::Sender<Wake>, rx: &std::sync::mpsc::Receiver<Wake>) {
    use notify::Watcher;
    let dir = shared.control.dir();
    let tx = wake.clone();
    let debounce = Duration::from_millis(u64::from(shared.reload.debounce_ms));
    let touched = shared.control.touched();
    let watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        // A reload for configuration files only (editors' swap files and
        // logs beside them do not count). For the store's reloads, which
        // take the files of the last load when nothing was touched, any
        // change counts (a folder renamed, say), and so does an error
        // (events lost).
        match e {
            Ok(e) if e.kind.is_access() => {}
            Ok(e) => {
                touched.store(true, Ordering::SeqCst);
                if e.paths.iter().any(|p| p.extension().is_some_and(|x| x == "toml")) {
                    let _ = tx.send(Wake::File);
                }
            }
            Err(_) => touched.store(true, Ordering::SeqCst),
        }
    });
    let _watcher = if shared.reload.watch {
        match watcher {
            Ok(mut w) => match w.watch(dir, notify::RecursiveMode::Recursive) {
                Ok(()) => {
                    shared.control.watched();
                    Some(w)
                }
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
    // It sleeps until something comes (a file event, a store revision, a
    // signal) or a change's debounce is over.
    let mut due: Option<(Instant, Fingerprint)> = None;
    while !shared.stop.is_set() {
        let (mut files, mut store, mut hup) = (false, None, false);
        let first = match &due {
            Some((at, _)) => rx.recv_timeout(at.saturating_duration_since(Instant::now())).ok(),
            None => rx.recv().ok(),
        };
        for w in first.into_iter().chain(rx.try_iter()) {
            match w {
                Wake::File => files = true,
                Wake::Store(r) => store = Some(r),
                Wake::Hup => hup = true,
                Wake::Stop => {}
            }
        }
        // A new store revision is read whole and applied at once (it has
        // no half-written files to wait for).
        if let Some(r) = store {
            shared.control.queue_reload(&format!("{} {r}", crate::control::STORE_REVISION));
        }
        if files {
            due = Some((Instant::now() + debounce, fingerprint(dir)));
        }
        let now = Instant::now();
        if hup {
            shared.control.queue_reload("SIGHUP");
        }
        if let Some((at, before)) = due.take() {
            if now < at {
                due = Some((at, before));
            } else {
                let after = fingerprint(dir);
                if after == before {
                    shared.control.queue_reload("file change");
                } else {
                    due = Some((now + debounce, after));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_threads_get_the_cores_no_loop_has_or_share_when_there_are_none() {
        assert_eq!(helper_cores(&[0, 1, 2, 3], &[0, 1]), vec![2, 3]);
        assert_eq!(helper_cores(&[0, 1], &[0]), vec![1]);
        assert_eq!(helper_cores(&[0, 1], &[0, 1]), vec![0, 1], "the loops have every core: shared");
        assert_eq!(helper_cores(&[0], &[0]), vec![0], "a process held to the loop's core");
        assert_eq!(helper_cores(&[2, 3], &[0]), vec![2, 3], "the loop's core is not the process's");
        assert_eq!(helper_cores(&[], &[0]), Vec::<usize>::new(), "the mask unknown");
        assert_eq!(loop_cores(&[]), vec![0]);
        assert_eq!(loop_cores(&[3, 1]), vec![3, 1]);
    }
}
