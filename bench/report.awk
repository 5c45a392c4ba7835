# bench/report.awk: turns bench/run.sh's results.csv into results.md and the
# chart data. POSIX awk (works with mawk). Variables passed with -v:
#   md, dat, xt (output files), kernel, run_mode, reps, len, crr, cpu, date, ipt, svc

function median(key,    n, i, j, t, a) {
	n = cnt[key]
	if (n == 0) return ""
	for (i = 1; i <= n; i++) a[i] = val[key, i] + 0
	for (i = 2; i <= n; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
		a[j + 1] = t
	}
	if (n % 2) return a[(n + 1) / 2]
	return (a[n / 2] + a[n / 2 + 1]) / 2
}

# spread prints "min-max" of the values collected under key.
function spread(key,    n, i, lo, hi, v) {
	n = cnt[key]
	if (n < 2) return ""
	lo = hi = val[key, 1] + 0
	for (i = 2; i <= n; i++) {
		v = val[key, i] + 0
		if (v < lo) lo = v
		if (v > hi) hi = v
	}
	return sprintf("%.0f-%.0f", lo, hi)
}

function add(key, v) {
	if (v == "") return
	cnt[key]++
	val[key, cnt[key]] = v
}

# round_ratio is the median over rounds of mode a's throughput over mode b's
# in the same round: runs of one round are seconds apart, so a drift of the
# host's speed between rounds cancels out of it.
function round_ratio(topo, test, a, b,    r, key) {
	key = "rr" SUBSEP topo SUBSEP test SUBSEP a SUBSEP b
	for (r = 1; r <= maxrep; r++)
		if (((topo, test, a, r) in T) && ((topo, test, b, r) in T) && T[topo, test, b, r] > 0)
			add(key, T[topo, test, a, r] / T[topo, test, b, r])
	return median(key)
}

function fmt(v, f) { return v == "" ? "n/a" : sprintf(f, v) }

function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "" : a / b }

function tfmt(v, u) { return v == "" ? "n/a" : sprintf("%.0f", v) }

function unitname(u) { return u == "Trans/s" ? "trans/s" : (u == "10^6bits/s" ? "Mbit/s" : u) }

NR == 1 {
	for (i = 1; i <= NF; i++) col[$i] = i
	next
}

{
	topo = $col["topology"]; test = $col["test"]; mode = $col["mode"]
	k = topo SUBSEP test SUBSEP mode
	runs[k]++
	units[test] = $col["throughput_units"]
	add(k SUBSEP "tput", $col["throughput"])
	if (mode != "reference") T[k, $col["rep"]] = $col["throughput"]
	if ($col["rep"] + 0 > maxrep) maxrep = $col["rep"] + 0
	add(k SUBSEP "p50", $col["p50_us"])
	add(k SUBSEP "p99", $col["p99_us"])
	add(k SUBSEP "lsd", $col["local_sd"])
	add(k SUBSEP "rsd", $col["remote_sd"])
	sdu[test] = $col["sd_units"]
	if (mode != "reference") {
		r = $col["redirected_msgs"] + 0
		p = $col["passed_msgs"] + 0
		add(k SUBSEP "nf", $col["nf_forward_pkts"])
		if (!(k in rmin) || r < rmin[k]) rmin[k] = r
		if (!(k in rmax) || r > rmax[k]) rmax[k] = r
		if (r + p > 0) add(k SUBSEP "share", r / (r + p))
		if ($col["check"] != "ok") bad[k]++
	}
}

END {
	ntopo = split("bridge veth loopback", topos, " ")
	ntest = split("TCP_RR_1 TCP_RR_1K TCP_CRR TCP_STREAM_64K", tests, " ")
	label["TCP_RR_1"] = "TCP_RR 1 B"
	label["TCP_RR_1K"] = "TCP_RR 1 KiB"
	label["TCP_CRR"] = "TCP_CRR 1 B"
	label["TCP_STREAM_64K"] = "TCP_STREAM 64 KiB"

	for (t = 1; t <= ntopo; t++) for (s = 1; s <= ntest; s++) {
		for (m = 1; m <= 3; m++) {
			mode = (m == 1) ? "baseline" : (m == 2 ? "accelerated" : "prototype")
			if (runs[topos[t], tests[s], mode] > 0 && mode == "prototype") proto = 1
			k = topos[t] SUBSEP tests[s] SUBSEP mode
			M[k, "tput"] = median(k SUBSEP "tput")
			M[k, "p50"] = median(k SUBSEP "p50")
			M[k, "p99"] = median(k SUBSEP "p99")
			M[k, "lsd"] = median(k SUBSEP "lsd")
			M[k, "rsd"] = median(k SUBSEP "rsd")
			M[k, "nf"] = median(k SUBSEP "nf")
			M[k, "share"] = median(k SUBSEP "share")
		}
	}
	for (s = 1; s <= ntest; s++) {
		k = "unix" SUBSEP tests[s] SUBSEP "reference"
		U[tests[s], "tput"] = median(k SUBSEP "tput")
		U[tests[s], "p50"] = median(k SUBSEP "p50")
		U[tests[s], "p99"] = median(k SUBSEP "p99")
	}

	print "# sockaccel benchmark: " date ", kernel " kernel > md
	print "" > md
	order = proto ? "baseline, accelerated, prototype" : "baseline, accelerated"
	printf "%s run: %d round(s) (%s) per test and topology, %d s per netperf run (TCP_CRR: %d connections per run), the modes run alternately (%s, %s, ...). ", run_mode, reps, order, len, crr, order, order > md
	printf "netperf pinned to CPU 0, netserver to CPU 1 (`-T 0,1` and taskset); %s. ", cpu > md
	printf "One sockaccel daemon for the whole run; accelerated runs are in its cgroup, baseline runs in an unattached sibling cgroup. " > md
	print "Every number is the median over the runs of **this single bench run**; ratios are accelerated/baseline of those medians, not averaged over several bench runs, so treat differences of a few percent as noise." > md
	print "" > md

	print "## Throughput ratio accelerated / baseline" > md
	print "" > md
	print "Higher is better; 1.00 = no change. The last column is the AF_UNIX socket-pair reference (same pattern, same two CPUs, socket buffer = TCP's autotuning maximum): the shortest socket path the kernel has, though not a strict ceiling, since AF_UNIX pays costs of its own (an skb per write, credentials attached to every message)." > md
	print "" > md
	print "| Test | bridge + netfilter | veth | loopback | unix socket pair |" > md
	print "| --- | ---: | ---: | ---: | ---: |" > md
	for (s = 1; s <= ntest; s++) {
		line = "| " label[tests[s]]
		for (t = 1; t <= ntopo; t++) {
			b = M[topos[t], tests[s], "baseline", "tput"]
			a = M[topos[t], tests[s], "accelerated", "tput"]
			line = line " | " fmt(ratio(a, b), "%.2fx")
		}
		u = U[tests[s], "tput"]
		line = line " | " (u == "" ? "n/a" : tfmt(u, units[tests[s]]) " " unitname(units[tests[s]]))
		print line " |" > md
	}
	print "" > md

	print "## Throughput (medians)" > md
	print "" > md
	print "min-max is the spread over the runs. Per round is the median, over the rounds, of accelerated/baseline within one round (runs seconds apart), which a drift of the host's speed between rounds does not move. Unix/base is how far the unix socket pair is above the baseline TCP path." > md
	print "" > md
	print "| Topology | Test | Unit | Baseline | (min-max) | Accelerated | (min-max) | Accel/base | per round | Unix ref | Unix/base |" > md
	print "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" > md
	for (t = 1; t <= ntopo; t++) for (s = 1; s <= ntest; s++) {
		b = M[topos[t], tests[s], "baseline", "tput"]
		a = M[topos[t], tests[s], "accelerated", "tput"]
		u = U[tests[s], "tput"]
		printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", topos[t], label[tests[s]], unitname(units[tests[s]]),
			tfmt(b, units[tests[s]]), spread(topos[t] SUBSEP tests[s] SUBSEP "baseline" SUBSEP "tput"),
			tfmt(a, units[tests[s]]), spread(topos[t] SUBSEP tests[s] SUBSEP "accelerated" SUBSEP "tput"),
			fmt(ratio(a, b), "%.2fx"), fmt(round_ratio(topos[t], tests[s], "accelerated", "baseline"), "%.2fx"),
			tfmt(u, units[tests[s]]), fmt(ratio(u, b), "%.2fx") > md
	}
	print "" > md

	if (proto) {
		print "## Against the bare prototype" > md
		print "" > md
		print "`PROTO=1`: every round also runs `bench/proto`, the bare sockmap prototype, in a third sibling cgroup: sock_ops inserts every established socket into a SOCKHASH keyed by its 4-tuple and sk_msg redirects every send, nothing else (no ordering rule, backlog bound, exclusions, connection tracking or use detection, and a key that pairs the wrong sockets when two namespaces hold the same tuple). sockaccel's use detection is host-wide syscall tracepoints, so it also runs, and costs, during prototype runs." > md
		print "" > md
		print "Ratios are of the medians; the per-round columns are medians of the ratios within each round." > md
		print "" > md
		print "| Topology | Test | Unit | Baseline | Prototype | Accelerated | Proto/base | Accel/base | Accel/proto | Accel/proto per round |" > md
		print "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" > md
		for (t = 1; t <= ntopo; t++) for (s = 1; s <= ntest; s++) {
			b = M[topos[t], tests[s], "baseline", "tput"]
			a = M[topos[t], tests[s], "accelerated", "tput"]
			pr = M[topos[t], tests[s], "prototype", "tput"]
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", topos[t], label[tests[s]], unitname(units[tests[s]]),
				tfmt(b, units[tests[s]]), tfmt(pr, units[tests[s]]), tfmt(a, units[tests[s]]),
				fmt(ratio(pr, b), "%.2fx"), fmt(ratio(a, b), "%.2fx"), fmt(ratio(a, pr), "%.2fx"),
				fmt(round_ratio(topos[t], tests[s], "accelerated", "prototype"), "%.2fx") > md
		}
		print "" > md
	}

	print "## Latency (µs, medians of the per-run p50 and p99)" > md
	print "" > md
	print "netperf `-j` per-transaction latency; TCP_CRR includes connect and close. Lower is better." > md
	print "" > md
	print "| Topology | Test | p50 baseline | p50 accelerated | p99 baseline | p99 accelerated |" > md
	print "| --- | --- | ---: | ---: | ---: | ---: |" > md
	for (t = 1; t <= ntopo; t++) for (s = 1; s <= 3; s++) {
		kb = topos[t] SUBSEP tests[s] SUBSEP "baseline"
		ka = topos[t] SUBSEP tests[s] SUBSEP "accelerated"
		printf "| %s | %s | %s | %s | %s | %s |\n", topos[t], label[tests[s]],
			fmt(M[kb, "p50"], "%.0f"), fmt(M[ka, "p50"], "%.0f"), fmt(M[kb, "p99"], "%.0f"), fmt(M[ka, "p99"], "%.0f") > md
	}
	for (s = 1; s <= 2; s++)
		printf "| unix socket pair | %s | %s | | %s | |\n", label[tests[s]], fmt(U[tests[s], "p50"], "%.0f"), fmt(U[tests[s], "p99"], "%.0f") > md
	print "" > md

	print "## CPU service demand (medians; lower is better)" > md
	print "" > md
	print "netperf `-c -C`: CPU time (all CPUs, from /proc/stat) per transaction (usec/Tran) or per KB (usec/KB). Client and server share the host, so local and remote measure the same CPUs." > md
	print "" > md
	print "| Topology | Test | Unit | local baseline | local accelerated | remote baseline | remote accelerated | Accel/base (local) |" > md
	print "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |" > md
	for (t = 1; t <= ntopo; t++) for (s = 1; s <= ntest; s++) {
		kb = topos[t] SUBSEP tests[s] SUBSEP "baseline"
		ka = topos[t] SUBSEP tests[s] SUBSEP "accelerated"
		printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", topos[t], label[tests[s]], sdu[tests[s]],
			fmt(M[kb, "lsd"], "%.3f"), fmt(M[ka, "lsd"], "%.3f"), fmt(M[kb, "rsd"], "%.3f"), fmt(M[ka, "rsd"], "%.3f"),
			fmt(ratio(M[ka, "lsd"], M[kb, "lsd"]), "%.2fx") > md
	}
	print "" > md

	print "## Was it really accelerated?" > md
	print "" > md
	print "Deltas of the daemon's counters (`sockaccel status --json`) across each run. Accelerated runs must show redirected_msgs > 0 and baseline runs exactly 0 (column `check` in results.csv). \"Sends redirected\" is redirected_msgs / (redirected_msgs + passed_msgs) of the data connection(s): the rest took the TCP path (for example the first bytes of a connection sent before the peer was in the map; the ordering rule keeps that direction on TCP). netperf's control connection is excluded from acceleration. \"Filter pkts\" is how many packets traversed the kube-proxy-like FORWARD chain per run (bridge only)." > md
	print "" > md
	print "| Topology | Test | runs (base/accel) | redirected_msgs, baseline (max) | redirected_msgs, accelerated (min) | sends redirected (median) | filter pkts/run base | filter pkts/run accel | check |" > md
	print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |" > md
	for (t = 1; t <= ntopo; t++) for (s = 1; s <= ntest; s++) {
		kb = topos[t] SUBSEP tests[s] SUBSEP "baseline"
		ka = topos[t] SUBSEP tests[s] SUBSEP "accelerated"
		ok = (runs[kb] > 0 && runs[ka] > 0 && !(kb in bad) && !(ka in bad)) ? "ok" : "**FAIL**"
		printf "| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s |\n", topos[t], label[tests[s]], runs[kb], runs[ka],
			(kb in rmax) ? rmax[kb] : "n/a", (ka in rmin) ? rmin[ka] : "n/a", (M[ka, "share"] == "" ? "n/a" : sprintf("%.1f%%", M[ka, "share"] * 100)),
			fmt(M[kb, "nf"], "%.0f"), fmt(M[ka, "nf"], "%.0f"), ok > md
	}
	print "" > md
	print "Topologies: **bridge**: two network namespaces (\"containers\") on a Linux bridge in a third \"host\" namespace through veth pairs, br_netfilter on, " ipt " with a kube-proxy-like ruleset (" svc " filter rules every bridged packet traverses, " svc " nat rules every new connection traverses). **veth**: two namespaces joined directly by a veth pair, no rules. **loopback**: client and server in one namespace over 127.0.0.1. Chart: ratios.png. Raw runs: results.csv. Machine and daemon: system.txt." > md

	# Chart: one cluster of bars per test, one bar per topology; the unix
	# reference (unix/baseline) is a marker above the same bar.
	xtics = ""
	for (s = 1; s <= ntest; s++) {
		for (t = 1; t <= ntopo; t++) {
			x = (s - 1) * (ntopo + 1) + t
			b = M[topos[t], tests[s], "baseline", "tput"]
			a = M[topos[t], tests[s], "accelerated", "tput"]
			r = ratio(a, b)
			ur = ratio(U[tests[s], "tput"], b)
			printf "%d\t%s\t%d\t%s\n", x, (r == "" ? "?" : sprintf("%.3f", r)), t - 1, (ur == "" ? "?" : sprintf("%.3f", ur)) > dat
		}
		xtics = xtics (s > 1 ? ", " : "") sprintf("\"%s\" %d", label[tests[s]], (s - 1) * (ntopo + 1) + (ntopo + 1) / 2)
	}
	print "set xtics (" xtics ")" > xt
	print "set xrange [0:" ntest * (ntopo + 1) "]" > xt
}
