#!/usr/bin/env python3
"""Keeps the crate graph the shape of architecture.md:
config <- filter <- vswitch -> conntrack; filter and conntrack never meet;
conntrack depends on no other crate of ours. config takes one type of
conntrack's, its Timeouts, so that the schema's defaults are the table's."""
import json
import subprocess
import sys

meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"]))
deps = {p["name"]: {d["name"] for d in p["dependencies"] if d.get("kind") is None} for p in meta["packages"]}
allowed = {
    "sgswitch-config": {"sgswitch-conntrack"},
    "sgswitch-filter": {"sgswitch-config"},
    "sgswitch-conntrack": set(),
    "sgswitch": {"sgswitch-config", "sgswitch-filter", "sgswitch-conntrack"},
}
bad = []
for crate, ok in allowed.items():
    ours = {d for d in deps.get(crate, set()) if d.startswith("sgswitch")}
    for d in sorted(ours - ok):
        bad.append(f"{crate} must not depend on {d}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
print("dependency direction ok")

# Inside the sgswitch crate: its layers (vswitch/src/lib.rs) use only the
# layers below them. engine and control are one level and do not meet.
LAYERS = {"datapath": 1, "packet": 2, "port": 3, "engine": 4, "control": 4, "tools": 5, "ops": 6, "switch": 7}
import os
import re
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vswitch", "src")
bad = []
for layer, level in LAYERS.items():
    path = os.path.join(root, layer)
    files = [path + ".rs"] if os.path.isfile(path + ".rs") else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
    for f in files:
        text = open(f).read()
        for used in sorted(set(re.findall(r"crate::([a-z_]+)", text))):
            if used == layer or used not in LAYERS:
                continue
            if LAYERS[used] >= level:
                rel = os.path.relpath(f, root)
                bad.append(f"vswitch/src/{rel} uses crate::{used}, which is not below {layer}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
print("module layers ok")
