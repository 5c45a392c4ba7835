#!/usr/bin/env python3
"""Turns bench/scale/run.sh's raw data (results.csv, raw/*.meminfo,
raw/*.slabinfo, raw/*.maps.json) into results.md on stdout."""

import collections
import csv
import json
import os
import statistics
import sys

out = sys.argv[1]
raw = os.path.join(out, "raw")

rows = collections.defaultdict(list)
counts = []
with open(os.path.join(out, "results.csv")) as f:
    for r in csv.DictReader(f):
        n = int(r["count"])
        if n not in counts:
            counts.append(n)
        rows[(n, r["measure"])].append(float(r["value"]))

# Kernel memory that is not page cache or user memory, from /proc/meminfo.
KERNEL = ["Slab", "Percpu", "KernelStack", "PageTables", "VmallocUsed"]


def meminfo(name):
    m = {}
    with open(os.path.join(raw, name + ".meminfo")) as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0]) * 1024
    return m


def slabinfo(name):
    s = {}
    with open(os.path.join(raw, name + ".slabinfo")) as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            p = line.split()
            s[p[0]] = int(p[2]) * int(p[3])  # num_objs * objsize
    return s


def maps(name):
    p = os.path.join(raw, name + ".maps.json")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return json.load(f)


def have(name):
    return os.path.exists(os.path.join(raw, name + ".meminfo"))


def fmt_t(v):
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if v < 10 else f"{v:.1f} s"


def timing(n, measure):
    v = rows.get((n, measure))
    if not v:
        return "-"
    if len(v) == 1:
        return fmt_t(v[0])
    return f"{fmt_t(statistics.median(v))} ({fmt_t(min(v))}-{fmt_t(max(v))})"


def one(n, measure):
    v = rows.get((n, measure))
    return int(v[0]) if v else "-"


print("# Capacity and cost with the maps full\n")
with open(os.path.join(out, "system.txt")) as f:
    print("```\n" + f.read().strip() + "\n```\n")

print("## Wall time\n")
print("Median of the repetitions, (min-max) beside it; one run of each where no range is given.")
print("Goals (issue 15): scrape under 50 ms and flat, GC pass under 1 s at 100k, restart under 1 s at 100k.\n")
measures = [
    ("scrape", "one GET /metrics (curl time_total)", "< 50 ms, flat"),
    ("status_json", "`sockaccel status --json` (through the API socket, exec included)", ""),
    ("conns_json", "`sockaccel conns --json` (through the API socket, exec included)", ""),
    ("scrape_cpu", "daemon CPU time per scrape (utime+stime over the repetitions)", ""),
    ("status_json_cpu", "daemon CPU time per `status --json`", ""),
    ("conns_json_cpu", "daemon CPU time per `conns --json`", ""),
    ("gc_pass", "one fallback GC pass, wall (histogram sum/count over the passes of a 3-interval window)", "< 1 s at 100k"),
    ("gc_pass_cpu", "daemon CPU per GC pass (its CPU over that window, nothing else running, / passes)", ""),
    ("restart", "SIGTERM'd daemon replaced: exec to READY=1 of the new one, adopting the pins", "< 1 s at 100k"),
    ("restart_cpu", "CPU the new daemon used from exec to READY=1", ""),
    ("start_empty", "first start, empty pins: exec to READY=1", ""),
    ("cleanup", "`sockaccel cleanup` (no --force) after the applications closed everything and the daemon stopped", ""),
    ("apps_close", "the applications closing every connection (all holder processes, sequentially)", ""),
]
print("| measure | " + " | ".join(f"{n} conns" for n in counts) + " | goal |")
print("| --- | " + " | ".join("---" for _ in counts) + " | --- |")
for m, desc, goal in measures:
    print(f"| {m}: {desc} | " + " | ".join(timing(n, m) for n in counts) + f" | {goal} |")
print("\nChecks: sockets in the sockhash after opening / after the restarts; conntrack entries; rows of conns --json.\n")
print("| count | sockhash (open) | sockhash (after restarts) | conntrack | conns rows |")
print("| --- | --- | --- | --- | --- |")
for n in counts:
    print(f"| {n} | {one(n, 'sockhash_entries')} | {one(n, 'sockhash_after_restart')} | {one(n, 'conntrack_entries')} | {one(n, 'conns_rows')} |")

print("\n## Kernel memory per connection\n")
print("Deltas from just before the connections were opened to when all were established, divided by the count; "
      "baseline without any daemon, accelerated with the daemon already started (its preallocated maps are in the "
      "fixed cost below, not here). /proc/meminfo is host-wide and other work on the machine moves it: "
      "trust the 100k figures most. Goal: at most 1 KiB extra per connection.\n")
print("| count | baseline Slab/conn | accel Slab/conn | extra Slab/conn | baseline kernel/conn | accel kernel/conn | extra kernel/conn |")
print("| --- | --- | --- | --- | --- | --- | --- |")
slab_extra = {}
for n in counts:
    if n == 0 or not (have(f"{n}-baseline-open") and have(f"{n}-accel-open")):
        continue
    d = {}
    for mode in ("baseline", "accel"):
        a, b = meminfo(f"{n}-{mode}-before"), meminfo(f"{n}-{mode}-open")
        d[mode] = ((b["Slab"] - a["Slab"]) / n, sum(b[k] - a[k] for k in KERNEL) / n)
    print(f"| {n} | {d['baseline'][0]:.0f} B | {d['accel'][0]:.0f} B | **{d['accel'][0] - d['baseline'][0]:.0f} B** "
          f"| {d['baseline'][1]:.0f} B | {d['accel'][1]:.0f} B | **{d['accel'][1] - d['baseline'][1]:.0f} B** |")
    sb = {mode: (slabinfo(f"{n}-{mode}-before"), slabinfo(f"{n}-{mode}-open")) for mode in ("baseline", "accel")}
    caches = set()
    for a, b in sb.values():
        caches |= set(a) | set(b)
    per = {}
    for c in caches:
        db = sb["baseline"][1].get(c, 0) - sb["baseline"][0].get(c, 0)
        da = sb["accel"][1].get(c, 0) - sb["accel"][0].get(c, 0)
        per[c] = (db / n, da / n)
    slab_extra[n] = per
print("\n\"kernel\" is " + " + ".join(KERNEL) + ".\n")

for n in counts:
    if n not in slab_extra:
        continue
    per = slab_extra[n]
    top = sorted(per.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0]))[:10]
    print(f"Slab caches at {n} connections, bytes per connection (num_objs x objsize), largest differences first:\n")
    print("| cache | baseline | accelerated | extra |")
    print("| --- | --- | --- | --- |")
    for c, (b, a) in top:
        print(f"| {c} | {b:.0f} | {a:.0f} | {a - b:.0f} |")
    print()

print("## BPF maps (memlock, bpftool)\n")
print("The daemon's maps with the connections open, at each count (bytes_memlock, which for the "
      "non-preallocated hash, sockhash and sk_storage maps grows with the elements).\n")
names = []
data = {}
for n in counts:
    for m in maps(f"{n}-accel-open"):
        if m["name"] not in names:
            names.append(m["name"])
        data[(n, m["name"])] = m
print("| map | type | max_entries | " + " | ".join(f"{n} conns" for n in counts) + " |")
print("| --- | --- | --- | " + " | ".join("---" for _ in counts) + " |")
for name in names:
    first = next(data[(n, name)] for n in counts if (n, name) in data)
    cells = []
    for n in counts:
        m = data.get((n, name))
        cells.append(f"{m['bytes_memlock']:,}" if m else "-")
    print(f"| {name} | {first['type']} | {first['max_entries']} | " + " | ".join(cells) + " |")
tot = [sum(m["bytes_memlock"] for m in maps(f"{n}-accel-open")) for n in counts]
print("| **total** | | | " + " | ".join(f"{t:,}" for t in tot) + " |")
if len(counts) > 1 and counts[0] == 0:
    for n, t in zip(counts[1:], tot[1:]):
        print(f"\nmemlock growth at {n}: {(t - tot[0]) / n:.0f} B per connection.", end="")
    print()
