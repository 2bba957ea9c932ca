#!/usr/bin/env python3
"""The summary of `benches/e2e.sh`'s points: the issue's ratios per rule
count, whether each target is met, and the same from the points measured
with the two cores near each other and from those measured apart.

    e2e_summary.py POINTS 1|0      one run's points file (JSON lines); 1:
                                   print the points, then one JSON summary
                                   line per rule count; 0: the summary as text
    e2e_summary.py --pool FILE...  several runs' saved output (points and
                                   summary lines, as under docs/bench/):
                                   one JSON line per rule count with the
                                   by-placement block over all their points

Placement: this guest's host puts its two vCPUs near each other (a cache
line's round trip about 60 ns) or apart (about 340) for seconds to minutes
at a time, and the copy-mode port path crosses between them several times
a frame, so a run's medians mix two machines. Per placement the summary
gives, beside sgswitch's figure, what bounds it on that machine: for new
flows the ceiling's (the raw forwarder, a switch whose decisions cost
nothing), for the p99 the floor's (a bare XDP redirect). A target the
ceiling or the floor misses in a placement is out of any switch's reach
there on this port path (`reachable`: false).
"""
import json, statistics, sys

# The issue's targets: ratios at least, the p99 at most (us).
TARGETS = {"established_vs_best_bridge": 1.5, "established_vs_ovs": 2.0, "new_vs_bridge_sets": 2.0, "new_vs_ovs": 3.0, "overload_vs_peak": 0.9}
P99_US = 50
NEAR_NS = 150

# The points being summed up (see main).
pts = []

def at(system, rules, case, load=None, where="all"):
    # The points of one system (or of all, None), rule count and case (at
    # one load, and measured in placement `where` only, when given: see
    # placement).
    return [p for p in pts if (system is None or p["system"] == system) and p["rules"] == rules and p["case"] == case
            and (load is None or p.get("load") == load) and (where == "all" or placement(p) == where)]
def get(system, rules, case, load=None, key="mpps", where="all"):
    # The median over the rounds.
    vs = [p[key] for p in at(system, rules, case, load, where) if p.get(key) is not None]
    return statistics.median(vs) if vs else None
ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
def per_round(system, rules, num, den):
    # The median over the rounds of one case's rate over another's.
    at = lambda case, n: next((p["mpps"] for p in pts if p["system"] == system and p["rules"] == rules and p["case"] == case
                               and p.get("round", 1) == n and p.get("mpps") is not None), None)
    vs = [ratio(at(num, n), at(den, n)) for n in sorted({p.get("round", 1) for p in pts})]
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None
def bound(p):
    if p["case"] not in ("overload", "new") or p.get("mpps") is None or not p.get("offered_mpps"):
        return False
    # Flat out, the system's core went idle a tenth of the window: nothing
    # was waiting to be received (a frame offered is work for the core,
    # if only to drop it), so the system was starved, not full. Busy the
    # rest of the time, it was full: the figure is its own, whatever the
    # generator offered (an AF_XDP sender is held back to what a full
    # system takes, so offered and delivered meet either way).
    if isinstance(p.get("core_busy"), (int, float)):
        return p["core_busy"] + (p.get("core_steal") or 0) < 0.9
    cap = get("xdp-redirect", p["rules"], p["case"], key="offered_mpps")
    return p["mpps"] >= (0.9 * cap if cap else 0.95 * p["offered_mpps"])
def placement(p):
    # Where the host had the two vCPUs during the point, from the cache
    # line's round trip before and after it (about 60 ns near, 340 apart
    # here): None when it moved or was not read.
    x = p.get("xcore_rtt_ns") or []
    if len(x) != 2 or None in x:
        return None
    return "near" if max(x) < NEAR_NS else "apart" if min(x) >= NEAR_NS else None
def at_least(v, t):
    return v >= t if v is not None else None
def at_most(v, t):
    return v <= t if v is not None else None
def over(a, b):
    # Nanoseconds a frame at a Mpps beyond one at b Mpps, on one core.
    return round(1000 / a - 1000 / b) if a and b else None
def by_placement(r):
    out = {}
    for where in ("near", "apart"):
        sg, ovs, raw = (get(x, r, "new", where=where) for x in ("sgswitch", "ovs-afxdp", "raw-afxdp"))
        p99 = get("sgswitch", r, "latency", 0.5, "p99_us", where)
        floor = get("xdp-redirect", r, "latency", 0.5, "p99_us", where)
        new_vs_ovs, raw_new_vs_ovs = ratio(sg, ovs), ratio(raw, ovs)
        out[where] = {
            "new_points": len(at(None, r, "new", where=where)),
            # How many points each figure is the median of.
            "new_points_of": {x: len(at(x, r, "new", where=where)) for x in ("sgswitch", "ovs-afxdp", "raw-afxdp")},
            "new_mpps": {"sgswitch": sg, "ovs-afxdp": ovs, "raw-afxdp": raw},
            "new_vs_ovs": new_vs_ovs,
            "raw_new_vs_ovs": raw_new_vs_ovs,
            "new_vs_raw": ratio(sg, raw),
            # A new flow's core time beyond the ceiling's frame: what
            # sgswitch's decisions cost (classification, a connection
            # entry, the flow cache), and what the target leaves for them.
            "new_decision_ns": over(sg, raw),
            "new_decision_budget_ns": over(ovs * TARGETS["new_vs_ovs"] if ovs else None, raw),
            "p99_us_at_half_peak": p99,
            "floor_p99_us_at_half_peak": floor,
            "p99_points": [len(at(x, r, "latency", 0.5, where)) for x in ("sgswitch", "xdp-redirect")],
            # The two targets that the placement moves: met by sgswitch,
            # and within reach of a switch on this port path at all (the
            # ceiling's new flows, the floor's p99).
            "met": {"new_vs_ovs": at_least(new_vs_ovs, TARGETS["new_vs_ovs"]), "p99_us_at_half_peak": at_most(p99, P99_US)},
            "reachable": {"new_vs_ovs": at_least(raw_new_vs_ovs, TARGETS["new_vs_ovs"]), "p99_us_at_half_peak": at_most(floor, P99_US)},
        }
    return out
def summary(r):
    sg_peak, sg_new = get("sgswitch", r, "peak"), get("sgswitch", r, "new")
    bridges = [x for x in (get("bridge-nft-linear", r, "peak"), get("bridge-nft-sets", r, "peak")) if x is not None]
    s = {
        "rules": r,
        "established_vs_best_bridge": ratio(sg_peak, max(bridges) if bridges else None),
        "established_vs_ovs": ratio(sg_peak, get("ovs-afxdp", r, "peak")),
        "established_vs_raw": ratio(sg_peak, get("raw-afxdp", r, "peak")),
        "established_vs_loop_only": ratio(sg_peak, get("sgswitch-loop", r, "peak")),
        "new_vs_bridge_sets": ratio(sg_new, get("bridge-nft-sets", r, "new")),
        "new_vs_ovs": ratio(sg_new, get("ovs-afxdp", r, "new")),
        # The ceiling's: what a switch on this port path whose decisions
        # cost nothing could show, and sgswitch's share of it.
        "raw_new_vs_ovs": ratio(get("raw-afxdp", r, "new"), get("ovs-afxdp", r, "new")),
        "new_vs_raw": ratio(sg_new, get("raw-afxdp", r, "new")),
        # The system against itself, seconds apart: round by round (a
        # ratio of medians would set one round's overload against another
        # round's peak, in another phase of the machine).
        "overload_vs_peak": per_round("sgswitch", r, "overload", "peak"),
        "p99_us_at_half_peak": get("sgswitch", r, "latency", 0.5, "p99_us"),
        "raw_p99_us_at_half_peak": get("raw-afxdp", r, "latency", 0.5, "p99_us"),
        # The XDP redirect's: a program alone between the two interfaces,
        # the floor of any switch's latency on this path and this machine.
        "floor_p99_us_at_half_peak": get("xdp-redirect", r, "latency", 0.5, "p99_us"),
        # The same, from the points measured with the cores near each
        # other and from those with them apart (see placement): the
        # copy-mode port path crosses between them several times a frame.
        "by_placement": by_placement(r),
        "generator": pts[0].get("generator") if pts else None,
        "rounds": max((p.get("round", 1) for p in pts), default=1),
        # Flat-out points where the system's core had time to spare (or,
        # in runs made before the core was read, where the system took
        # nearly all the generator can make): there the generator was the
        # bound, and the system's figure is a floor of its own. What the
        # generator can make is what it offered the XDP redirect (the
        # cheapest receiver); without that line, what it offered the
        # system.
        "generator_bound": sorted(f"{p['system']} {p['case']} (round {p.get('round', 1)})" for p in pts if p["rules"] == r and bound(p)),
    }
    s["met"] = {k: at_least(s[k], t) for k, t in TARGETS.items()}
    s["met"]["p99_us_at_half_peak"] = at_most(s["p99_us_at_half_peak"], P99_US)
    return s

def main(argv):
    global pts
    if len(argv) >= 2 and argv[0] == "--pool":
        # Saved runs: their points (a summary line has no "case"), for the
        # placement question only; the run-wide ratios are each run's own.
        pts = [p for f in argv[1:] for p in map(json.loads, open(f)) if "case" in p]
        for r in sorted({p["rules"] for p in pts}):
            print(json.dumps({"pooled": argv[1:], "rules": r, "by_placement": by_placement(r)}))
        return
    if len(argv) != 2:
        sys.exit("usage: e2e_summary.py POINTS 1|0 | e2e_summary.py --pool FILE...")
    pts = [json.loads(l) for l in open(argv[0])]
    out = argv[1] == "1"
    if out:
        for p in pts:
            print(json.dumps(p))
    for r in sorted({p["rules"] for p in pts}):
        s = summary(r)
        if out:
            print(json.dumps(s))
        else:
            print(f"rules {r}: " + ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("rules", "met")))
            print(f"rules {r}: targets met: {s['met']}")

if __name__ == "__main__":
    main(sys.argv[1:])
