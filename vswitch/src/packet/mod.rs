//! The packet stages (layer 2): the per-packet pipeline (`architecture.md`),
//! one piece of code for `replay`, `run` and `trace`'s datapath verdict,
//! with its stages in the modules below: [`parse`], [`infra`]
//! (infrastructure traffic and anti-spoofing), [`flowcache`] (routes of
//! established flows), [`flowlog`] (the loop's side of the flow log). Pure:
//! no I/O, no threads, no clock (the caller passes `now`).
//!
//! ```text
//! parse -> infrastructure (ARP/ND/MLD/DHCP)? -> anti-spoofing (frames from VMs)
//!       -> forwarding target (destination MAC; uplink frames by destination IP)
//!       -> stage: sender's egress (frames from a VM), then receiver's ingress
//!          (frames to a VM), each: fragments -> related ICMP -> conntrack
//!          (zone = port) -> on a miss: blocked egress, classification
//! ```
//!
//! A [`Pipeline`] belongs to one poll loop and owns its conntrack table and
//! fragment tracker; the caller passes the current [`Plan`] and the clock.
//! `process` never allocates, locks, blocks or panics, whatever the bytes
//! (tests in `vswitch/tests/pipeline_*.rs`).
//!
//! Choices where `semantics.md` is silent (also in `docs/design.md`):
//! - Broadcast and multicast infrastructure frames (ARP, ND, MLD, DHCP) are
//!   flooded to the other ports and the uplink; other IP broadcast or
//!   multicast from a VM goes to the uplink only (after its egress check),
//!   and from the uplink it is dropped (`no-port`): delivering it to VMs
//!   would need every receiver's ingress judged.
//! - An ICMP error that is not related to a tracked flow is judged by the
//!   rules like any first packet, but creates no entry; so do ICMP messages
//!   other than echo.
//! - Blocked egress ports apply to the first packet of a flow toward the
//!   uplink (a flow the remote side opened from port 25 is not blocked).

use std::net::IpAddr;
use std::sync::Arc;

use sgswitch_config::{Direction, Host};
use sgswitch_conntrack::{self as ct, Follow, FragKey, FragSettings, Fragment, Fragments, Now, PacketInfo, Tuple, Zone};
use sgswitch_filter::{By, Decision, Key, Packet, Verdict};

pub mod flowcache;
pub mod flowlog;
pub mod infra;
pub mod offload;
pub mod parse;

use self::flowcache::{FlowCache, FlowKey, Route, Trace};
use self::flowlog::FlowLog;
use self::infra::FromVm;
use self::parse::{Frame, Icmp, Ip, L4, MacAddr, Net};
use crate::datapath::plan::{MAX_PORTS, Plan, PortIdx, PortPlan, mac_key, mac_key_is_group};
use crate::datapath::stats::{Counters, RuleHits};
use crate::datapath::{Action, Outcome, Owner, Reason, Source, To, dir_ix};

/// A frame's way through its stages: whose checks come next, and where it
/// goes if they pass. Its IP header view travels beside it by reference.
#[derive(Clone, Copy, Debug)]
struct Leg<H> {
    handle: H,
    len: u32,
    port: PortIdx,
    direction: Direction,
    /// After the sender's egress: the receiving port, whose ingress is next.
    then: Option<PortIdx>,
    to: To,
}

impl<H> Leg<H> {
    /// The receiving port's ingress, after the sender's egress passed.
    fn receiver(self, q: PortIdx) -> Leg<H> {
        Leg { port: q, direction: Direction::Ingress, then: None, to: To::Port(q), ..self }
    }
}

/// Fragments held by the tracker carry what the pipeline needs to finish
/// them when they are released.
#[derive(Clone, Copy, Debug)]
pub struct Pending<H> {
    leg: Leg<H>,
    ip: Ip,
}

/// Settings of a pipeline, from `host.toml`.
pub fn conntrack_settings(host: &Host, seed: u64) -> ct::Settings {
    ct::Settings {
        capacity: host.conntrack.capacity,
        per_zone_capacity: host.conntrack.per_port_capacity,
        zone_timeouts: Vec::new(),
        default_timeouts: host.conntrack.timeouts,
        tcp_strict: host.conntrack.tcp_strict,
        revalidate: host.on_policy_change == sgswitch_config::OnPolicyChange::Revalidate,
        seed,
    }
}

/// Loop `i`'s share of the host's connection capacity over `loops` loops:
/// the shares add up to `capacity` (`[conntrack] capacity` is the host's),
/// each at least 1.
pub fn capacity_share(capacity: u32, loops: usize, i: usize) -> u32 {
    let n = u32::try_from(loops.max(1)).unwrap_or(u32::MAX);
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    (capacity / n + u32::from(i < capacity % n)).max(1)
}

/// The connection table's settings under `plan`: the host's, with each
/// port's timeouts for its zone; the capacity and seed of `running`, which
/// a table keeps.
fn live_settings(plan: &Plan, running: &ct::Settings) -> ct::Settings {
    let mut s = conntrack_settings(&plan.policy().config().host, running.seed);
    s.capacity = running.capacity;
    s.zone_timeouts = vec![s.default_timeouts; plan.zones];
    for p in &plan.ports {
        if let Some(z) = s.zone_timeouts.get_mut(usize::from(p.zone)) {
            *z = p.timeouts;
        }
    }
    s
}

/// Expiry work per [`Pipeline::tick`].
const EXPIRE_BUDGET: usize = 64;

/// The pipeline of one poll loop. `H` is the caller's handle of a frame (a
/// UMEM address, a capture index).
#[derive(Debug)]
pub struct Pipeline<H> {
    pub conntrack: ct::Table,
    frags: Fragments<Pending<H>>,
    /// Shared with the metrics endpoint (see [`crate::datapath::stats`]).
    pub counters: Arc<Counters>,
    /// Where denied packets are logged, if anywhere.
    pub flow_log: Option<FlowLog>,
    /// Which zones this pipeline's loop owns: `zone % loops == me`.
    owner: Owner,
    /// The current plan's rule hits (also published in `counters`).
    hits: Arc<RuleHits>,
    /// The id of the plan last adopted (0: none).
    adopted: u64,
    /// Released fragments not yet finished (scratch, preallocated).
    scratch: Vec<(Pending<H>, bool)>,
    /// Finished outcomes of fragments that were held.
    released: Vec<(H, Outcome)>,
    /// What `process_batch` already worked out for the frame being decided.
    hint: Hint,
    /// The conntrack keys `process_batch` prepared for its current batch:
    /// each frame's first stage in the first half, the second stage of a
    /// frame from one port to another in the second.
    prepared: Box<[ct::Prepared; 2 * ct::BATCH]>,
    /// Routes of established flows, for `process_batch` (`None`: off).
    cache: Option<FlowCache>,
    cache_seed: u64,
    /// The stages of the frame being decided, for the flow cache.
    trace: Trace,
    /// Per frame of the last `process_batch` (up to [`ct::BATCH`]): the
    /// cache key and what conntrack read, when the frame was a UDP frame
    /// passed as established by its recorded route, which the XDP fast
    /// path can take from now on (`engine::fast`).
    fast: Box<[Option<(FlowKey, PacketInfo)>; ct::BATCH]>,
}

/// What [`Pipeline::process_batch`] computed for a frame while warming the
/// connection table, so that deciding it does not compute it again. Set
/// for the frame being decided only, and each part taken once.
#[derive(Clone, Copy, Debug, Default)]
struct Hint {
    /// An uplink frame's port by destination MAC.
    by_mac: Option<Option<PortIdx>>,
    /// Where in `Pipeline::prepared` the conntrack key and hash of each
    /// stage are, and the zone they were prepared in (the tuple is a
    /// function of the frame and the zone).
    prepared: [Option<(Zone, u8)>; 2],
}

impl Hint {
    /// Where the key of the stage in `zone` was prepared, taken once.
    fn take_prepared(&mut self, zone: Zone) -> Option<usize> {
        let at = self.prepared.iter_mut().find(|p| p.is_some_and(|(z, _)| z == zone))?;
        at.take().map(|(_, k)| usize::from(k))
    }
}

impl<H: Copy> Pipeline<H> {
    pub fn new(settings: ct::Settings, frag: FragSettings) -> Pipeline<H> {
        Pipeline::with_counters(settings, frag, Arc::new(Counters::default()))
    }

    /// A pipeline that counts into `counters` (shared with a scraper).
    pub fn with_counters(settings: ct::Settings, frag: FragSettings, counters: Arc<Counters>) -> Pipeline<H> {
        let held = frag.held as usize;
        // The flow cache's hash is keyed too, apart from the table's.
        let seed = settings.seed.rotate_left(17) ^ 0x5bd1_e995;
        Pipeline {
            conntrack: ct::Table::new(settings, MAX_PORTS),
            frags: Fragments::new(frag),
            counters,
            flow_log: None,
            owner: Owner::ALONE,
            hits: Arc::new(RuleHits::new(0, Arc::from([]))),
            adopted: 0,
            scratch: Vec::with_capacity(held + 1),
            released: Vec::with_capacity(held + 1),
            hint: Hint::default(),
            prepared: Box::new([ct::Prepared::default(); 2 * ct::BATCH]),
            cache: Some(FlowCache::new(flowcache::SLOTS, seed)),
            cache_seed: seed,
            trace: Trace::default(),
            fast: Box::new([None; ct::BATCH]),
        }
    }

    /// Gives the flow cache `slots` slots (rounded up to a power of two),
    /// or turns it off with 0. Allocates: call at setup, not per packet.
    pub fn set_flow_cache(&mut self, slots: usize) {
        let seed = self.cache_seed;
        self.cache = (slots > 0).then(|| FlowCache::new(slots, seed));
    }

    /// Makes this the pipeline of loop `owner`: it judges the ports whose
    /// zones the loop owns, and hands frames for the others over
    /// ([`Action::Handover`]).
    pub fn set_owner(&mut self, owner: Owner) {
        self.owner = owner;
        // Routes recorded under another owner may cross its loops.
        if let Some(c) = &mut self.cache {
            c.clear();
        }
    }

    #[inline]
    fn owns(&self, plan: &Plan, p: PortIdx) -> bool {
        plan.port(p).is_none_or(|port| self.owner.owns(port.zone))
    }

    pub fn fragments(&self) -> &Fragments<Pending<H>> {
        &self.frags
    }

    /// Forgets the fragments held for their first fragment, and those
    /// released but not yet taken: their handles are no longer valid (the
    /// loop replaced its UMEM).
    pub fn forget_held(&mut self) {
        self.frags.forget_held();
        self.released.clear();
    }

    /// Takes `plan`, if it is a new one: the connection table's settings
    /// that may change while it runs (timeouts, the host's and each port's,
    /// the per-port capacity, `tcp_strict`, `on_policy_change`) apply from
    /// the next packet on, and the rule-hit counters are made to fit it and
    /// published (the old plan's hits are folded by rule label). Call
    /// between batches, never per packet: this allocates once per reload.
    pub fn adopt(&mut self, plan: &Plan) {
        if self.adopted == plan.id() {
            return;
        }
        self.adopted = plan.id();
        self.conntrack.reconfigure(&live_settings(plan, self.conntrack.settings()));
        if self.hits.generation == plan.generation && self.hits.hits.len() == plan.rules_total() {
            return;
        }
        self.hits = Arc::new(RuleHits::new(plan.generation, Arc::clone(&plan.rule_labels)));
        self.counters.publish_rules(Arc::clone(&self.hits));
    }

    /// Amortised housekeeping, once per loop iteration: expires a bounded
    /// number of flows and releases fragments whose hold ran out.
    pub fn tick(&mut self, plan: &Plan, now: Now) {
        self.conntrack.expire(now, EXPIRE_BUDGET);
        let mut scratch = std::mem::take(&mut self.scratch);
        self.frags.expire(now, |p, pass| scratch.push((p, pass)));
        self.finish_released(plan, &mut scratch, now);
        self.scratch = scratch;
    }

    /// Frame `i` of the last [`Pipeline::process_batch`] (`i` below its
    /// length), if the XDP fast path can take its flow from now on: a UDP
    /// frame passed as established at every stage by its recorded route.
    /// Its cache key and what conntrack read of it.
    pub fn fast_candidate(&self, i: usize) -> Option<(FlowKey, PacketInfo)> {
        self.fast.get(i).copied().flatten()
    }

    /// Brings the flow cache slots of `key` into the cache, ahead of
    /// [`Pipeline::fast_account`]: the fast path's sync warms a slice of
    /// flows first, so that their misses overlap.
    pub fn fast_warm_route(&self, key: &FlowKey) {
        if let Some(cache) = &self.cache {
            cache.warm(cache.hash(key));
        }
    }

    /// Brings the connection entries of `key`'s route into the cache (its
    /// slots warmed by [`Pipeline::fast_warm_route`] before).
    pub fn fast_warm_entries(&self, plan: &Plan, key: &FlowKey) {
        let Some(cache) = &self.cache else { return };
        if let Some(route) = cache.get(key, cache.hash(key), plan.id()) {
            for &at in route.at.iter().take(usize::from(route.stages)) {
                self.conntrack.warm_at(at);
            }
        }
    }

    /// Accounts what the XDP fast path forwarded of the flow of `key`
    /// (frames like `info`) since the last call: `packets` frames, `bytes`
    /// in all. Its connection entries are updated as one frame of the flow
    /// updates them, at `now`, and its counters as `packets` frames count.
    /// Returns whether the fast path may keep the flow until `until`: its
    /// route still recorded under this plan, every entry ready now (else
    /// nothing is accounted: the frames were forwarded as the entries
    /// stood when they were ready) and still ready at `until` (a flow that
    /// would lapse before then is left to the loop, which lets it lapse on
    /// time).
    pub fn fast_account(
        &mut self,
        plan: &Plan,
        key: &FlowKey,
        info: &PacketInfo,
        (packets, bytes): (u64, u64),
        now: Now,
        until: Now,
    ) -> bool {
        let Some(cache) = &self.cache else { return false };
        let Some(route) = cache.get(key, cache.hash(key), plan.id()) else { return false };
        if packets > 0 {
            match self.follow(plan, &route, info, now) {
                Some(o) if o.reason == Reason::Established => self.count_n(plan, &o, packets, bytes),
                _ => return false,
            }
        }
        route.at.iter().take(usize::from(route.stages)).all(|&at| self.conntrack.ready_at(at, until, plan.generation).is_some())
    }

    /// Outcomes of held fragments that were decided since the last call.
    pub fn take_released(&mut self) -> impl Iterator<Item = (H, Outcome)> + '_ {
        self.released.drain(..)
    }

    /// Decides one frame.
    pub fn process(&mut self, plan: &Plan, src: Source, data: &[u8], now: Now, handle: H) -> Outcome {
        self.decide(plan, src, &parse::parse(data), data.len(), now, handle)
    }

    /// Decides a batch of frames, in order, exactly as [`Pipeline::process`]
    /// one by one would: `out[i]` is the outcome of `frames[i]`. All frames
    /// are parsed first and their connection entries brought into the
    /// cache together, so the table's cache misses overlap.
    ///
    /// # Panics
    /// If `out` is shorter than `frames`.
    pub fn process_batch(&mut self, plan: &Plan, frames: &[(Source, &[u8], H)], now: Now, out: &mut [Outcome]) {
        assert!(out.len() >= frames.len(), "one outcome per frame");
        if let Some(cache) = &mut self.cache {
            cache.adopt(plan.id());
        }
        // Only the places this batch can fill (a one-frame batch clears one).
        if let Some(f) = self.fast.get_mut(..frames.len().min(ct::BATCH)) {
            f.fill(None);
        }
        for (c, (chunk, outs)) in frames.chunks(ct::BATCH).zip(out.chunks_mut(ct::BATCH)).enumerate() {
            // Frames of the flow cache's shape, read at their fixed offsets,
            // and their slots warmed together.
            let mut fast = [None; ct::BATCH];
            if let Some(cache) = &self.cache {
                for (k, (src, data, _)) in fast.iter_mut().zip(chunk) {
                    // A TCP segment without ACK (mostly a connection's
                    // first SYN) has no route to take.
                    if let Some(x) = parse::flow_v4(data)
                        && (x.proto != parse::TCP || x.tcp_flags & ct::tcp::flags::ACK != 0)
                        && let Some(key) = FlowKey::of(*src, &x)
                    {
                        let h = cache.hash(&key);
                        cache.warm(h);
                        *k = Some((key, h, FlowKey::info(&x)));
                    }
                }
            }
            // The others parsed (`flow_v4` reads what `parse` would), their
            // connection entries prepared; a frame with a recorded route
            // needs only its entries.
            let mut parsed = [None; ct::BATCH];
            let mut routes = [None; ct::BATCH];
            let mut hints = [Hint::default(); ct::BATCH];
            let (mut n, mut m) = (0, ct::BATCH);
            for (((((src, data, _), p), r), hint), k) in
                chunk.iter().zip(parsed.iter_mut()).zip(routes.iter_mut()).zip(hints.iter_mut()).zip(&fast)
            {
                if let (Some((key, h, _)), Some(cache)) = (k, &self.cache)
                    && let Some(route) = cache.get(key, *h, plan.id())
                {
                    for &at in &route.at[..usize::from(route.stages)] {
                        self.conntrack.warm_at(at);
                    }
                    *r = Some(route);
                    continue;
                }
                // The frame's tuple in the zone of each stage: a shaped
                // frame's from its key (the frame itself is made when it is
                // decided), another's from the frame parsed.
                let (zones, t) = match k {
                    Some((key, _, _)) => (stage_zones(plan, *src, key.dst_key(), hint), key.tuple(0)),
                    None => match p.insert(parse_any(data)) {
                        Ok(Frame { net: Net::Ip(ip), dst, .. }) => (stage_zones(plan, *src, mac_key(dst), hint), tuple(ip, 0)),
                        _ => continue,
                    },
                };
                for (stage, zone) in zones.into_iter().enumerate() {
                    let Some(zone) = zone else { continue };
                    let at = if stage == 0 { &mut n } else { &mut m };
                    self.prepared[*at] = self.conntrack.prepare(&Tuple { zone, ..t });
                    hint.prepared[stage] = u8::try_from(*at).ok().map(|k| (zone, k));
                    *at += 1;
                }
            }
            self.conntrack.warm_prepared(&mut self.prepared[..n]);
            self.conntrack.warm_prepared(&mut self.prepared[ct::BATCH..m]);
            // Whether a route was recorded since the lookups above: until
            // one is, what they found (or not) is what the cache holds.
            let mut recorded = false;
            for (j, (((((&(src, data, handle), p), r), o), hint), k)) in
                chunk.iter().zip(&parsed).zip(&routes).zip(outs.iter_mut()).zip(&hints).zip(&fast).enumerate()
            {
                if let Some((key, h, info)) = k
                    && let Some(route) = match (recorded, &self.cache) {
                        (false, _) => *r,
                        (true, Some(cache)) => cache.get(key, *h, plan.id()),
                        (true, None) => None,
                    }
                    && let Some(done) = self.cached(plan, &route, key, info, now)
                {
                    self.counters.flow_cache_hits.add(1);
                    if c == 0 && key.is_udp() && matches!(done.action, Action::Forward(_)) {
                        self.fast[j] = Some((*key, *info));
                    }
                    *o = done;
                    continue;
                }
                // A frame whose route was found above, but whose entries were
                // not ready, was not parsed there.
                let made;
                let f = match p {
                    Some(f) => f,
                    None => {
                        made = read(data, k.as_ref());
                        &made
                    }
                };
                self.hint = *hint;
                self.trace = Trace::default();
                *o = self.decide(plan, src, f, data.len(), now, handle);
                if let Some((key, h, _)) = k {
                    self.counters.flow_cache_misses.add(1);
                    if let (Action::Forward(to), Reason::Established, Some(cache)) = (o.action, o.reason, &mut self.cache) {
                        recorded |= cache.insert(*key, *h, plan.id(), &self.trace, to);
                    }
                }
            }
            self.hint = Hint::default();
        }
    }

    /// Decides a frame by the route the flow cache recorded for its key:
    /// each stage's connection entry updated as the stage would, the
    /// outcome the last stage would give, counted (and a drop offered to
    /// the flow log) as `decide` does. `None` when a stage's entry is not
    /// ready: then nothing has changed, and the frame is decided from
    /// scratch.
    #[inline]
    fn cached(&mut self, plan: &Plan, route: &Route, key: &FlowKey, info: &PacketInfo, now: Now) -> Option<Outcome> {
        let out = self.follow(plan, route, info, now)?;
        // A drop: the flow log takes the packet as `parse` reads it, which
        // the key and the conntrack view give back.
        if out.action == Action::Drop {
            self.settle(plan, &key.flow(info).ip(), &out, info.wire_len, now);
        } else {
            self.count(plan, &out, info.wire_len);
        }
        Some(out)
    }

    /// A frame like `info` through a recorded route's stages: each stage's
    /// connection entry updated as the stage would, and the outcome the
    /// last stage would give (a drop as invalid at the first stage whose
    /// state machine refuses it), not counted. `None` when a stage's entry
    /// is not ready: then nothing has changed.
    #[inline]
    fn follow(&mut self, plan: &Plan, route: &Route, info: &PacketInfo, now: Now) -> Option<Outcome> {
        let stages = usize::from(route.stages);
        let mut ready = [None; 2];
        for (i, r) in ready.iter_mut().enumerate().take(stages) {
            // The entry as the recorded frame's stage reached it: the same
            // flow, in the same direction (the key says both).
            *r = Some(self.conntrack.ready_at(route.at[i], now, plan.generation)?);
        }
        let mut out = None;
        for (i, r) in ready.iter().enumerate() {
            let Some(r) = *r else { break };
            let (port, direction) = (Some(route.ports[i]), route.direction(i));
            // `ready_at` leaves a TCP segment's judgement to the state
            // machine: established, or invalid for the connection's state.
            if self.conntrack.update_at(r, info, now) != ct::Outcome::Established {
                out = Some(Outcome { action: Action::Drop, reason: Reason::Invalid, port, direction });
                break;
            }
            out = Some(Outcome { action: Action::Forward(route.to()), reason: Reason::Established, port, direction });
        }
        out
    }

    fn decide(&mut self, plan: &Plan, src: Source, parsed: &Result<Frame, parse::Malformed>, len: usize, now: Now, handle: H) -> Outcome {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        match parsed {
            Ok(frame) => {
                let o = self.frame(plan, src, frame, now, handle);
                match &frame.net {
                    Net::Ip(ip) => self.settle(plan, ip, &o, len, now),
                    _ => self.count(plan, &o, len),
                }
                o
            }
            Err(_) => {
                let (port, direction) = match src {
                    Source::Port(p) => (Some(p), Direction::Egress),
                    Source::Peer(p) => (Some(p), Direction::Ingress),
                    Source::Uplink => (None, Direction::Ingress),
                };
                let o = Outcome { action: Action::Drop, reason: Reason::Malformed, port, direction };
                self.count(plan, &o, len);
                o
            }
        }
    }

    /// What follows an IP packet's outcome: a drop decided for a port is
    /// offered to the flow log (a port's log: traffic of no port, such as
    /// the uplink's multicast, is counted only), and the outcome is
    /// counted.
    #[inline]
    fn settle(&mut self, plan: &Plan, ip: &Ip, o: &Outcome, len: u32, now: Now) {
        if o.action == Action::Drop
            && o.port.is_some()
            && let Some(log) = self.flow_log.as_mut()
        {
            log.offer(now, plan.generation, o, ip);
        }
        self.count(plan, o, len);
    }

    #[inline(always)]
    fn count(&mut self, plan: &Plan, o: &Outcome, len: u32) {
        self.count_n(plan, o, 1, u64::from(len));
    }

    /// [`Pipeline::count`] for `packets` frames of `bytes` in all.
    #[inline(always)]
    fn count_n(&mut self, plan: &Plan, o: &Outcome, packets: u64, bytes: u64) {
        // A held fragment is counted when released, a handed-over frame by
        // the loop that finishes it.
        if matches!(o.action, Action::Held | Action::Handover(_)) {
            return;
        }
        let slot = o.port.and_then(|p| plan.port(p)).map_or(0, |p| usize::from(p.zone) + 1);
        let fwd = usize::from(matches!(o.action, Action::Forward(_)));
        if let Some(c) = self.counters.ports.get(slot) {
            let cell = &c.by[dir_ix(o.direction)][fwd][o.reason.kind().index()];
            cell.packets.add(packets);
            cell.bytes.add(bytes);
        }
        if let Reason::Rule(r) = o.reason
            && self.hits.generation == plan.generation
            && let Some(h) = self.hits.hits.get(plan.rule_slot(r))
        {
            h.add(packets);
        }
    }

    fn frame(&mut self, plan: &Plan, src: Source, f: &Frame, now: Now, handle: H) -> Outcome {
        match src {
            Source::Port(p) => self.port_frame(plan, p, f, now, handle),
            Source::Uplink => self.uplink_frame(plan, f, now, handle),
            Source::Peer(q) => match &f.net {
                Net::Ip(ip) => {
                    let leg = Leg { handle, len: f.len, port: q, direction: Direction::Ingress, then: None, to: To::Port(q) };
                    self.stages(plan, ip, leg, now)
                }
                // Only IP frames are handed over for judging.
                _ => Outcome { action: Action::Drop, reason: Reason::Malformed, port: Some(q), direction: Direction::Ingress },
            },
        }
    }

    fn port_frame(&mut self, plan: &Plan, p: PortIdx, f: &Frame, now: Now, handle: H) -> Outcome {
        let drop = |reason| Outcome { action: Action::Drop, reason, port: Some(p), direction: Direction::Egress };
        let Some(port) = plan.port(p) else { return drop(Reason::NoPort) };
        // A VM port is an untagged access port.
        if f.vlan.is_some() {
            return drop(Reason::Tagged);
        }
        if port.spoof_check && port.mac.is_some_and(|m| m != f.src) {
            return drop(Reason::Spoof);
        }
        let to = egress_target(plan, p, &f.dst);
        match &f.net {
            Net::Arp(a) if is_arp_op(a.op) => {
                let own = a.sender_ip.is_unspecified() || port.owns(IpAddr::V4(a.sender_ip));
                if port.spoof_check && (port.mac.is_some_and(|m| m != a.sender_mac) || !own) {
                    return drop(Reason::Spoof);
                }
                pass_infra(to, Some(p), Direction::Egress)
            }
            Net::Arp(_) | Net::Other(_) => drop(Reason::NonIp),
            Net::Ip(ip) => {
                match infra::from_vm(plan, p, port, f, ip) {
                    FromVm::Pass(to) => return pass_infra(to, Some(p), Direction::Egress),
                    FromVm::Spoof => return drop(Reason::Spoof),
                    FromVm::Judge => {}
                }
                if port.spoof_check && !port.owns_any(ip.src) {
                    return drop(Reason::Spoof);
                }
                let to = match to {
                    // IP broadcast and multicast go to the uplink only.
                    To::Flood { .. } => To::Uplink,
                    t => t,
                };
                let then = match to {
                    To::Port(q) => Some(q),
                    _ => None,
                };
                let leg = Leg { handle, len: f.len, port: p, direction: Direction::Egress, then, to };
                self.stages(plan, ip, leg, now)
            }
        }
    }

    fn uplink_frame(&mut self, plan: &Plan, f: &Frame, now: Now, handle: H) -> Outcome {
        let drop = |reason| Outcome { action: Action::Drop, reason, port: None, direction: Direction::Ingress };
        let by_mac = match self.hint.by_mac.take() {
            Some(q) => q,
            None if is_group(&f.dst) => None,
            None => plan.port_by_mac(&f.dst),
        };
        // The switch has no VLANs: a tagged frame is for no port.
        if f.vlan.is_some() {
            return drop(Reason::Tagged);
        }
        match &f.net {
            Net::Arp(a) if is_arp_op(a.op) => match by_mac {
                Some(q) => pass_infra(To::Port(q), Some(q), Direction::Ingress),
                None if is_group(&f.dst) => pass_infra(To::Flood { except: None, uplink: false }, None, Direction::Ingress),
                None => drop(Reason::NoPort),
            },
            Net::Arp(_) | Net::Other(_) => drop(Reason::NonIp),
            Net::Ip(ip) => {
                let q = by_mac.or_else(|| if is_group(&f.dst) { None } else { plan.port_by_ip(ip.dst) });
                if let Some(to) = infra::from_uplink(plan, f, ip, q) {
                    let port = match to {
                        To::Port(q) => Some(q),
                        _ => None,
                    };
                    return pass_infra(to, port, Direction::Ingress);
                }
                let Some(q) = q else { return drop(Reason::NoPort) };
                let leg = Leg { handle, len: f.len, port: q, direction: Direction::Ingress, then: None, to: To::Port(q) };
                self.stages(plan, ip, leg, now)
            }
        }
    }

    /// Runs `leg`'s stage and, when it passes and a receiving port follows,
    /// that port's ingress stage.
    #[inline(always)]
    fn stages(&mut self, plan: &Plan, ip: &Ip, mut leg: Leg<H>, now: Now) -> Outcome {
        loop {
            // The sender's egress runs where its frame arrived (the loop
            // owns that port's socket); a receiver's ingress runs in the
            // loop that owns the receiver's zone.
            if leg.direction == Direction::Ingress && !self.owns(plan, leg.port) {
                return Outcome {
                    action: Action::Handover(leg.port),
                    reason: Reason::Default,
                    port: Some(leg.port),
                    direction: leg.direction,
                };
            }
            self.trace.stage();
            let out = self.stage(plan, ip, &leg, now);
            match (out.action, leg.then) {
                (Action::Forward(_), Some(q)) => leg = leg.receiver(q),
                _ => return out,
            }
        }
    }

    /// One port's checks in one direction.
    #[inline(always)]
    fn stage(&mut self, plan: &Plan, ip: &Ip, leg: &Leg<H>, now: Now) -> Outcome {
        let (p, d) = (leg.port, leg.direction);
        let done = |action, reason| Outcome { action, reason, port: Some(p), direction: d };
        let pass = |reason| done(Action::Forward(leg.to), reason);
        let drop = |reason| done(Action::Drop, reason);
        let Some(port) = plan.port(p) else { return drop(Reason::NoPort) };
        let (remote, _) = sides(ip, d);
        if plan.infra_allowed(remote) {
            return pass(Reason::Infrastructure);
        }
        let zone = port.zone;
        let fragment = ip.frag.map(|fr| Fragment {
            key: FragKey { zone, proto: ip.proto, src: ip.src, dst: ip.dst, id: fr.id },
            offset: fr.offset,
            len: fr.len,
        });
        if let Some(fr) = fragment.filter(|fr| !fr.is_first()) {
            return match self.frags.follower(&fr, Pending { leg: *leg, ip: *ip }, now) {
                Follow::Pass => pass(Reason::Fragment),
                Follow::Drop => drop(Reason::Fragment),
                Follow::Held => done(Action::Held, Reason::Fragment),
            };
        }
        let out = self.judge_first(plan, port, ip, leg, now);
        let Some(fr) = fragment else { return out };
        let allowed = matches!(out.action, Action::Forward(_));
        // Released fragments are other frames: nothing of this one's hint.
        self.hint = Hint::default();
        let mut scratch = std::mem::take(&mut self.scratch);
        let passes = self.frags.first(&fr, allowed, now, |h, ok| scratch.push((h, ok)));
        self.finish_released(plan, &mut scratch, now);
        self.scratch = scratch;
        if allowed && !passes { drop(Reason::Fragment) } else { out }
    }

    /// Finishes fragments the tracker released: their remaining stages.
    fn finish_released(&mut self, plan: &Plan, scratch: &mut Vec<(Pending<H>, bool)>, now: Now) {
        for (Pending { leg, ip }, ok) in scratch.drain(..) {
            let out = if ok {
                let out =
                    Outcome { action: Action::Forward(leg.to), reason: Reason::Fragment, port: Some(leg.port), direction: leg.direction };
                match leg.then {
                    Some(q) => self.stages(plan, &ip, leg.receiver(q), now),
                    None => out,
                }
            } else {
                Outcome { action: Action::Drop, reason: Reason::Fragment, port: Some(leg.port), direction: leg.direction }
            };
            if out.action != Action::Held {
                self.count(plan, &out, leg.len);
                // Bounded by the hold size, reserved at construction.
                if self.released.len() < self.released.capacity() {
                    self.released.push((leg.handle, out));
                }
            }
        }
    }

    /// The first packet of a flow, or a packet of a tracked one: related
    /// ICMP, conntrack, and the rules on a miss.
    fn judge_first(&mut self, plan: &Plan, port: &PortPlan, ip: &Ip, leg: &Leg<H>, now: Now) -> Outcome {
        let (p, d) = (leg.port, leg.direction);
        let done = |action, reason| Outcome { action, reason, port: Some(p), direction: d };
        let verdict = |dec: Decision| match dec.verdict {
            Verdict::Allow => done(Action::Forward(leg.to), Reason::of(dec)),
            Verdict::Deny => done(Action::Drop, Reason::of(dec)),
        };
        let to_uplink = leg.to == To::Uplink;
        let tables = plan.compiled.port(usize::from(p));
        let classify = |pkt: &Packet| {
            tables.map_or(Decision { verdict: Verdict::Deny, by: By::Default }, |t| t.get(pkt.direction).classify(&Key::of(pkt)))
        };
        if let L4::Icmp(icmp) = ip.l4
            && icmp.echo_id.is_none()
        {
            if let Some(inner) = icmp.inner() {
                let t =
                    Tuple { zone: port.zone, proto: inner.proto, src: inner.src, dst: inner.dst, sport: inner.sport, dport: inner.dport };
                if self.conntrack.related(&t, now) {
                    return done(Action::Forward(leg.to), Reason::Related);
                }
            }
            return verdict(classify(&packet(ip, d)));
        }
        if ip.frag.is_some() && ip.l4 == L4::None && matches!(ip.proto, parse::TCP | parse::UDP | parse::ICMP | parse::ICMPV6) {
            // A first fragment too short for its transport header: the
            // fragment tracker drops it as tiny.
            return done(Action::Drop, Reason::Fragment);
        }
        let t = tuple(ip, port.zone);
        let info = packet_info(ip, leg.len);
        let blocked = d == Direction::Egress && to_uplink && !port.allow_blocked_egress;
        let mut reason = None;
        let prepared = match self.hint.take_prepared(port.zone) {
            Some(at) => self.prepared[at],
            None => self.conntrack.prepare(&t),
        };
        let outcome = self.conntrack.track_prepared(&t, prepared, &info, now, plan.generation, |orig| {
            // The flow's first packet, from the opener's side: in this
            // packet's direction if it is this packet's orientation.
            let od = if orig.src == t.src && orig.sport == t.sport { d } else { flip(d) };
            if blocked && od == Direction::Egress && plan.blocked(orig.proto, orig.dport) {
                reason = Some(Reason::BlockedEgress);
                return false;
            }
            let dec = classify(&tuple_packet(orig, od, ip));
            reason = Some(Reason::of(dec));
            dec.verdict == Verdict::Allow
        });
        match outcome {
            ct::Outcome::Established => {
                self.trace.established(p, d, self.conntrack.last_hit());
                done(Action::Forward(leg.to), Reason::Established)
            }
            ct::Outcome::New => done(Action::Forward(leg.to), reason.unwrap_or(Reason::Default)),
            ct::Outcome::Denied => {
                // Denied without a judgement: a flow a reload revoked; name
                // what the rules say of this packet now.
                let r = reason.unwrap_or_else(|| Reason::of(classify(&packet(ip, d))));
                done(Action::Drop, r)
            }
            ct::Outcome::Invalid => done(Action::Drop, Reason::Invalid),
            ct::Outcome::Full => done(Action::Drop, Reason::ConntrackFull),
        }
    }
}

/// The zones of a frame's stages. The first: its port's for a frame from
/// a port or handed over, the port its destination MAC (as [`mac_key`]
/// spells it) names for one from the uplink, which `hint` keeps for
/// deciding it. The second, for a frame from a port to another port by
/// its destination MAC: that port's (its ingress stage, if the egress
/// stage lets the frame on).
#[inline]
fn stage_zones(plan: &Plan, src: Source, dst_key: u64, hint: &mut Hint) -> [Option<Zone>; 2] {
    let zone = |p: Option<PortIdx>| p.and_then(|p| plan.port(p)).map(|p| p.zone);
    match src {
        Source::Port(p) if !mac_key_is_group(dst_key) => [zone(Some(p)), zone(plan.port_by_mac_key(dst_key).filter(|&q| q != p))],
        Source::Port(p) | Source::Peer(p) => [zone(Some(p)), None],
        Source::Uplink if mac_key_is_group(dst_key) => [None; 2],
        Source::Uplink => {
            let q = plan.port_by_mac_key(dst_key);
            hint.by_mac = Some(q);
            [zone(q), None]
        }
    }
}

fn flip(d: Direction) -> Direction {
    match d {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    }
}

/// (remote, local) of a packet seen in direction `d`.
fn sides(ip: &Ip, d: Direction) -> (IpAddr, IpAddr) {
    match d {
        Direction::Ingress => (ip.src, ip.dst),
        Direction::Egress => (ip.dst, ip.src),
    }
}

/// A packet's flow tuple in `zone`.
pub(crate) fn tuple(ip: &Ip, zone: Zone) -> Tuple {
    let (sport, dport) = ip.ports();
    Tuple { zone, proto: ip.proto, src: ip.src, dst: ip.dst, sport, dport }
}

/// A frame as `parse` reads it. A frame [`parse::flow_v4`] read, whose
/// cache key and conntrack view were made of it, is rebuilt from those
/// (the same frame, and its bytes not read again).
#[inline(always)]
fn read(data: &[u8], fast: Option<&(FlowKey, u64, PacketInfo)>) -> Result<Frame, parse::Malformed> {
    match fast {
        Some((key, _, info)) => Ok(key.flow(info).frame()),
        None => parse_any(data),
    }
}

/// [`parse::parse`], kept out of the batch loop's body.
#[inline(never)]
fn parse_any(data: &[u8]) -> Result<Frame, parse::Malformed> {
    parse::parse(data)
}

/// What conntrack reads of a packet of `len` bytes beyond its tuple.
fn packet_info(ip: &Ip, len: u32) -> PacketInfo {
    match ip.l4 {
        L4::Tcp(tcp) => PacketInfo { tcp_flags: tcp.flags, tcp_seq: tcp.seq, payload_len: tcp.payload_len, wire_len: len },
        L4::Udp { payload_len, .. } => PacketInfo { payload_len, wire_len: len, ..PacketInfo::default() },
        _ => PacketInfo { wire_len: len, ..PacketInfo::default() },
    }
}

/// The policy's view of a packet in direction `d`.
fn packet(ip: &Ip, d: Direction) -> Packet {
    tuple_packet(&tuple(ip, 0), d, ip)
}

/// The policy's view of a flow's first packet given as a tuple (ICMP type
/// and code from the packet at hand when it is the same orientation; an
/// echo flow's opener sent a request).
fn tuple_packet(t: &Tuple, d: Direction, ip: &Ip) -> Packet {
    let (icmp_type, icmp_code) = match ip.l4 {
        L4::Icmp(Icmp { typ, code, .. }) if t.src == ip.src && t.sport == ip.ports().0 => (typ, code),
        L4::Icmp(_) => (if ip.is_v6() { 128 } else { 8 }, 0),
        _ => (0, 0),
    };
    let (remote, local, remote_port, local_port) = match d {
        Direction::Ingress => (t.src, t.dst, t.sport, t.dport),
        Direction::Egress => (t.dst, t.src, t.dport, t.sport),
    };
    Packet { direction: d, proto: t.proto, remote, local, remote_port, local_port, icmp_type, icmp_code }
}

/// Whether an ARP operation is a request or a reply, the two the switch
/// passes.
fn is_arp_op(op: u16) -> bool {
    matches!(op, 1 | 2)
}

fn pass_infra(to: To, port: Option<PortIdx>, direction: Direction) -> Outcome {
    Outcome { action: Action::Forward(to), reason: Reason::Infrastructure, port, direction }
}

/// Broadcast or multicast.
fn is_group(mac: &MacAddr) -> bool {
    mac[0] & 1 != 0
}

/// Where a frame from port `p` goes by its destination MAC.
fn egress_target(plan: &Plan, p: PortIdx, dst: &MacAddr) -> To {
    if is_group(dst) {
        return To::Flood { except: Some(p), uplink: true };
    }
    match plan.port_by_mac(dst) {
        Some(q) if q != p => To::Port(q),
        _ => To::Uplink,
    }
}

#[cfg(test)]
mod tests {
    use super::{Leg, Outcome};

    /// Every stage returns an outcome and the batch keeps one per frame; a
    /// port index is two bytes, so both records stay a few words long.
    #[test]
    fn per_frame_records_stay_small() {
        assert!(size_of::<Outcome>() <= 24, "Outcome is {} bytes", size_of::<Outcome>());
        assert!(size_of::<Leg<u32>>() <= 24, "Leg is {} bytes", size_of::<Leg<u32>>());
    }
}
