# bench/cost.awk: cost.csv (bench/cost.sh) to the markdown summary. Medians
# over rounds, with the range (min-max) beside them.
function med(s,    a, n, i, j, t) {
	n = split(s, a, " ")
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	if (n == 0) { lo = hi = "-"; return "-" }
	lo = a[1]; hi = a[n]
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
function fmt(s, d,    m) { m = med(s); if (m == "-") return "-"; return sprintf("%." d "f (%." d "f-%." d "f)", m, lo, hi) }
NR == 1 { next }
{
	topo = $1; test = $2; mode = $3; r = $4
	tput[topo SUBSEP test SUBSEP mode SUBSEP r] = $5
	if (test == "TCP_RR" || test == "TCP_STREAM") unixp[test SUBSEP r] = (topo == "unix") ? $5 : unixp[test SUBSEP r]
	if (topo != "unix") { topos[topo] = 1; rounds[r] = 1 }
	if ($7 == "" || $8 + 0 == 0) next
	k = topo SUBSEP test SUBSEP $7 SUBSEP mode
	if (!(k in seen)) { order[++nk] = k; seen[k] = 1 }
	rpu[k] = rpu[k] " " $10; npu[k] = npu[k] " " $11; npr[k] = npr[k] " " $12
}
END {
	print "## Headline: sock_ops per TCP_CRR connection, sk_msg per TCP_RR message"
	print ""
	print "ns of BPF time (bpf_stats), median over rounds (min-max); runs per unit in brackets. @b: the second binary (SOCKACCEL_B)."
	print ""
	print "| topology | program | mode | TCP_CRR ns/connection | runs/connection | TCP_RR ns/run (sk_msg: per message) | TCP_STREAM ns/run (sk_msg: per 64 KiB send) |"
	print "| --- | --- | --- | --- | --- | --- | --- |"
	np = split("sa_sockops accelerated|sa_sockops@b accelerated_b|proto_sockops prototype|sa_redirect accelerated|sa_redirect@b accelerated_b|proto_redirect prototype|sa_setsockopt accelerated|sa_setsockopt@b accelerated_b", hp, "|")
	for (t in topos) for (i = 1; i <= np; i++) {
		split(hp[i], pm, " ")
		c = t SUBSEP "TCP_CRR" SUBSEP pm[1] SUBSEP pm[2]
		r = t SUBSEP "TCP_RR" SUBSEP pm[1] SUBSEP pm[2]
		q = t SUBSEP "TCP_STREAM" SUBSEP pm[1] SUBSEP pm[2]
		if (!(c in seen) && !(r in seen)) continue
		printf "| %s | %s | %s | %s | %s | %s | %s |\n", t, pm[1], pm[2], (c in seen) ? fmt(npu[c], 0) : "-", (c in seen) ? fmt(rpu[c], 2) : "-", (r in seen) ? fmt(npr[r], 0) : "-", (q in seen) ? fmt(npr[q], 0) : "-"
	}
	print ""
	print "## BPF time per unit (bpf_stats), median over rounds (min-max)"
	print ""
	print "Unit: a connection (TCP_CRR), a transaction of 1 B each way, two messages (TCP_RR), a second (TCP_STREAM)."
	print "Detector programs (sa_det_*) are syscall tracepoints: they count every such call on the host, other work's too."
	print ""
	print "| topology | test | program | mode | runs/unit | ns/unit | ns/run |"
	print "| --- | --- | --- | --- | --- | --- | --- |"
	for (i = 1; i <= nk; i++) {
		split(order[i], f, SUBSEP)
		printf "| %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], fmt(rpu[order[i]], 2), fmt(npu[order[i]], 0), fmt(npr[order[i]], 0)
	}
	print ""
	print "## Throughput ratios within each round, median (min-max)"
	print ""
	print "| topology | test | accelerated/baseline | prototype/baseline | accelerated/prototype | accelerated/unix pair | accelerated_b/accelerated |"
	print "| --- | --- | --- | --- | --- | --- | --- |"
	for (t in topos) for (ti = 1; ti <= 3; ti++) {
		test = ti == 1 ? "TCP_CRR" : ti == 2 ? "TCP_RR" : "TCP_STREAM"
		ab = pb = ap = au = ba = ""
		for (r in rounds) {
			b = tput[t SUBSEP test SUBSEP "baseline" SUBSEP r]
			a = tput[t SUBSEP test SUBSEP "accelerated" SUBSEP r]
			p = tput[t SUBSEP test SUBSEP "prototype" SUBSEP r]
			u = unixp[test SUBSEP r]
			if (b > 0) { ab = ab " " a / b; pb = pb " " p / b }
			if (p > 0) ap = ap " " a / p
			if (u > 0) au = au " " a / u
			x = tput[t SUBSEP test SUBSEP "accelerated_b" SUBSEP r]
			if (x > 0 && a > 0) ba = ba " " x / a
		}
		if (ab == "") continue
		printf "| %s | %s | %s | %s | %s | %s | %s |\n", t, test, fmt(ab, 2), fmt(pb, 2), fmt(ap, 2), au == "" ? "-" : fmt(au, 2), ba == "" ? "-" : fmt(ba, 2)
	}
}
