//! The poll loops (layer 4): each pinned to its core, owning its sockets,
//! its UMEM, its ports' conntrack zones and its pipeline; moving frames
//! between the sockets through the pipeline, handing frames whose next
//! stage or socket is another loop's over to it ([`forward`]), answering
//! the control socket between batches, and following its interfaces as they
//! come and go ([`io`]).
//!
//! Loop `i` owns the ports whose conntrack zone is `i` modulo the number of
//! loops (zones are stable per port id, so a port stays with its loop
//! across reloads), their sockets and their flows. The uplink's receive
//! queues are spread over the loops (queue `q` is loop `q` modulo the
//! loops; loop 0 has queue 0). A frame whose next stage or whose target
//! socket belongs to another loop is copied into that loop's bounded inbox
//! (a lock-free `ArrayQueue`): the sender's egress is judged where the frame
//! arrived, the receiver's ingress in the receiver's loop. A full inbox
//! drops the frame and counts it.

pub mod bell;
pub mod fast;
pub mod forward;
pub mod io;
pub mod napi;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sgswitch_config::Host;
use sgswitch_conntrack::{self as ct, FragSettings, Now, Tuple, Zone};
use tracing::warn;

use self::forward::{Inboxes, Peers, Task, Ways, deliver};
use self::io::{Io, KEEP_FOR_COPIES, LinkLog, Port};
use self::stats::{LoopStats, SocketStats};
use crate::datapath::plan::RuleLabel;
use crate::datapath::plan::{Plan, Published};
use crate::datapath::{Action, Kind, Outcome, Owner, Reason, Source, owner_of};
use crate::packet::flowlog::FlowLog;
use crate::packet::{Pipeline, capacity_share, conntrack_settings, offload};
use crate::port::xdp::{BusyPolled, Frame};
use crate::port::{PortError, Rings};

/// Frames taken from one rx ring at a time.
const BATCH: usize = 64;
/// How often a loop looks at its interfaces without a link event.
const LINK_CHECK_MS: u64 = 1000;
/// How often a loop copies the kernel's socket statistics and its
/// connection table's totals into its counters.
const STATS_EVERY_MS: u64 = 250;
/// Requests a loop takes from the control socket per iteration.
const REQUESTS_PER_ITERATION: usize = 4;
/// How long a loop that NAPI threads yield to (`[datapath] napi_threads`)
/// stays busy before it gives them a turn: a loop kept busy by other
/// sockets would otherwise leave them next to nothing of the core. Their
/// turn is one poll (up to 64 frames) for a sleep of a microsecond (up to
/// the timer slack, 50 us).
const STEP_ASIDE: Duration = Duration::from_millis(1);

/// How long a loop has been busy without a break (see [`STEP_ASIDE`]).
#[derive(Debug, Default)]
struct Streak {
    since: Option<Instant>,
}

impl Streak {
    /// A busy iteration ended at `now`: whether the loop has now been busy
    /// for [`STEP_ASIDE`] without a break (the streak then starts again).
    fn busy(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        let long = now.duration_since(since) >= STEP_ASIDE;
        if long {
            self.since = None;
        }
        long
    }

    /// An idle iteration: the streak is broken.
    fn idle(&mut self) {
        self.since = None;
    }
}

/// How long an idle loop (`busy_poll = false`) waits for its sockets when
/// work of its own is left (the sweep of expired connections behind, a
/// fast-path sync under way, requests queued), or when it has no doorbell
/// to be woken by (then it looks at its inbox this often).
const IDLE_WAIT: Duration = Duration::from_micros(200);
/// The longest a quiet loop sleeps: until a socket receives, its doorbell
/// rings (frames from another loop, a request, a new plan, a link event,
/// the stop: [`bell`]) or its next timer is due, and at most this long.
/// Each wake of a loop that shares its core with the kernel's receive work
/// is time that work waits (woken every 200 us, the loop put the fast
/// path's p99 latency at about twice the bare XDP redirect's;
/// `docs/design.md`). Every prompt rings the doorbell, so this only bounds
/// how late a lost prompt is made up for.
const QUIET_WAIT_MS: u64 = 100;

/// How long an idle loop waits at `now_ms`: [`IDLE_WAIT`] with work
/// `behind`, else until `due_ms` (its next timer), between [`IDLE_WAIT`]
/// and [`QUIET_WAIT_MS`].
fn idle_wait(behind: bool, now_ms: u64, due_ms: u64) -> Duration {
    if behind {
        return IDLE_WAIT;
    }
    Duration::from_millis(due_ms.saturating_sub(now_ms).min(QUIET_WAIT_MS)).max(IDLE_WAIT)
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

/// Why a loop did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    #[error("no poll loop {0}")]
    NoLoop(usize),
    #[error("poll loop {0} is busy with other requests; try again")]
    Busy(usize),
    #[error("poll loop {0} did not answer")]
    Silent(usize),
}

/// The poll loops as the rest of the switch sees them: their counters and
/// the queues requests reach them through.
#[derive(Debug)]
pub struct Loops {
    pub stats: Vec<Arc<LoopStats>>,
    requests: Vec<SyncSender<LoopRequest>>,
    /// Their inboxes, whose doorbells wake them for a request.
    inboxes: Arc<Inboxes>,
}

impl Loops {
    /// The loops of `stats` with their `inboxes`, and the receiving end of
    /// each one's request queue (for [`poll_loop`]).
    pub fn new(stats: Vec<Arc<LoopStats>>, inboxes: Arc<Inboxes>) -> (Loops, Vec<Receiver<LoopRequest>>) {
        let (requests, receivers) = stats.iter().map(|_| std::sync::mpsc::sync_channel::<LoopRequest>(8)).unzip();
        (Loops { stats, requests, inboxes }, receivers)
    }

    /// Asks loop `i` and waits for the answer (at most two seconds).
    ///
    /// # Errors
    /// The loop is gone or did not answer in time.
    pub fn ask<T>(&self, i: usize, make: impl FnOnce(SyncSender<T>) -> LoopRequest) -> Result<T, AskError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let q = self.requests.get(i).ok_or(AskError::NoLoop(i))?;
        q.try_send(make(tx)).map_err(|_| AskError::Busy(i))?;
        if let Some(inbox) = self.inboxes.get(i) {
            inbox.nudge();
        }
        rx.recv_timeout(Duration::from_secs(2)).map_err(|_| AskError::Silent(i))
    }

    /// Packets and bytes of one counter cell (`slot` is the zone + 1, 0 for
    /// traffic of no port; `direction`, `forwarded` and `reason` index
    /// [`crate::datapath::stats::PortCounters::by`]).
    pub fn cell(&self, slot: usize, direction: usize, forwarded: usize, reason: usize) -> (u64, u64) {
        self.stats.iter().fold((0, 0), |(p, b), l| {
            let c = &l.pipeline.ports[slot].by[direction][forwarded][reason];
            (p + c.packets.get(), b + c.bytes.get())
        })
    }

    /// Every rule's hits, current plan and earlier ones.
    pub fn rule_totals(&self) -> std::collections::BTreeMap<RuleLabel, u64> {
        let mut hits = std::collections::BTreeMap::new();
        for l in &self.stats {
            for (label, n) in l.pipeline.rules.load().totals() {
                *hits.entry(label).or_insert(0) += n;
            }
        }
        hits
    }

    /// Tracked flows of a zone.
    pub fn flows(&self, zone: Zone) -> u64 {
        self.stats.iter().map(|l| l.conntrack_entries.get(usize::from(zone)).map_or(0, |e| u64::from(e.load(Ordering::Relaxed)))).sum()
    }

    /// The loops that hold the flows of `zone` (its owner), or of every
    /// zone.
    pub fn loops_for(&self, zone: Option<Zone>) -> std::ops::Range<usize> {
        match zone {
            Some(_) if self.stats.is_empty() => 0..0,
            Some(z) => {
                let o = owner_of(z, self.stats.len());
                o..o + 1
            }
            None => 0..self.stats.len(),
        }
    }

    /// Every loop's sockets.
    pub fn sockets(&self) -> Vec<Arc<SocketStats>> {
        self.stats.iter().flat_map(|l| l.sockets.load().iter().map(Arc::clone).collect::<Vec<_>>()).collect()
    }
    /// The shutdown summary: per port and direction, packets by action and
    /// reason (summed over the loops); rule hits by rule.
    pub fn summary(&self, plan: &Plan) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "counters (packets):");
        let mut names: Vec<(usize, String)> = vec![(0, "(no port)".to_owned())];
        names.extend(plan.ports.iter().map(|p| (usize::from(p.zone) + 1, p.id.to_string())));
        for (slot, name) in &names {
            for (di, d) in ["ingress", "egress"].iter().enumerate() {
                for (fi, f) in ["dropped", "forwarded"].iter().enumerate() {
                    let parts: Vec<String> = Kind::ALL
                        .iter()
                        .filter_map(|k| {
                            let (n, _) = self.cell(*slot, di, fi, k.index());
                            (n > 0).then(|| format!("{}={n}", k.label()))
                        })
                        .collect();
                    if !parts.is_empty() {
                        let _ = writeln!(s, "  {name} {d} {f}: {}", parts.join(" "));
                    }
                }
            }
        }
        let mut hits = std::collections::BTreeMap::new();
        for (label, n) in self.rule_totals() {
            *hits.entry((label.group.to_string(), label.direction, label.name)).or_insert(0u64) += n;
        }
        for ((g, d, i), n) in hits.into_iter().filter(|(_, n)| *n > 0) {
            let _ = writeln!(s, "  rule {g}/{d}/{i}: {n} hits");
        }
        let tx_full: u64 = self.sockets().iter().map(|p| p.tx_full.get()).sum();
        if tx_full > 0 {
            let _ = writeln!(s, "  tx ring full: {tx_full} frames dropped");
        }
        s
    }
}

/// Offers the XDP fast path the flows of a batch from socket `s` that it
/// can take (see `fast.rs`): candidates the pipeline named, unicast to
/// another of this loop's sockets whose interface takes redirected
/// frames, and not finished by the loop.
#[expect(clippy::too_many_arguments, reason = "the loop's parts a batch touches, borrowed apart")]
fn offer_fast(
    fast: &mut fast::Fast,
    pipe: &Pipeline<u32>,
    socks: &[Port],
    by_port: &[Option<usize>],
    s: usize,
    rx: &[Frame],
    finished: &[bool],
    outs: &[Outcome],
    mem: &crate::port::xdp::Memory,
    stats: &LoopStats,
) {
    // A vhost-user guest's frames never pass an XDP program.
    if socks[s].vhost() {
        return;
    }
    for (i, (f, o)) in rx.iter().zip(outs).enumerate() {
        let Some((key, info)) = pipe.fast_candidate(i) else { continue };
        let Action::Forward(to) = o.action else { continue };
        let Some(t) = forward::socket_for(socks, by_port, to).filter(|&t| t != s) else { continue };
        if finished.get(i).copied().unwrap_or(true) || !socks[t].fast_target {
            continue;
        }
        fast.offer(socks[s].sock.ifindex(), mem.data(f), socks[t].sock.ifindex(), key, info, stats);
    }
}

/// What a poll loop shares with the rest of the switch.
#[derive(Debug)]
pub struct Context<'a> {
    pub host: &'a Host,
    pub uplink: &'a str,
    pub published: &'a ArcSwap<Published>,
    pub stop: &'a AtomicBool,
    /// Link events seen: the loop looks at its interfaces when it moves.
    pub link_events: &'a AtomicU64,
    pub inboxes: &'a Inboxes,
    /// The clock the loop's `Now` counts from.
    pub epoch: Instant,
}

/// The poll loop: owns its UMEM, the sockets of its ports and of its share
/// of the uplink's queues, their conntrack zones and its pipeline. Sends
/// `ready` once it polls every socket (or why it cannot start).
///
/// # Errors
/// The loop's UMEM or its uplink sockets could not be made.
#[expect(clippy::too_many_lines, reason = "the loop reads top to bottom: a batch per socket, the inbox, transmit, housekeeping, idle")]
pub fn poll_loop(
    cx: &Context<'_>,
    stats: &LoopStats,
    log: Option<FlowLog>,
    requests: &Receiver<LoopRequest>,
    ready: &std::sync::mpsc::Sender<Result<(), PortError>>,
) -> Result<(), PortError> {
    let host = cx.host;
    let me = Owner { index: stats.index, loops: cx.inboxes.len() };
    let peers = Peers { me, inboxes: cx.inboxes, stats };
    let inbox = &cx.inboxes[me.index];
    let core = stats.core;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        warn!("could not pin poll loop {} to core {core}; running unpinned", me.index);
    }
    let mut current = cx.published.load_full();
    let mut links = LinkLog::new();
    let started = Io::new(host).and_then(|mut io| io.connect(&current.plan, host, me, cx.uplink, true).map(|()| io));
    let mut io = match started {
        Ok(io) => io,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    stats.sockets.store(Arc::new(io.socks.iter().map(|p| Arc::clone(&p.stats)).collect()));
    stats.links.store(Arc::new(io.report(&current.plan, me, cx.uplink, &mut links)));
    // This loop's share of the host's connection capacity.
    let mut settings = conntrack_settings(host, seed());
    settings.capacity = capacity_share(host.conntrack.capacity, me.loops, me.index);
    stats.conntrack_capacity.set(u64::from(settings.capacity));
    let mut pipe: Pipeline<u32> = Pipeline::with_counters(settings, FragSettings::default(), Arc::clone(&stats.pipeline));
    pipe.set_owner(me);
    pipe.flow_log = log;
    pipe.adopt(&current.plan);
    // After the sockets: their interfaces' programs say whether the kernel
    // takes the fast path's.
    let mut fast = (host.datapath.fast_path != sgswitch_config::FastPath::Off)
        .then(crate::port::xdp::bpf::usable_maps)
        .flatten()
        .map(|m| fast::Fast::new(m, me.index));
    // Ready once every socket's fill ring holds frames: from here on a
    // frame that arrives has somewhere to go.
    let share = fill_share(io.mem.frames(), io.socks.len());
    for p in &mut io.socks {
        p.sock.refill(&mut io.mem, share);
    }
    let _ = ready.send(Ok(()));
    let mut rx: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut peer_src = [Source::Uplink; BATCH];
    let none = Outcome { action: Action::Drop, reason: Reason::Default, port: None, direction: sgswitch_config::Direction::Ingress };
    let mut outs = [none; BATCH];
    let mut stats_due = 0u64;
    let mut links_due = 0u64;
    let mut links_seen = cx.link_events.load(Ordering::Relaxed);
    let mut waits: Vec<libc::pollfd> = Vec::with_capacity(io.socks.len() + 8);
    let idle_spin = Duration::from_micros(u64::from(host.datapath.idle_spin_us));
    let mut last_busy = Instant::now();
    let mut streak = Streak::default();
    // A loop that spins when idle (`busy_poll`) never lets a thread of
    // idle priority run: it leaves them as they are.
    let mut napi = (host.datapath.napi_threads == sgswitch_config::NapiThreads::Yield && !host.datapath.busy_poll)
        .then(|| napi::NapiThreads::new(me.index, core));
    // The NAPI threads are looked for with the interfaces, once a second,
    // and at the next iteration when a socket's busy-poll state moves or
    // the statistics say a thread may have come (see `publish_stats`).
    let mut napi_now = false;
    while !cx.stop.load(Ordering::Relaxed) {
        let latest = cx.published.load();
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
        let ms = u64::try_from(cx.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // An interface made, deleted or changed (or a second passed, or a
        // reload): sockets of interfaces that went away are closed, and
        // those missing opened.
        let events = cx.link_events.load(Ordering::Relaxed);
        if reconnect || events != links_seen || ms >= links_due {
            let prompted = reconnect || events != links_seen;
            links_seen = events;
            links_due = ms + LINK_CHECK_MS;
            let lost = io.unlink_gone(host, || pipe.forget_held()).unwrap_or_else(|e| {
                warn!("loop {}: {e}", me.index);
                true
            });
            if lost && let Some(f) = &mut fast {
                f.retire();
            }
            // Opening is looked at on a prompt, after a loss, and while an
            // interface is down; the check of a quiet second costs one
            // ioctl per socket.
            if prompted || lost || !io.down.is_empty() {
                let _ = io.connect(&current.plan, host, me, cx.uplink, false);
                stats.sockets.store(Arc::new(io.socks.iter().map(|p| Arc::clone(&p.stats)).collect()));
                stats.links.store(Arc::new(io.report(&current.plan, me, cx.uplink, &mut links)));
            }
            napi_now = true;
        }
        if napi_now {
            napi_now = false;
            if let Some(n) = &mut napi
                && n.refresh(&io.unpolled_interfaces())
            {
                stats.napi_yielded.store(Arc::new(n.names()));
            }
        }
        let plan = &current.plan;
        let now = Now(ms);
        if let Some(f) = &mut fast {
            f.adopt(plan.id());
        }
        let mut busy = false;
        let Io { mem, socks, by_port, held, .. } = &mut io;
        let by_port = &by_port[..];
        let share = fill_share(mem.frames(), socks.len());
        for s in 0..socks.len() {
            // Completions back to the free list and the fill ring topped up
            // before the kernel is asked for frames (a busy-polled socket
            // receives during `receive`), and again after the batch, from
            // the frames it freed: a frame is never lost to an empty fill
            // ring while the loop holds free ones.
            socks[s].sock.reclaim(mem);
            socks[s].sock.refill(mem, share);
            let n = socks[s].sock.receive(mem, &mut rx, BATCH);
            // Its busy-poll state moves with its first frames: where they
            // say the kernel receives for it in its own context, a NAPI
            // thread on this core may be there to take, at once.
            napi_now |= busy_poll_moved(&socks[s].stats.busy_poll, socks[s].sock.busy_polled());
            if n == 0 {
                continue;
            }
            busy = true;
            stats.batch(n);
            let src = socks[s].src;
            let mut finished = [false; BATCH];
            if matches!(src, Source::Port(_)) {
                for (f, done) in rx.iter_mut().zip(finished.iter_mut()) {
                    *done = mem.with_data_mut(f, offload::finish_checksum);
                }
                let n = finished.iter().filter(|&&d| d).count() as u64;
                if n > 0 {
                    socks[s].stats.checksums_finished.add(n);
                }
            }
            {
                let items: [(Source, &[u8], u32); BATCH] =
                    std::array::from_fn(|i| rx.get(i).map_or((src, &[][..], 0), |f| (src, mem.data(f), f.number())));
                pipe.process_batch(plan, &items[..n], now, &mut outs[..n]);
            }
            if let Some(fp) = &mut fast {
                offer_fast(fp, &pipe, socks, by_port, s, &rx, &finished, &outs[..n], mem, stats);
            }
            let mut ways = Ways { plan, mem, socks, by_port, held, peers: &peers };
            for (f, o) in rx.drain(..).zip(&outs) {
                ways.dispatch(s, f, o);
            }
            for (h, o) in pipe.take_released() {
                ways.released(h, &o);
            }
            socks[s].sock.refill(mem, share);
        }
        // Frames the other loops handed over: sent on, or judged first.
        while rx.len() < BATCH
            && let Some(p) = inbox.parcels.pop()
        {
            busy = true;
            stats.handover_received.add(1);
            let bytes = &p.data[..usize::from(p.len)];
            match p.task {
                Task::Judge(q) => match mem.copy_in(bytes) {
                    Some(f) => {
                        peer_src[rx.len()] = Source::Peer(q);
                        rx.push(f);
                    }
                    None => stats.copy_failed.add(1),
                },
                Task::Send(to) => deliver(mem, socks, by_port, usize::MAX, bytes, to, stats),
            }
        }
        if !rx.is_empty() {
            let n = rx.len();
            {
                let items: [(Source, &[u8], u32); BATCH] =
                    std::array::from_fn(|i| rx.get(i).map_or((Source::Uplink, &[][..], 0), |f| (peer_src[i], mem.data(f), f.number())));
                pipe.process_batch(plan, &items[..n], now, &mut outs[..n]);
            }
            let mut ways = Ways { plan, mem, socks, by_port, held, peers: &peers };
            for (f, o) in rx.drain(..).zip(&outs) {
                ways.dispatch(usize::MAX, f, o);
            }
        }
        for p in socks.iter_mut() {
            let offered = p.pending.len();
            let sent = p.sock.transmit(mem, &mut p.pending);
            p.stats.tx_full.add((offered - sent) as u64);
            for f in p.pending.drain(..) {
                mem.release(f);
            }
        }
        pipe.tick(plan, now);
        if let Some(fp) = &mut fast {
            fp.sync(&mut pipe, plan, now, stats);
        }
        let mut ways = Ways { plan, mem, socks, by_port, held, peers: &peers };
        for (h, o) in pipe.take_released() {
            ways.released(h, &o);
        }
        let asked = answer(requests, &mut pipe, stats);
        if ms >= stats_due {
            stats_due = ms + STATS_EVERY_MS;
            napi_now |= publish_stats(stats, socks, &pipe, plan) && napi.is_some();
        }
        let yielding = napi.as_ref().is_some_and(napi::NapiThreads::any);
        if busy {
            stats.busy.add(1);
            last_busy = Instant::now();
            if streak.busy(last_busy) && yielding {
                // The NAPI threads that yield to this loop run only when
                // it waits: busy this long (frames from other sockets), it
                // gives them a turn.
                stats.stepped_aside.add(1);
                std::thread::sleep(Duration::from_micros(1));
            }
        } else {
            stats.idle.add(1);
            streak.idle();
            // No spinning while a NAPI thread yields to the loop: its
            // frames come only when the loop waits.
            if host.datapath.busy_poll || (!yielding && last_busy.elapsed() < idle_spin) {
                std::hint::spin_loop();
            } else {
                // Until a socket receives, the doorbell rings, or the next
                // timer is due.
                let behind = asked || !inbox.bell.works() || !pipe.conntrack.caught_up(now);
                let due = stats_due.min(links_due).min(fast.as_ref().map_or(u64::MAX, fast::Fast::due_ms));
                waits.clear();
                waits.extend(socks.iter_mut().map(|p| p.sock.poll_fd()));
                inbox.sleep(&mut waits, idle_wait(behind, ms, due));
            }
        }
    }
    publish_stats(stats, &mut io.socks, &pipe, &current.plan);
    io.held.release_all(&mut io.mem);
    // Sockets close here, detaching the XDP programs.
    drop(io);
    Ok(())
}

/// Each socket's share of the UMEM for its fill ring: all of it but the
/// frames kept for copies, in equal parts. Frames in flight (rx, tx and
/// completion rings) come out of the fill rings' shares and go back to
/// them, so the shares are targets, topped up as frames come back.
fn fill_share(frames: usize, sockets: usize) -> u32 {
    u32::try_from(frames.saturating_sub(KEEP_FOR_COPIES) / sockets.max(1)).unwrap_or(u32::MAX)
}

/// Copies the kernel's socket statistics and the table's totals into the
/// loop's counters (a socket's busy-poll state the loop keeps itself,
/// every iteration: [`busy_poll_moved`]). Returns whether the loop should
/// look for NAPI threads to take now rather than at its next second
/// ([`napi_may_compete`]).
fn publish_stats(stats: &LoopStats, socks: &mut [Port], pipe: &Pipeline<u32>, plan: &Plan) -> bool {
    let mut look = false;
    for p in socks.iter_mut() {
        let empty_before = p.stats.kernel[FILL_RING_EMPTY].get();
        if let Some(v) = p.sock.statistics() {
            for (c, v) in p.stats.kernel.iter().zip(v) {
                c.set(v);
            }
        }
        let polled = BusyPolled::from_u8(p.stats.busy_poll.load(Ordering::Relaxed));
        look |= napi_may_compete(polled, empty_before, p.stats.kernel[FILL_RING_EMPTY].get());
        if p.stats.port && !p.vhost() {
            warn_about_offloads(p);
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
    look
}

/// Where a socket's kernel statistics keep the frames that found its fill
/// ring empty (see `Rings::statistics`).
const FILL_RING_EMPTY: usize = 4;

/// Records a socket's busy-poll state in its counter (what the metrics
/// show); whether it moved. A move means a NAPI thread may have come for
/// the loop to take: its first frames said it cannot be busy polled, so
/// its interface's receive work runs in the kernel's own context, perhaps
/// a thread on this core (or busy polling was lost).
fn busy_poll_moved(counter: &std::sync::atomic::AtomicU8, now: BusyPolled) -> bool {
    counter.swap(now as u8, Ordering::Relaxed) != now as u8
}

/// Whether a NAPI thread may be competing with the loop, from one socket's
/// last two statistics: not busy polled (or not yet), it lost frames to an
/// empty fill ring (the sign of a thread at equal weight with the loop:
/// one pinned to the loop's core after the switch started, say). Looked
/// for once a second otherwise, such a thread would take most of the core
/// for up to a second under a flood, dropping what the loop has no time to
/// take.
fn napi_may_compete(polled: BusyPolled, empty_before: u64, empty_now: u64) -> bool {
    polled != BusyPolled::Yes && empty_now > empty_before
}

/// Says once per socket, in the log, that its VM's NIC has offloads on
/// that an AF_XDP port cannot take (docs/configuration.md, "VM ports on
/// tap"): checksums left to the host (which the loop finishes), and frames
/// too large for a UMEM frame, which the kernel drops (segments of a NIC
/// with TCP segmentation offload).
fn warn_about_offloads(p: &mut Port) {
    const CHECKSUMS: u8 = 1;
    const OVERSIZED: u8 = 2;
    let iface = &p.stats.interface;
    if p.warned & CHECKSUMS == 0 && p.stats.checksums_finished.get() > 0 {
        p.warned |= CHECKSUMS;
        warn!(
            interface = %iface,
            "{iface}: the VM leaves TCP/UDP checksums to the host (checksum offload on its NIC); the switch finishes them, but its NIC's segmentation offloads must be off (docs/configuration.md, \"VM ports on tap\")"
        );
    }
    // The kernel counts in rx_dropped both frames larger than a UMEM frame
    // and frames that found the fill ring empty (also counted on their own).
    let dropped = p.stats.kernel[0].get().saturating_sub(p.stats.kernel[4].get());
    if p.warned & OVERSIZED == 0 && dropped > 0 {
        p.warned |= OVERSIZED;
        warn!(
            interface = %iface,
            "{iface}: the kernel dropped {dropped} frames from it too large for the socket (segmentation offload on the VM's NIC?); start the VM's NIC with offloads off (docs/configuration.md, \"VM ports on tap\")"
        );
    }
}

/// Answers the control socket's requests (bounded work per iteration):
/// whether it answered as many as it may (more may be queued).
fn answer(requests: &Receiver<LoopRequest>, pipe: &mut Pipeline<u32>, stats: &LoopStats) -> bool {
    for _ in 0..REQUESTS_PER_ITERATION {
        let Ok(r) = requests.try_recv() else { return false };
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
    true
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    u64::try_from(t & u128::from(u64::MAX)).unwrap_or(0) ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_loop_sleeps_until_its_next_timer_within_bounds_and_briefly_with_work_behind() {
        let us = |d: Duration| d.as_micros();
        assert_eq!(us(idle_wait(false, 1000, 1004)), 4000, "until the next timer");
        let quiet = u128::from(QUIET_WAIT_MS) * 1000;
        assert_eq!(us(idle_wait(false, 1000, 60_000)), quiet, "never longer than QUIET_WAIT_MS");
        assert_eq!(us(idle_wait(false, 1000, u64::MAX)), quiet, "no timer at all");
        assert_eq!(us(idle_wait(false, 1000, 1000)), 200, "a timer due now");
        assert_eq!(us(idle_wait(false, 1000, 0)), 200, "a sync under way (due at 0)");
        assert_eq!(us(idle_wait(true, 1000, 60_000)), 200, "work left: as often as without a doorbell");
    }

    #[test]
    fn the_loop_looks_for_napi_threads_at_once_when_a_socket_says_one_may_have_come() {
        use BusyPolled::{Off, Pending, Unavailable, Yes};
        let moved = |was: BusyPolled, now: BusyPolled| busy_poll_moved(&std::sync::atomic::AtomicU8::new(was as u8), now);
        assert!(moved(Pending, Unavailable), "the first frames said: not busy polled");
        assert!(moved(Yes, Unavailable), "busy polling lost");
        assert!(!moved(Unavailable, Unavailable) && !moved(Pending, Pending) && !moved(Yes, Yes));
        let counter = std::sync::atomic::AtomicU8::new(Pending as u8);
        assert!(busy_poll_moved(&counter, Unavailable) && !busy_poll_moved(&counter, Unavailable), "recorded: said once");
        assert_eq!(BusyPolled::from_u8(counter.load(Ordering::Relaxed)), Unavailable);
        assert!(napi_may_compete(Unavailable, 10, 11), "frames lost to an empty fill ring");
        assert!(napi_may_compete(Off, 0, 64), "the same, busy polling not asked for");
        assert!(napi_may_compete(Pending, 0, 64), "the same, busy polling not engaged yet");
        assert!(!napi_may_compete(Unavailable, 10, 10), "nothing new: the next second will do");
        assert!(!napi_may_compete(Yes, 10, 500), "busy polled: no thread receives for it");
        assert!(!napi_may_compete(Pending, 5, 5));
    }

    #[test]
    fn a_loop_steps_aside_after_a_millisecond_busy_without_a_break_and_not_before() {
        let t = Instant::now();
        let us = Duration::from_micros;
        let mut s = Streak::default();
        assert!(!s.busy(t));
        assert!(!s.busy(t + us(999)), "not before a millisecond");
        assert!(s.busy(t + us(1000)), "a millisecond busy");
        // The streak starts again from the next busy iteration.
        assert!(!s.busy(t + us(1100)));
        assert!(!s.busy(t + us(2099)));
        assert!(s.busy(t + us(2100)));
        // An idle iteration breaks it.
        assert!(!s.busy(t + us(3000)));
        s.idle();
        assert!(!s.busy(t + us(3900)));
        assert!(!s.busy(t + us(4899)), "busy again only since 3,900 us");
        assert!(s.busy(t + us(4900)));
    }
}
