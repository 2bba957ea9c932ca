//! The control plane: loading a configuration directory into a plan
//! ([`load`]), publishing it with one atomic swap for the loops to pick up,
//! reloading (serialised on the reloader thread, [`Control::run_reloader`]),
//! and saying which changed settings wait for a restart; recording each
//! configuration applied ([`history`]). Also how much memory the
//! connection tables take ([`sizing`]), and the switch's [`stop`].

pub mod history;
pub mod sizing;
pub mod stop;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sgswitch_config::{ConfigErrors, Host, LocalFiles, load_dir_reusing};
use tracing::{info, warn};

use crate::datapath::plan::{Plan, PlanError, Published, Zones};
use store::{Snapshot, StoreLink};

/// Why a configuration was not loaded (the running one stays).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Plan(#[from] PlanError),
}

/// Why a reload did not apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("reloads are queued already; try again when they are done")]
    Queued,
    #[error("the reload did not finish within {secs} s (a slow or blocked file?); it goes on, and the log will say how it ended")]
    Late { secs: u64 },
}

/// Loads `dir` (with a store's snapshot, read for `host`, if the fleet
/// has one: the plan then shows the snapshot's revision) into a plan,
/// keeping zones stable across loads and reusing the compiled
/// tables of the `previous` plan that did not change and, with a store,
/// the directory's own files as `local` holds them if none changed; also
/// the files as read, for the history and the store (not kept in the
/// plan).
///
/// # Errors
/// The configuration's file:line messages, or too many ports.
pub fn load(
    dir: &Path,
    store: Option<(&Snapshot, &str)>,
    zones: &mut Zones,
    generation: u32,
    previous: Option<&Plan>,
    local: &mut Option<LocalFiles>,
) -> Result<(Published, Vec<(String, String)>), LoadError> {
    let overlay = store.map(|(s, host)| s.overlay(host));
    let mut cfg = load_dir_reusing(dir, overlay.as_ref(), local)?;
    drop(overlay);
    let sources = std::mem::take(&mut cfg.sources);
    let (mut plan, gone) = Plan::build_after(cfg, zones, generation, previous)?;
    if let Some((s, _)) = store {
        plan.shown_generation = u64::try_from(s.revision).unwrap_or(0);
    }
    Ok((Published { plan, gone }, sources))
}

/// The control plane's counters: reloads and the configuration in force.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Plans published: 1 at start, +1 per applied reload. Flows and
    /// counters are revalidated by it.
    pub generation: AtomicU64,
    /// With a store: the store revision of the configuration in force,
    /// which is the generation operators see.
    pub revision: AtomicU64,
    /// Unix time of the last successful load, in milliseconds.
    pub loaded_at_ms: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Settings the configuration in force changes that take effect only
    /// at the next start (see [`restart_needed`]); written by reloads,
    /// read by the metrics endpoint and `ctl status`, never by a loop.
    pub needs_restart: std::sync::Mutex<Vec<String>>,
}

impl ControlStats {
    /// The generation shown in `ctl status`, the metrics and the flow
    /// log: the store revision in force with a store, else the count of
    /// plans.
    pub fn shown(&self) -> u64 {
        match self.revision.load(Ordering::Relaxed) {
            0 => self.generation.load(Ordering::Relaxed),
            r => r,
        }
    }
}

/// A reload to do, and who waits for its outcome.
#[derive(Debug)]
pub struct ReloadJob {
    why: String,
    reply: Option<SyncSender<Result<Reloaded, ReloadError>>>,
}

/// How a reload for a new store revision is asked for (its `why` starts
/// so).
pub const STORE_REVISION: &str = "store revision";

/// Reloads queued at most: a file change, a SIGHUP and a few `ctl reload`s.
const RELOAD_QUEUE: usize = 4;

/// The control plane of a running switch: the configuration in force, how
/// it got there, and the way to ask for another.
#[derive(Debug)]
pub struct Control {
    dir: PathBuf,
    /// `host.toml` as it was at start (the settings read once).
    host: Host,
    pub published: Arc<ArcSwap<Published>>,
    zones: Mutex<Zones>,
    /// With a store: the directory's own files as the last load read them
    /// (a store revision reuses them when none changed).
    local: Mutex<Option<LocalFiles>>,
    /// Whether a watcher follows the directory's files, and whether it saw
    /// an event (or lost track) since the last load began: a store
    /// revision with neither takes the files of the last load without
    /// looking at them.
    watched: AtomicBool,
    touched: Arc<AtomicBool>,
    pub stats: ControlStats,
    jobs: SyncSender<ReloadJob>,
    /// When the reload in progress started (ms since `epoch`, + 1), 0 when
    /// none is.
    reloading_since: AtomicU64,
    epoch: Instant,
    /// The fleet's store, when `[store]` names one.
    pub store: Option<Arc<StoreLink>>,
    /// Called after each new plan is published (the switch wakes its
    /// sleeping loops with it, so that they take the plan at once).
    published_hook: OnceLock<Hook>,
}

/// A function the control plane calls (see [`Control::on_publish`]).
struct Hook(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl Control {
    /// The control plane of a switch that started with `first` (loaded
    /// from `dir` with `zones`); the receiving end of its reload queue is
    /// for [`Control::run_reloader`].
    pub fn new(
        dir: &Path,
        first: Published,
        zones: Zones,
        epoch: Instant,
        store: Option<Arc<StoreLink>>,
    ) -> (Control, Receiver<ReloadJob>) {
        let (jobs, rx) = std::sync::mpsc::sync_channel(RELOAD_QUEUE);
        let host = first.plan.policy().config().host.clone();
        let stats = ControlStats::default();
        stats.generation.store(u64::from(first.plan.generation), Ordering::Relaxed);
        if store.is_some() {
            stats.revision.store(first.plan.shown_generation, Ordering::Relaxed);
        }
        stats.loaded_at_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        let control = Control {
            dir: dir.to_owned(),
            host,
            published: Arc::new(ArcSwap::from_pointee(first)),
            zones: Mutex::new(zones),
            local: Mutex::new(None),
            watched: AtomicBool::new(false),
            touched: Arc::new(AtomicBool::new(true)),
            stats,
            jobs,
            reloading_since: AtomicU64::new(0),
            epoch,
            store,
            published_hook: OnceLock::new(),
        };
        (control, rx)
    }

    /// Calls `f` after each plan published from now on (once set, it
    /// stays).
    pub fn on_publish(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.published_hook.set(Hook(Box::new(f)));
    }

    /// Records the files of a configuration just applied as `generation`
    /// in the history (`[history]` of that configuration); a failure is
    /// logged and changes nothing else.
    pub fn remember(&self, sources: &[(String, String)], generation: u32, h: &sgswitch_config::History) {
        let Some(path) = history::path(h) else { return };
        let now = i64::try_from(unix_ms(SystemTime::now())).unwrap_or(i64::MAX);
        match history::Store::open(&path, &self.dir).and_then(|mut s| s.record(sources, generation, now, h)) {
            Ok(id) => tracing::debug!(record = id, generation, "history: generation {generation} recorded as {id}"),
            Err(e) => warn!("history: {e}; generation {generation} is in force, but not recorded"),
        }
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the directory's watcher sets when it sees a file event or
    /// loses track; [`Control::watched`] says that it runs.
    pub fn touched(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.touched)
    }

    /// A watcher follows the directory from now on.
    pub fn watched(&self) {
        self.watched.store(true, Ordering::SeqCst);
    }

    /// Whether a reload is being worked out.
    pub fn reloading(&self) -> bool {
        self.reloading_since.load(Ordering::Relaxed) > 0
    }

    /// Loads, validates, compiles and publishes the directory; logs and
    /// counts the outcome. Serialised: the reloader calls it, and tests.
    ///
    /// # Errors
    /// The new configuration's messages; the running one stays.
    pub fn reload(&self, why: &str) -> Result<Reloaded, LoadError> {
        let mut zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        let next = self.stats.generation.load(Ordering::Relaxed) + 1;
        let t = Instant::now();
        let snapshot: Option<Arc<Snapshot>> = self.store.as_ref().and_then(|l| l.snapshot());
        let store = self.store.as_ref().zip(snapshot.as_deref()).map(|(l, s)| (s, l.settings.host.as_str()));
        let previous = self.published.load_full();
        // Only a new store revision takes the directory's files from the
        // last load (when their sizes and times say they did not change); a
        // file change, SIGHUP or `ctl reload` reads them all again.
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if !why.starts_with(STORE_REVISION) {
            *local = None;
        }
        // Taken before the load: an event during it is for the next one.
        let quiet = !self.touched.swap(false, Ordering::SeqCst) && self.watched.load(Ordering::SeqCst);
        if let (true, Some(l)) = (quiet, local.as_mut()) {
            l.unchanged();
        }
        let loaded = load(&self.dir, store, &mut zones, u32::try_from(next).unwrap_or(u32::MAX), Some(&previous.plan), &mut local);
        drop(local);
        drop(previous);
        match loaded {
            Ok((p, sources)) => {
                let shown = p.plan.shown_generation;
                let ports = p.plan.ports.len();
                let needs_restart = restart_needed(&self.host, &p.plan.policy().config().host);
                let history = p.plan.policy().config().host.history.clone();
                let p = Arc::new(p);
                self.published.store(Arc::clone(&p));
                if let Some(Hook(f)) = self.published_hook.get() {
                    f();
                }
                // Shown (and this host's ports published) only once in force:
                // a fleet compares hosts by the revision they show.
                if let Some(link) = &self.store {
                    link.applied(p.plan.policy().config(), &sources);
                    self.stats.revision.store(shown, Ordering::Relaxed);
                }
                drop(p);
                self.stats.generation.store(next, Ordering::Relaxed);
                self.stats.loaded_at_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                *self.stats.needs_restart.lock().unwrap_or_else(PoisonError::into_inner) = needs_restart.clone();
                info!(
                    generation = shown,
                    ports,
                    "reloaded ({why}): generation {shown}, {ports} ports, compiled in {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
                if !needs_restart.is_empty() {
                    warn!(
                        "generation {shown}: these settings of host.toml take effect at the next start, not now: {}",
                        needs_restart.join("; ")
                    );
                }
                self.remember(&sources, u32::try_from(next).unwrap_or(u32::MAX), &history);
                Ok(Reloaded { generation: shown, needs_restart })
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(link) = &self.store {
                    link.refused(snapshot.as_ref().map_or(0, |s| s.revision), &e.to_string());
                }
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
    pub fn request_reload(&self, why: &str, wait: Duration) -> Result<Reloaded, ReloadError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.jobs.try_send(ReloadJob { why: why.to_owned(), reply: Some(tx) }).map_err(|_| ReloadError::Queued)?;
        rx.recv_timeout(wait).map_err(|_| ReloadError::Late { secs: wait.as_secs() })?
    }

    /// Wakes the reloader to see the stop: a job it takes only to return
    /// (where the queue is full, the job it takes next wakes it as well).
    pub fn wake_reloader(&self) {
        let _ = self.jobs.try_send(ReloadJob { why: String::new(), reply: None });
    }

    /// Asks the reloader for a reload without waiting; one already queued
    /// and not started covers this one.
    pub fn queue_reload(&self, why: &str) {
        let _ = self.jobs.try_send(ReloadJob { why: why.to_owned(), reply: None });
    }

    /// The reloader: loads, compiles and publishes one configuration at a
    /// time, off the control socket's and the watcher's threads, so that a
    /// slow or blocked load holds up nothing but the reloads queued behind
    /// it. It sleeps until a job comes; returns when `stop` is set and
    /// [`Control::wake_reloader`] is called (or a reload in progress ends).
    pub fn run_reloader(&self, jobs: &Receiver<ReloadJob>, stop: &AtomicBool) {
        while let Ok(job) = jobs.recv() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
            self.reloading_since.store(since, Ordering::Relaxed);
            let r = self.reload(&job.why).map_err(ReloadError::from);
            self.reloading_since.store(0, Ordering::Relaxed);
            if let Some(reply) = job.reply {
                let _ = reply.try_send(r);
            }
        }
    }
}

/// Unix time in milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
/// start), `[reload]` (the watcher is set up at start), `[store]` (its
/// client is started before the first load) and the conntrack `capacity`
/// (each loop's table is allocated at start). Everything else
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
    diff("[datapath] fast_path", format!("{:?}", d.fast_path).to_lowercase(), format!("{:?}", e.fast_path).to_lowercase());
    diff("[datapath] frames", d.frames.to_string(), e.frames.to_string());
    diff("[datapath] ring_size", d.ring_size.to_string(), e.ring_size.to_string());
    diff(
        "[datapath] prefer_busy_poll",
        format!("{:?}", d.prefer_busy_poll).to_lowercase(),
        format!("{:?}", e.prefer_busy_poll).to_lowercase(),
    );
    diff("[datapath] busy_poll_budget", d.busy_poll_budget.to_string(), e.busy_poll_budget.to_string());
    diff("[datapath] gro_flush_timeout_us", d.gro_flush_timeout_us.to_string(), e.gro_flush_timeout_us.to_string());
    diff("[datapath] napi_defer_hard_irqs", d.napi_defer_hard_irqs.to_string(), e.napi_defer_hard_irqs.to_string());
    diff("[datapath] idle_spin_us", d.idle_spin_us.to_string(), e.idle_spin_us.to_string());
    diff("[datapath] napi_threads", format!("{:?}", d.napi_threads).to_lowercase(), format!("{:?}", e.napi_threads).to_lowercase());
    diff("[datapath] core_idle", format!("{:?}", d.core_idle).to_lowercase(), format!("{:?}", e.core_idle).to_lowercase());
    diff("[metrics] listen", a.metrics_listen.to_string(), b.metrics_listen.to_string());
    diff("[control] socket", a.control_socket.display().to_string(), b.control_socket.display().to_string());
    diff("[flow_log]", format!("{:?}", a.flow_log), format!("{:?}", b.flow_log));
    diff("[reload]", format!("{:?}", a.reload), format!("{:?}", b.reload));
    diff("[conntrack] capacity", a.conntrack.capacity.to_string(), b.conntrack.capacity.to_string());
    diff("[store]", format!("{:?}", a.store), format!("{:?}", b.store));
    out
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
        b.datapath.napi_threads = sgswitch_config::NapiThreads::Leave;
        b.datapath.core_idle = sgswitch_config::CoreIdle::Leave;
        let n = restart_needed(&a, &b);
        assert_eq!(n.len(), 6, "{n:?}");
        assert!(n.contains(&"[datapath] core_idle = leave (running auto)".to_owned()), "{n:?}");
        assert!(n.contains(&"[datapath] napi_threads = leave (running yield)".to_owned()), "{n:?}");
        b.store = Some(sgswitch_config::Store {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/p".into(),
            host: "h".into(),
            lease_ttl_seconds: 10,
            timeout_ms: 2000,
            ca_file: None,
            cert_file: None,
            key_file: None,
        });
        assert!(restart_needed(&a, &b).iter().any(|s| s.starts_with("[store] = Some(")));
        assert_eq!(n[0], "[datapath] cores = [0, 1] (running [0])");
        assert!(n.iter().any(|s| s.starts_with("[conntrack] capacity = 2048 (running 1048576)")), "{n:?}");
    }
}
