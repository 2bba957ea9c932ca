#!/usr/bin/env python3
"""Keeps the crate graph the shape of architecture.md:
config <- filter <- vswitch -> conntrack; filter and conntrack never meet;
conntrack depends on no other crate of ours."""
import json
import subprocess
import sys

meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"]))
deps = {p["name"]: {d["name"] for d in p["dependencies"] if d.get("kind") is None} for p in meta["packages"]}
allowed = {
    "sgswitch-config": set(),
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
