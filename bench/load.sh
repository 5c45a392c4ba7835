#!/usr/bin/env bash
# bench/load.sh: tail latency and concurrency of sockaccel with many
# connections and real programs (issue 15, items 3 and 4), baseline and
# accelerated alternating, on run.sh's topologies. See bench/README.md.
#
#   request/response, 1 B each way (loadrr: every round trip recorded,
#     exact p99.9 and max over all connections): 1, 8, 64, 512 connections
#   stream, 64 KiB writes (loadrr -stream): 1, 8, 64, 512 connections
#   netperf TCP_RR 1 B and TCP_STREAM 64 KiB: 1 and 8 netperf processes
#     at once, unpinned (both CPUs busy)
#   nginx + wrk: 1000 keep-alive connections, and 1000 connections with
#     a new connection per request (Connection: close)
#   redis-server + redis-benchmark GET: 500 clients, unpipelined and -P 16
#
# Environment (as run.sh): QUICK=1, SMOKE=1, OUT=DIR, SOCKACCEL=F,
# SOCKACCEL_FLAGS, CC, IPTABLES, INSTALL=0; and
#   TOPOS="bridge veth"        topologies to run (default: bridge veth loopback
#                              in full mode, bridge veth otherwise)
#   CONNS="1 8 64 512"         connection counts of the loadrr cases
#   NETPERF_CONNS="1 8"        netperf processes of the netperf cases
#   CASES=regexp               run only the cases whose name matches (e.g. nginx_close)
#   RUN_LEN=seconds            seconds per run (default 4 full, 2 quick, 1 smoke)
#   LOAD_REPS=n                rounds per case (default 3 full, 2 quick, 1 smoke)
#   PERF=1                     perf record -a -g during every run; perf-*.txt in OUT
#                              has each run's top symbols (where the time goes)
#
# Needs root, nginx, wrk, redis-server and redis-benchmark (make deps).
# Everything it creates is removed on exit, by run.sh's cleanup.
set -euo pipefail

BENCH_LIB=1
# shellcheck source=bench/run.sh
source "$(dirname "$0")/run.sh"

# ---------------------------------------------------------------- settings

RUN_MODE=full REPS=3 LEN=4
LOAD_TOPOLOGIES=(bridge veth loopback)
CONN_LIST=(1 8 64 512)
# netperf runs one process per connection, and its processes must all be
# running at once for a while to be summed (see client_netperf). On the
# 2-vCPU bench VM they never were beyond a few: 64 TCP_STREAM processes
# over loopback, each waiting 3 s (-s) after its setup, started over 20 s
# (the late ones set up while the early ones already streamed), and 512
# TCP_RR ones took over 30 s. So netperf stops at 8, and loadrr, whose
# connections all start and stop together, covers 1 to 512.
NETPERF_LIST=(1 8)
WRK_CONNS=1000
REDIS_CLIENTS=500
if is_set "${SMOKE:-}"; then
	RUN_MODE=smoke REPS=1 LEN=1 CONN_LIST=(1 8) NETPERF_LIST=(1 8) WRK_CONNS=50 REDIS_CLIENTS=50
	LOAD_TOPOLOGIES=(bridge veth)
elif is_set "${QUICK:-}"; then
	RUN_MODE=quick REPS=2 LEN=2
	LOAD_TOPOLOGIES=(bridge veth)
fi
if [[ -n ${TOPOS:-} ]]; then
	read -r -a LOAD_TOPOLOGIES <<<"$TOPOS"
fi
MODES=(baseline accelerated) # PROTO=1 is run.sh's alone
[[ -z ${RUN_LEN:-} ]] || LEN=$RUN_LEN
[[ -z ${LOAD_REPS:-} ]] || REPS=$LOAD_REPS
if [[ -n ${CONNS:-} ]]; then
	read -r -a CONN_LIST <<<"$CONNS"
fi
if [[ -n ${NETPERF_CONNS:-} ]]; then
	read -r -a NETPERF_LIST <<<"$NETPERF_CONNS"
fi

# Own pin dir and lock: a load run and a make bench run at the same time
# would share the two CPUs and spoil each other's figures, so they take
# the same lock; the pin dir is separate so either can clean up after a
# crash of its own without touching the other's.
PIN_DIR=/sys/fs/bpf/sockaccel-load
LOADRR_PORT_BASE=7100 LOADRR_PORT_ACCEL=7101
SINK_PORT_BASE=7102 SINK_PORT_ACCEL=7103
NGINX_PORT_BASE=8100 NGINX_PORT_ACCEL=8101
REDIS_PORT_BASE=6400 REDIS_PORT_ACCEL=6401

suffix=
[[ $RUN_MODE == full ]] || suffix=-$RUN_MODE
OUT=${OUT:-$BENCH/results/$(date -u +%Y-%m-%d)-$KERNEL-load$suffix}
[[ $OUT == /* ]] || OUT=$ROOT/$OUT

LOAD_HEADER=time,run_mode,topology,case,tool,conns,mode,rep,seconds,requests,throughput,unit,p50_us,p90_us,p99_us,p999_us,max_us,cg_cpu_us,host_user_us,host_sys_us,host_softirq_us,host_idle_us,cpu_us_per_op,op,redirected_msgs,passed_msgs,inserted,errors,check

for tool in nginx wrk redis-server redis-benchmark; do
	command -v "$tool" >/dev/null || die "$tool not installed (make deps)"
done

# 1000 connections per side need more than the usual 1024 descriptors:
# raise the soft limit as far as the hard one allows (children inherit it).
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 2 * WRK_CONNS + 100)) || die "open files limit $(ulimit -n) too low for $WRK_CONNS connections"

# ---------------------------------------------------------------- helpers

port_of() { # KIND MODE
	local v
	if [[ $2 == accelerated ]]; then v=${1}_PORT_ACCEL; else v=${1}_PORT_BASE; fi
	echo "${!v}"
}

# cpu_snapshot prints the mode cgroup's CPU time (its processes only: every
# client and server of the run, including softirq work done in their
# context; this kernel has no IRQ time accounting) and the host's user,
# system, softirq and idle time from /proc/stat, all in microseconds.
# The host figures include the other tenants of this VM.
cpu_snapshot() { # CGROUP
	local hz
	hz=$(getconf CLK_TCK)
	awk -v hz="$hz" '
		FILENAME ~ /cpu.stat$/ && $1 == "usage_usec" { cg = $2 }
		FILENAME == "/proc/stat" && $1 == "cpu" { u = $2 + $3; s = $4; idle = $5 + $6; si = $8 }
		# %.0f, not %d: mawk clamps %d to 2^31, which the host totals pass.
		END { f = 1000000 / hz; printf "%.0f %.0f %.0f %.0f %.0f\n", cg, u * f, s * f, si * f, idle * f }
	' "$1/cpu.stat" /proc/stat
}

# counters3 prints redirected_msgs, passed_msgs and inserted.
counters3() {
	"$SOCKACCEL" status --json --pin-dir "$PIN_DIR" | jq -r '[.redirected_msgs, .passed_msgs, .inserted] | @tsv'
}

start_daemon() {
	# netperf's sockets are blocking, which the default --conservative keeps
	# on TCP (README, Compatibility); the bench measures the fast path, so it
	# opts in exactly as run.sh does. The netserver control ports are
	# excluded so that the counters count data connections only.
	# shellcheck disable=SC2206 # extra daemon flags are meant to split
	DAEMON_ARGS=(run --cgroup "$CG_ACCEL" --pin-dir "$PIN_DIR" --exclude-ports "$PORT_BASE,$PORT_ACCEL" --metrics-addr= --log-level info --conservative=false ${SOCKACCEL_FLAGS:-})
	PIN_CREATED=1
	"$SOCKACCEL" "${DAEMON_ARGS[@]}" >"$OUT/daemon.log" 2>&1 &
	DAEMON_PID=$!
	local i
	for i in $(seq 100); do
		kill -0 "$DAEMON_PID" 2>/dev/null || die "sockaccel run exited: $(cat "$OUT/daemon.log")"
		[[ $("$SOCKACCEL" status --json --pin-dir "$PIN_DIR" 2>/dev/null | jq -r .attached) == true ]] && return 0
		sleep 0.1
	done
	die "sockaccel did not attach within 10s"
}

nginx_conf() { # MODE ADDR PORT
	local d=$TMPD/nginx-$1
	mkdir -p "$d/www" "$d/tmp"
	# A small static page: the HTTP work is nginx's, the bytes few, so the
	# socket path is a large share of each request.
	head -c 612 /dev/zero | tr '\0' x >"$d/www/index.html"
	cat >"$d/nginx.conf" <<EOF
user root;
worker_processes 2;
worker_rlimit_nofile $(ulimit -n);
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 8192; multi_accept on; }
http {
	access_log off;
	keepalive_requests 100000000;
	keepalive_timeout 120s;
	client_body_temp_path $d/tmp/body;
	proxy_temp_path $d/tmp/proxy;
	fastcgi_temp_path $d/tmp/fastcgi;
	uwsgi_temp_path $d/tmp/uwsgi;
	scgi_temp_path $d/tmp/scgi;
	server {
		listen $2:$3 backlog=4096;
		root $d/www;
	}
}
EOF
	echo "$d/nginx.conf"
}

# start_servers TOPOLOGY: netserver, loadrr, nginx and redis for both modes,
# each in its mode's cgroup in the server namespace.
start_servers() {
	local topo=$1 ns=${SERVER_NS[$1]} addr=${SERVER_ADDR[$1]} mode cg p conf
	for mode in "${MODES[@]}"; do
		cg=$(mode_cgroup "$mode")
		p=$(mode_port "$mode")
		launch "$cg" "$ns" netserver -D -p "$p" >"$TMPD/netserver-$topo-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$p" || die "netserver ($topo, $mode) did not start"
		p=$(port_of LOADRR "$mode")
		launch "$cg" "$ns" "$TMPD/loadrr" -server -port "$p" -size 1 >"$TMPD/loadrr-$topo-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$p" || die "loadrr server ($topo, $mode) did not start: $(cat "$TMPD/loadrr-$topo-$mode.log")"
		p=$(port_of SINK "$mode")
		launch "$cg" "$ns" "$TMPD/loadrr" -server -sink -port "$p" >"$TMPD/sink-$topo-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$p" || die "loadrr sink ($topo, $mode) did not start: $(cat "$TMPD/sink-$topo-$mode.log")"
		p=$(port_of NGINX "$mode")
		conf=$(nginx_conf "$mode" "$addr" "$p")
		launch "$cg" "$ns" nginx -e stderr -p "$TMPD" -c "$conf" -g 'daemon off;' >"$TMPD/nginx-$topo-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$p" || die "nginx ($topo, $mode) did not start: $(cat "$TMPD/nginx-$topo-$mode.log")"
		p=$(port_of REDIS "$mode")
		launch "$cg" "$ns" redis-server --bind "$addr" --port "$p" --save '' --appendonly no --protected-mode no \
			--maxclients 10000 --dir "$TMPD" --daemonize no >"$TMPD/redis-$topo-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$p" || die "redis-server ($topo, $mode) did not start: $(cat "$TMPD/redis-$topo-$mode.log")"
	done
}

stop_servers() {
	stop_netservers # kills every PID in PIDS
	# netserver children and nginx workers exit with their parents; make
	# sure nothing is left before the next topology reuses the ports.
	local cg pid
	for cg in "$CG_BASE" "$CG_ACCEL"; do
		for _ in $(seq 50); do
			[[ -s $cg/cgroup.procs ]] || break
			while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$cg/cgroup.procs"
			sleep 0.1
		done
	done
}

# ---------------------------------------------------------------- clients
# Each client function runs one measurement in MODE's cgroup in the client
# namespace and prints "seconds requests throughput unit p50 p90 p99 p999
# max errors op" (empty fields as -), the op being what CPU is counted per.

client_loadrr() { # TOPO MODE CONNS
	local out
	out=$(launch "$(mode_cgroup "$2")" "${CLIENT_NS[$1]}" "$TMPD/loadrr" -client -host "${SERVER_ADDR[$1]}" \
		-port "$(port_of LOADRR "$2")" -conns "$3" -size 1 -duration "$LEN") || return 1
	awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
		printf "%s %s %s trans/s %s %s %s %s %s 0 trans\n", r["duration_s"], r["transactions"], r["trans_per_s"],
			r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"], r["max_us"] }' <<<"$out"
}

# client_stream: CONNS connections writing 64 KiB chunks into a discarding
# server, all from one epoll loop, started and stopped together.
client_stream() { # TOPO MODE CONNS
	local out
	out=$(launch "$(mode_cgroup "$2")" "${CLIENT_NS[$1]}" "$TMPD/loadrr" -client -stream -host "${SERVER_ADDR[$1]}" \
		-port "$(port_of SINK "$2")" -conns "$3" -size 65536 -duration "$LEN") || return 1
	awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
		printf "%s %.0f %s Mbit/s - - - - - 0 MB\n", r["duration_s"], r["bytes"] / 1e6, r["mbit_per_s"] }' <<<"$out"
}

# client_netperf runs CONNS netperf processes at once, unpinned. Started
# one after another, they would each begin while the earlier ones already
# load the CPUs (512 took over 30 s to get going, so a summed rate counted
# processes that mostly ran alone). So each one sets up its connections,
# waits (-s) until all should have, and runs; -D prints its rate every
# half second with a timestamp, and the throughput is the sum of those
# rates over the window in which every process was running (each interval
# prorated to its overlap). The CSV's seconds column is that window; its
# requests are the whole run's, to match the CPU time counted.
# Latency: netperf -j per process; p50, p90 and p99 are medians over the
# processes, max the largest (no p99.9: N distributions cannot be merged;
# loadrr has it).
client_netperf() { # TOPO MODE CONNS TEST
	# netserver times its side out at its own -l plus 4 s (netperf's
	# PAD_TIME) from setup and knows nothing of -s, so the wait must stay
	# under 4 s or the late finishers are reset.
	local d=$TMPD/np args wait=1
	(($3 <= 8)) || wait=3
	rm -rf "$d"
	mkdir -p "$d"
	if [[ $4 == TCP_RR ]]; then args="-r 1,1"; else args="-m 65536"; fi
	# launch execs, hence the subshell.
	# shellcheck disable=SC2016,SC2086 # expanded by the inner bash; args split
	(launch "$(mode_cgroup "$2")" "${CLIENT_NS[$1]}" bash -c '
		d=$1 n=$2; shift 2
		for ((i = 0; i < n; i++)); do "$@" >"$d/$i.out" 2>"$d/$i.err" & done
		wait' np "$d" "$3" netperf -H "${SERVER_ADDR[$1]}" -p "$(mode_port "$2")" -t "$4" -l "$((LEN + wait))" -s "$wait" \
		-D 0.5 -j -P 0 -- $args -o THROUGHPUT,THROUGHPUT_UNITS,TRANSACTION_RATE,P50_LATENCY,P90_LATENCY,P99_LATENCY,MAX_LATENCY,ELAPSED_TIME) || true
	local got
	got=$(cat "$d"/*.out | awk -F, 'NF == 8' | wc -l)
	if ((got != $3)); then
		log "netperf: $got of $3 processes reported: $(cat "$d"/*.err "$d"/*.out | sort | uniq -c | sort -rn | head -5)"
		return 1
	fi
	awk -F, -v test="$4" '
		function med(a, n,    i, j, t) {
			for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
			return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		FNR == 1 { f++; first[f] = "" }
		# interim: " rate,units,interval_s,end_epoch"
		NF == 4 {
			ni++; ir[ni] = $1; ie[ni] = $4; is[ni] = $4 - $3; all += $1 * $3
			if (first[f] == "" || is[ni] < first[f]) first[f] = is[ni]
			if ($4 > last[f]) last[f] = $4
			next
		}
		# final: the -o selectors
		NF == 8 { n++; p50[n] = $4; p90[n] = $5; p99[n] = $6; if ($7 > mx) mx = $7 }
		END {
			w0 = ""; w1 = ""
			for (i = 1; i <= f; i++) {
				if (w0 == "" || first[i] > w0) w0 = first[i]
				if (w1 == "" || last[i] < w1) w1 = last[i]
			}
			if (w1 <= w0) { print "netperf: no window in which all processes ran" > "/dev/stderr"; exit 1 }
			for (i = 1; i <= ni; i++) {
				lo = is[i] > w0 ? is[i] : w0; hi = ie[i] < w1 ? ie[i] : w1
				if (hi > lo) sum += ir[i] * (hi - lo)
			}
			w = w1 - w0; tp = sum / w
			# The requests (or MB) are those of the whole run, setup to
			# end, as the CPU time they are divided by.
			if (test == "TCP_RR") printf "%.3f %.0f %.1f trans/s %s %s %s - %s 0 trans\n", w, all, tp, med(p50, n), med(p90, n), med(p99, n), mx
			# STREAM: CPU per MB moved; netperf reports no latency for it.
			else printf "%.3f %.0f %.1f Mbit/s - - - - - 0 MB\n", w, all / 8, tp
		}' "$d"/*.out
}

client_wrk() { # TOPO MODE CLOSE(0|1)
	local hdr=()
	[[ $3 == 0 ]] || hdr=(-H 'Connection: close')
	local out
	out=$(launch "$(mode_cgroup "$2")" "${CLIENT_NS[$1]}" wrk -t 2 -c "$WRK_CONNS" -d "${LEN}s" --timeout 10s \
		"${hdr[@]}" -s "$TMPD/tail.lua" "http://${SERVER_ADDR[$1]}:$(port_of NGINX "$2")/") || return 1
	grep '^wrkstats' <<<"$out" | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
		s = r["duration_us"] / 1e6
		printf "%.3f %d %.1f req/s %s %s %s %s %s %d req\n", s, r["requests"], r["requests"] / s,
			r["p50_us"], r["p90_us"], r["p99_us"], r["p999_us"], r["max_us"], r["errors"] }'
}

client_redis() { # TOPO MODE PIPELINE
	# A fixed request count (redis-benchmark has no duration): about LEN
	# seconds at the rates seen here; the rate is requests / elapsed.
	local n=$((LEN * 40000))
	[[ $3 == 1 ]] || n=$((LEN * 200000))
	local out
	out=$(launch "$(mode_cgroup "$2")" "${CLIENT_NS[$1]}" redis-benchmark -h "${SERVER_ADDR[$1]}" -p "$(port_of REDIS "$2")" \
		-c "$REDIS_CLIENTS" -n "$n" -P "$3" -t get --precision 3 2>&1) || return 1
	# Progress lines end in \r; the percentile table ("99.900% <= 1.234
	# milliseconds") is an HDR histogram's, so the first line at or above a
	# percentile gives it.
	tr '\r' '\n' <<<"$out" | awk '
		/requests completed in/ { req = $1; secs = $5 }
		/^ *[0-9.]+% <= [0-9.]+ milliseconds/ {
			p = $1; sub(/%/, "", p); p += 0; v = $3 * 1000
			if (p50 == "" && p >= 50) p50 = v
			if (p90 == "" && p >= 90) p90 = v
			if (p99 == "" && p >= 99) p99 = v
			if (p999 == "" && p >= 99.9) p999 = v
			if (p >= 100) mx = v
		}
		END {
			if (req == "" || secs == 0) exit 1
			printf "%.3f %d %.1f req/s %.0f %.0f %.0f %.0f %.0f 0 req\n", secs, req, req / secs, p50, p90, p99, p999, mx
		}'
}

# run_case TOPO CASE TOOL CONNS MODE REP CMD...: one measurement, one CSV row.
run_case() {
	local topo=$1 case=$2 tool=$3 conns=$4 mode=$5 rep=$6
	shift 6
	local cg c0 c1 k0 k1 res
	cg=$(mode_cgroup "$mode")
	read -r -a k0 < <(counters3)
	read -r -a c0 < <(cpu_snapshot "$cg")
	local perf_pid=
	if is_set "${PERF:-}"; then
		perf record -a -g -F 999 -o "$TMPD/perf.data" >/dev/null 2>&1 &
		perf_pid=$!
	fi
	if ! res=$("$@"); then
		res=
	fi
	if [[ -n $perf_pid ]]; then
		kill -INT "$perf_pid"
		wait "$perf_pid" || true
		# Who had the CPUs (the VM's other tenants show as their own
		# commands), then self time by symbol in the bench's own programs
		# and the kernel threads that do deferred network work for them.
		local pf=$OUT/perf-$topo-$case-$conns-$mode-$rep.txt
		{
			echo "## samples by command, all CPUs"
			perf report -i "$TMPD/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n 15
			echo "## self time by symbol, bench programs and ksoftirqd/kworker only (percent of all samples)"
			perf report -i "$TMPD/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null |
				grep -E '^ +[0-9.]+% +(loadrr|nginx|wrk|redis-server|redis-benchmar|netperf|netserver|ksoftirqd|kworker)' | head -n 30
		} >"$pf" || true
	fi
	read -r -a c1 < <(cpu_snapshot "$cg")
	read -r -a k1 < <(counters3)
	# A failed run is a row marked FAIL_no_result, not the end of the
	# bench: the full run is half an hour, and the failure (the client's
	# own message is logged above) is a finding to report beside the rest.
	# The script still fails at the end.
	if [[ -z $res ]]; then
		log "$topo $case $conns $mode rep $rep: no result"
		res="0 0 0 - - - - - - 1 -"
	fi
	local f
	read -r -a f <<<"$res"
	local d=() i
	for i in 0 1 2 3 4; do d+=($((c1[i] - c0[i]))); done
	local kd=()
	for i in 0 1 2; do kd+=($((k1[i] - k0[i]))); done
	local work=${f[1]} per=
	# CPU per operation: the cgroup's CPU time (both sides) over requests,
	# or over MB for a stream.
	[[ $work == 0 ]] || per=$(awk -v c="${d[0]}" -v w="$work" 'BEGIN { printf "%.3f", c / w }')
	local check=ok
	if [[ $mode == accelerated ]]; then
		((kd[0] > 0)) || check=FAIL_not_redirected
	else
		((kd[0] == 0)) || check=FAIL_redirected_in_baseline
	fi
	((f[9] == 0)) || check=${check/ok/errors}
	[[ ${f[1]} != 0 || ${f[2]} != 0 ]] || check=FAIL_no_result
	printf '%(%Y-%m-%dT%H:%M:%SZ)T,%s,%s,%s,%s,%s,%s,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' -1 \
		"$RUN_MODE" "$topo" "$case" "$tool" "$conns" "$mode" "$rep" "${f[0]}" "${f[1]}" "${f[2]}" "${f[3]}" \
		"${f[4]//-/}" "${f[5]//-/}" "${f[6]//-/}" "${f[7]//-/}" "${f[8]//-/}" \
		"${d[0]}" "${d[1]}" "${d[2]}" "${d[3]}" "${d[4]}" "$per" "${f[10]}" "${kd[0]}" "${kd[1]}" "${kd[2]}" "${f[9]}" "$check" >>"$CSV"
	log "$(printf '%-8s %-16s %4s %-11s #%d %12s %-7s p99 %6s p99.9 %6s max %7s us, %s us CPU/%s' "$topo" "$case" "$conns" "$mode" "$rep" \
		"${f[2]}" "${f[3]}" "${f[6]}" "${f[7]}" "${f[8]}" "$per" "${f[10]}")"
}

# rounds TOPO CASE TOOL CONNS CMD...: REPS rounds of baseline, accelerated.
rounds() {
	local topo=$1 case=$2 tool=$3 conns=$4 rep mode
	shift 4
	[[ -z ${CASES:-} || $case =~ $CASES ]] || return 0
	for ((rep = 1; rep <= REPS; rep++)); do
		for mode in "${MODES[@]}"; do
			run_case "$topo" "$case" "$tool" "$conns" "$mode" "$rep" "$@" "$topo" "$mode"
		done
	done
}

# The client functions take TOPO MODE first; rounds appends them, so pass
# the rest through a wrapper.
loadrr_n() { client_loadrr "$2" "$3" "$1"; }
stream_n() { client_stream "$2" "$3" "$1"; }
netperf_n() { client_netperf "$3" "$4" "$1" "$2"; }
wrk_n() { client_wrk "$2" "$3" "$1"; }
redis_n() { client_redis "$2" "$3" "$1"; }

# ---------------------------------------------------------------- main

exec 9>"$LOCK"
if ! flock -n 9; then
	log "another bench run holds $LOCK; waiting for it (up to 15 minutes)"
	flock -w 900 9 || die "another bench run still holds $LOCK"
fi
install_tools

TMPD=$(mktemp -d /tmp/sockaccel-load.XXXXXX)
mkdir -p "$OUT"
CSV=$OUT/results.csv
echo "$LOAD_HEADER" >"$CSV"
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load mode $RUN_MODE: $REPS rounds of ${MODES[*]} x ${LEN}s per case on ${LOAD_TOPOLOGIES[*]}; connections ${CONN_LIST[*]}; output in $OUT"

"$CC" -O2 -Wall -o "$TMPD/loadrr" "$BENCH/loadrr/loadrr.c" || die "cannot build bench/loadrr/loadrr.c with $CC"
# wrk's own report has p50-p99 only; this prints the percentiles and
# errors of the whole run in one parseable line.
cat >"$TMPD/tail.lua" <<'EOF'
done = function(summary, latency, requests)
	local e = summary.errors
	io.write(string.format("wrkstats requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
		summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
		latency:percentile(99), latency:percentile(99.9), latency.max,
		e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

if [[ -e $PIN_DIR ]]; then
	log "removing stale $PIN_DIR"
	"$SOCKACCEL" cleanup --pin-dir "$PIN_DIR" >/dev/null
	rm -rf "$PIN_DIR"
fi
add_cgroup "$CG_BASE"
add_cgroup "$CG_ACCEL"
for topo in "${LOAD_TOPOLOGIES[@]}"; do
	"setup_$topo"
done
start_daemon
STATUS_START=$("$SOCKACCEL" status --json --pin-dir "$PIN_DIR")
log "daemon $DAEMON_PID attached to $CG_ACCEL"

for topo in "${LOAD_TOPOLOGIES[@]}"; do
	start_servers "$topo"
	for n in "${CONN_LIST[@]}"; do
		rounds "$topo" RR_1B loadrr "$n" loadrr_n "$n"
	done
	for n in "${CONN_LIST[@]}"; do
		rounds "$topo" STREAM_64K loadrr "$n" stream_n "$n"
	done
	for n in "${NETPERF_LIST[@]}"; do
		rounds "$topo" TCP_RR_1B netperf "$n" netperf_n "$n" TCP_RR
	done
	for n in "${NETPERF_LIST[@]}"; do
		rounds "$topo" TCP_STREAM_64K netperf "$n" netperf_n "$n" TCP_STREAM
	done
	rounds "$topo" nginx_keepalive wrk "$WRK_CONNS" wrk_n 0
	rounds "$topo" nginx_close wrk "$WRK_CONNS" wrk_n 1
	rounds "$topo" redis_get redis-benchmark "$REDIS_CLIENTS" redis_n 1
	rounds "$topo" redis_get_P16 redis-benchmark "$REDIS_CLIENTS" redis_n 16
	stop_servers
done

STATUS_END=$("$SOCKACCEL" status --json --pin-dir "$PIN_DIR")
ELAPSED=$(($(date +%s) - START))

{
	echo "date:            $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "run mode:        load $RUN_MODE ($REPS rounds of ${MODES[*]} per case, ${LEN}s per run; topologies ${LOAD_TOPOLOGIES[*]}; connections ${CONN_LIST[*]}; wrk $WRK_CONNS connections; redis-benchmark $REDIS_CLIENTS clients)"
	echo "elapsed:         ${ELAPSED}s"
	echo "load average:    $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (the bench keeps both CPUs busy; the VM's other tenants add to it)"
	echo "kernel:          $(uname -srvm)"
	echo "cpu model:       $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "cpus:            $(nproc) online, nothing pinned"
	echo "git commit:      $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown) ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
	echo "sockaccel:       $("$SOCKACCEL" version 2>&1 | head -n 1)"
	echo "daemon command:  sockaccel ${DAEMON_ARGS[*]}"
	echo "netperf:         $(netperf -V 2>&1 | head -n 1)"
	echo "nginx:           $(nginx -v 2>&1 | head -n 1) (2 workers, 612-byte page)"
	echo "wrk:             $(wrk -v 2>&1 | head -n 1 | cut -c1-40) (-t 2)"
	echo "redis:           $(redis-server --version | head -n 1)"
	if [[ -n $IPT ]]; then
		echo "iptables:        iptables-$IPT, $(grep -c '^-A' "$TMPD/rules.v4") rules in the bridge host netns"
	fi
	echo "loadrr:          bench/loadrr (C, $("$CC" --version | head -n 1)), one epoll thread per side"
	echo
	echo "daemon status at start:"
	echo "$STATUS_START"
	echo
	echo "daemon status at end:"
	echo "$STATUS_END"
} >"$OUT/system.txt"

awk -F, -v md="$OUT/results.md" -v kernel="$KERNEL" -v run_mode="$RUN_MODE" -v reps="$REPS" -v len="$LEN" \
	-v date="$(date -u +%Y-%m-%d)" -v cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
	-f "$BENCH/load-report.awk" "$CSV"
[[ -s $OUT/results.md ]] || die "results.md missing"
log "done in ${ELAPSED}s: $OUT/{results.csv,results.md,system.txt}"
if grep -qE ',(FAIL[^,]*|errors)$' "$CSV"; then
	die "some runs failed the redirected_msgs check or had client errors (see the check column of $CSV)"
fi
