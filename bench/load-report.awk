# bench/load-report.awk: turns bench/load.sh's results.csv into results.md.
# POSIX awk (works with mawk). Variables passed with -v:
#   md (output file), kernel, run_mode, reps, len, date, cpu

function sortn(a, n,    i, j, t) {
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
		a[j + 1] = t
	}
}

function median(key,    n, i, a) {
	n = cnt[key]
	if (n == 0) return ""
	for (i = 1; i <= n; i++) a[i] = val[key, i] + 0
	sortn(a, n)
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

function lo(key,    n, i, m) {
	n = cnt[key]
	if (n == 0) return ""
	m = val[key, 1] + 0
	for (i = 2; i <= n; i++) if (val[key, i] + 0 < m) m = val[key, i] + 0
	return m
}

function hi(key,    n, i, m) {
	n = cnt[key]
	if (n == 0) return ""
	m = val[key, 1] + 0
	for (i = 2; i <= n; i++) if (val[key, i] + 0 > m) m = val[key, i] + 0
	return m
}

function add(key, v) {
	if (v == "") return
	cnt[key]++
	val[key, cnt[key]] = v
}

function f0(v) { return v == "" ? "n/a" : sprintf("%.0f", v) }
function f2(v) { return v == "" ? "n/a" : sprintf("%.2f", v) }
function fx(v) { return v == "" ? "n/a" : sprintf("%.2fx", v) }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "" : a / b }
function pair(b, a) { return f0(b) " / " f0(a) }

NR == 1 {
	for (i = 1; i <= NF; i++) col[$i] = i
	next
}

# A run without a result (check FAIL_no_result) has nothing to add.
$col["check"] == "FAIL_no_result" { failed[$col["topology"] " " $col["case"] " " $col["conns"] " " $col["mode"] " round " $col["rep"]] = 1; next }

{
	topo = $col["topology"]; c = $col["case"]; n = $col["conns"]; mode = $col["mode"]; rep = $col["rep"]
	k = topo SUBSEP c SUBSEP n
	if (!(k in seen)) { seen[k] = 1; order[++nk] = k; tool[k] = $col["tool"]; unit[k] = $col["unit"]; op[k] = $col["op"] }
	if (!(topo in tseen)) { tseen[topo] = 1; topos[++nt] = topo }
	add(k SUBSEP mode SUBSEP "tp", $col["throughput"])
	add(k SUBSEP mode SUBSEP "cpu", $col["cpu_us_per_op"])
	add(k SUBSEP mode SUBSEP "p50", $col["p50_us"])
	add(k SUBSEP mode SUBSEP "p99", $col["p99_us"])
	add(k SUBSEP mode SUBSEP "p999", $col["p999_us"])
	add(k SUBSEP mode SUBSEP "max", $col["max_us"])
	busy = $col["host_user_us"] + $col["host_sys_us"] + $col["host_softirq_us"]
	if (busy > 0) {
		add(k SUBSEP mode SUBSEP "si", 100 * $col["host_softirq_us"] / busy)
		add(k SUBSEP mode SUBSEP "sys", 100 * $col["host_sys_us"] / busy)
	}
	T[k, mode, rep] = $col["throughput"]
	if (rep > maxrep) maxrep = rep
}

END {
	printf "# sockaccel load bench: %s, kernel %s\n\n", date, kernel > md
	printf "%s run: %d round(s) of (baseline, accelerated) per case, %s s per run, the modes alternating. Nothing is pinned: clients and servers share both CPUs (%s), with the VM's other tenants. One sockaccel daemon (`--conservative=false`, as in `make bench`); accelerated runs in its cgroup, baseline runs in an unattached sibling. Every figure is from **this single run**.\n\n", run_mode, reps, len, cpu > md

	print "## Throughput ratio accelerated / baseline\n" > md
	print "Per round: accelerated/baseline within each round (runs seconds apart), median and min-max over the rounds. **gain**: every round above 1.00; **loss**: every round below; **mixed**: some of each (within this VM's noise).\n" > md
	print "| Topology | Case | Connections | Ratio of medians | Per round (min-max) | Verdict | CPU/op accel/base |" > md
	print "| --- | --- | ---: | ---: | ---: | --- | ---: |" > md
	for (i = 1; i <= nk; i++) {
		k = order[i]
		split(k, p, SUBSEP)
		rk = "round" SUBSEP k
		for (r = 1; r <= maxrep; r++)
			if (((k, "baseline", r) in T) && ((k, "accelerated", r) in T) && T[k, "baseline", r] > 0)
				add(rk, T[k, "accelerated", r] / T[k, "baseline", r])
		verdict = "n/a"
		if (cnt[rk] > 0) verdict = lo(rk) > 1 ? "gain" : (hi(rk) < 1 ? "**loss**" : "mixed")
		printf "| %s | %s (%s) | %s | %s | %s (%s-%s) | %s | %s |\n", p[1], p[2], tool[k], p[3],
			fx(ratio(median(k SUBSEP "accelerated" SUBSEP "tp"), median(k SUBSEP "baseline" SUBSEP "tp"))),
			fx(median(rk)), f2(lo(rk)), f2(hi(rk)), verdict,
			fx(ratio(median(k SUBSEP "accelerated" SUBSEP "cpu"), median(k SUBSEP "baseline" SUBSEP "cpu"))) > md
	}

	print "\n## Throughput and CPU (medians)\n" > md
	print "CPU/op: CPU time of the mode's cgroup (every client and server process of the run, softirq work done in their context included) per request, or per MB for a stream, in µs. Softirq %: share of the host's busy time (/proc/stat, both CPUs, other tenants included) spent in softirq.\n" > md
	print "| Topology | Case | Conns | Unit | Baseline | Accelerated | CPU/op base | CPU/op accel | softirq % base | softirq % accel |" > md
	print "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |" > md
	for (i = 1; i <= nk; i++) {
		k = order[i]
		split(k, p, SUBSEP)
		printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p[1], p[2], p[3], unit[k],
			f0(median(k SUBSEP "baseline" SUBSEP "tp")), f0(median(k SUBSEP "accelerated" SUBSEP "tp")),
			f2(median(k SUBSEP "baseline" SUBSEP "cpu")), f2(median(k SUBSEP "accelerated" SUBSEP "cpu")),
			f0(median(k SUBSEP "baseline" SUBSEP "si")), f0(median(k SUBSEP "accelerated" SUBSEP "si")) > md
	}

	print "\n## Tail latency (µs, baseline / accelerated)\n" > md
	print "p50, p99, p99.9: medians over the runs; max: the largest of any run. loadrr and wrk record every request of the run; redis-benchmark's percentiles come from its HDR histogram; netperf's are the median over its processes of each one's own figure, and it has no p99.9 (one process per connection: their distributions cannot be merged). Tail: **worse** when accelerated p99.9 (or, without one, p99) or max is above baseline's.\n" > md
	print "| Topology | Case | Conns | p50 | p99 | p99.9 | max | Tail |" > md
	print "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |" > md
	for (i = 1; i <= nk; i++) {
		k = order[i]
		split(k, p, SUBSEP)
		if (median(k SUBSEP "baseline" SUBSEP "p50") == "") continue
		b9 = median(k SUBSEP "baseline" SUBSEP "p999"); a9 = median(k SUBSEP "accelerated" SUBSEP "p999"); pl = "p99.9"
		if (b9 == "") { b9 = median(k SUBSEP "baseline" SUBSEP "p99"); a9 = median(k SUBSEP "accelerated" SUBSEP "p99"); pl = "p99" }
		bm = hi(k SUBSEP "baseline" SUBSEP "max"); am = hi(k SUBSEP "accelerated" SUBSEP "max")
		tail = "ok"
		if (a9 > b9 && am > bm) tail = "**worse** (" pl " and max)"
		else if (a9 > b9) tail = "**worse** (" pl ")"
		else if (am > bm) tail = "**worse** (max)"
		printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", p[1], p[2], p[3],
			pair(median(k SUBSEP "baseline" SUBSEP "p50"), median(k SUBSEP "accelerated" SUBSEP "p50")),
			pair(median(k SUBSEP "baseline" SUBSEP "p99"), median(k SUBSEP "accelerated" SUBSEP "p99")),
			(median(k SUBSEP "baseline" SUBSEP "p999") == "" ? "n/a" : pair(median(k SUBSEP "baseline" SUBSEP "p999"), median(k SUBSEP "accelerated" SUBSEP "p999"))),
			pair(bm, am), tail > md
	}
	nf = 0
	for (x in failed) nf++
	if (nf) {
		print "\n## Runs without a result\n" > md
		for (x in failed) print "* " x " (the client's error is in the bench log)" > md
	}
	print "\nRaw runs: results.csv (one row per run, with the daemon's counter deltas and the `check` column: `ok` only if an accelerated run was redirected and a baseline run was not). Machine and daemon: system.txt." > md
}
