#!/usr/bin/env bash
# Capacity and cost with the maps full (issue 15 item 1): kernel memory per
# connection beyond plain TCP, and the wall time of a /metrics scrape,
# `status --json`, `conns --json`, one fallback GC pass, a restart that adopts
# the pins and a lossless cleanup, at several counts of concurrent
# accelerated connections. See bench/scale/README.md.
#
#   bash bench/scale/run.sh                 # 0, 10000 and 100000 connections
#   SCALE_QUICK=1 bash bench/scale/run.sh   # 0, 1000 and 5000 (a few minutes)
#   COUNTS="0 20000" bash bench/scale/run.sh
#
# Everything it creates is named ssc-<pid>-* and removed on exit, also on
# failure or Ctrl-C: the holder processes and the daemon (by PID), the
# cgroup, the network namespaces (with them every socket still open), the
# pin dir (sockaccel cleanup, --force only on the failure path, after the
# holders are gone) and the temporary directory.
set -euo pipefail

cd "$(dirname "$0")/../.."
SOCKACCEL=${SOCKACCEL:-bin/sockaccel}
GO=${GO:-go}
SCALE_QUICK=${SCALE_QUICK:-}
MAX_CONNS=131072
# No process may hold more descriptors than the hard RLIMIT_NOFILE (20000
# here; raising it needs CAP_SYS_RESOURCE): 100k connections are 200k
# sockets, so 8 client and 8 server processes hold 12.5k each.
CLIENTS=${CLIENTS:-8}         # client processes
SERVERS=${SERVERS:-8}         # server processes
ADDRS_PER_SERVER=1            # listening addresses per server process
PORT=7000
if [[ -n $SCALE_QUICK ]]; then
	COUNTS=${COUNTS:-0 1000 5000}
	GC_INTERVAL=${GC_INTERVAL:-5s}
	RESTARTS=${RESTARTS:-2}
	REPS=${REPS:-3}
	suffix=-scale-quick
else
	COUNTS=${COUNTS:-0 10000 100000}
	GC_INTERVAL=${GC_INTERVAL:-10s}
	RESTARTS=${RESTARTS:-3}
	REPS=${REPS:-5}
	suffix=-scale
fi
OUT=${OUT:-bench/results/$(date -u +%F)-$(uname -r)$suffix}
PFX=ssc-$$
PIN_DIR=/sys/fs/bpf/$PFX
MPORT=$((20000 + $$ % 10000))

log() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ $EUID -eq 0 ]] || die "needs root (network namespaces, cgroups, BPF)"
[[ -x $SOCKACCEL ]] || die "no $SOCKACCEL: run make build"
for t in curl jq ip python3 tail; do
	command -v "$t" >/dev/null || die "missing $t"
done
if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then
	CG_ROOT=/sys/fs/cgroup
elif [[ -e /sys/fs/cgroup/unified/cgroup.controllers ]]; then
	CG_ROOT=/sys/fs/cgroup/unified
else
	die "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
fi
CG=$CG_ROOT/$PFX

ulimit -n "$(ulimit -Hn)"
for n in $COUNTS; do
	((n / CLIENTS < $(ulimit -n) - 100 && n / SERVERS < $(ulimit -n) - 100)) ||
		die "$n connections need more than $(ulimit -n) descriptors per process: raise CLIENTS and SERVERS"
done

# ---------------------------------------------------------------- cleanup

NETNS=()
declare -A HPID=() HW=() HR=() # holder name -> PID, stdin fd, stdout fd
DPID=          # the daemon now running
CG_CREATED=
PIN_USED=
TMPD=

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	local n
	for n in "${!HPID[@]}"; do kill -KILL "${HPID[$n]}" 2>/dev/null; done
	if [[ -n $DPID ]]; then
		kill "$DPID" 2>/dev/null
		timeout 30 tail --pid="$DPID" -s 0.1 -f /dev/null
		kill -KILL "$DPID" 2>/dev/null
	fi
	wait 2>/dev/null
	if [[ -n $CG_CREATED && -d $CG ]]; then
		local pid
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			[[ -s $CG/cgroup.procs ]] || break
			while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$CG/cgroup.procs"
			sleep 0.2
		done
		rmdir "$CG" || log "warning: could not remove cgroup $CG"
	fi
	local ns
	for ns in "${NETNS[@]}"; do
		ip netns del "$ns" 2>/dev/null
	done
	if [[ -n $PIN_USED && -d $PIN_DIR ]]; then
		# Every holder is dead and its namespace gone: nothing is left to
		# lose, so --force rather than a drain that could wait.
		"$SOCKACCEL" cleanup --force --timeout 10s --pin-dir "$PIN_DIR" >/dev/null 2>&1 ||
			log "warning: sockaccel cleanup --pin-dir $PIN_DIR failed"
	fi
	[[ -z $TMPD ]] || rm -rf "$TMPD"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

TMPD=$(mktemp -d /tmp/$PFX.XXXXXX)
API=$TMPD/api.sock
TOOL=$TMPD/scaletool
CGO_ENABLED=0 "$GO" build -o "$TOOL" ./bench/scale/scaletool
mkdir -p "$OUT/raw"
RAW=$OUT/raw
CSV=$OUT/results.csv
echo "count,mode,measure,rep,value" >"$CSV"
mkdir "$CG"
CG_CREATED=1
{
	echo "date: $(date -u +%FT%TZ)"
	echo "kernel: $(uname -r)"
	echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo -dirty)"
	echo "cpus: $(nproc)"
	echo "memory: $(awk '/MemTotal/ {print $2, $3}' /proc/meminfo)"
	echo "counts: $COUNTS"
	echo "clients: $CLIENTS processes; servers: $SERVERS processes x $ADDRS_PER_SERVER addresses"
	echo "daemon: --max-conns $MAX_CONNS --gc-interval $GC_INTERVAL"
	echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/system.txt"

record() { echo "$1,$2,$3,$4,$5" >>"$CSV"; } # COUNT MODE MEASURE REP VALUE

# launch NETNS CMD...: exec CMD as a member of the cgroup inside NETNS.
# ip netns exec remounts /sys (hiding cgroupfs), so the process moves
# itself into the cgroup first; membership survives exec, and the PID stays
# the same through every exec.
launch() {
	local ns=$1
	shift
	drop_holder_fds
	# shellcheck disable=SC2016 # expanded by the inner bash
	exec bash -c 'echo "$$" >"$0/cgroup.procs" && exec ip netns exec "$1" "${@:2}"' "$CG" "$ns" "$@"
}

# drop_holder_fds: in a child, close this script's ends of the holders'
# fifos, which would otherwise keep a holder's stdin from reaching EOF.
drop_holder_fds() {
	local fd
	for fd in "${HW[@]}" "${HR[@]}"; do
		exec {fd}>&-
	done
}

add_netns() {
	ip netns add "$1"
	NETNS+=("$1")
	ip -n "$1" link set lo up
	# The whole of 127/8 is local on lo; a wide port range and deep accept
	# queues let a few addresses carry 100k connections.
	ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
}

del_netns() {
	ip netns del "$1"
	local i
	for i in "${!NETNS[@]}"; do
		[[ ${NETNS[$i]} != "$1" ]] || unset 'NETNS[i]'
	done
}

# holder_start NAME NETNS ARGS...: start scaletool ARGS in the cgroup and
# NETNS, its stdin and stdout on fifos held here.
holder_start() {
	local name=$1 ns=$2 w r
	shift 2
	mkfifo "$TMPD/$name.in" "$TMPD/$name.out"
	launch "$ns" "$TOOL" "$@" <"$TMPD/$name.in" >"$TMPD/$name.out" 2>>"$RAW/holders.log" &
	HPID[$name]=$!
	exec {w}>"$TMPD/$name.in"
	exec {r}<"$TMPD/$name.out"
	HW[$name]=$w
	HR[$name]=$r
}

# holder_wait NAME: wait for its "ready" line.
holder_wait() {
	local line
	read -r -t 900 line <&"${HR[$1]}" || die "holder $1 never got ready (see $RAW/holders.log)"
	[[ $line == ready* ]] || die "holder $1: $line"
}

# close_holder NAME: the application closes every connection and exits.
close_holder() {
	local name=$1 line w=${HW[$1]} r=${HR[$1]}
	exec {w}>&-
	read -r -t 300 line <&"$r" || die "holder $name did not close"
	exec {r}<&-
	wait "${HPID[$name]}" || die "holder $name failed"
	unset 'HPID[$name]' 'HW[$name]' 'HR[$name]'
	rm -f "$TMPD/$name.in" "$TMPD/$name.out"
}

server_addrs() { # SERVER -> its listening addresses
	local s=$1 i
	for ((i = 0; i < ADDRS_PER_SERVER; i++)); do
		printf '127.0.0.%d:%d ' $((2 + s * ADDRS_PER_SERVER + i)) "$PORT"
	done
}

open_conns() { # NETNS COUNT
	local ns=$1 n=$2 s c all=""
	for ((s = 0; s < SERVERS; s++)); do
		# shellcheck disable=SC2046 # one argument per address
		holder_start "srv$s" "$ns" serve $(server_addrs $s)
		holder_wait "srv$s"
		all+=$(server_addrs $s)
	done
	for ((c = 0; c < CLIENTS; c++)); do
		local k=$((n / CLIENTS + (c < n % CLIENTS ? 1 : 0)))
		# shellcheck disable=SC2086 # one argument per address
		holder_start "cli$c" "$ns" dial -n "$k" $all
	done
	# The clients dial in parallel.
	for ((c = 0; c < CLIENTS; c++)); do
		holder_wait "cli$c"
	done
}

close_conns() {
	local n
	for n in "${!HPID[@]}"; do [[ $n != cli* ]] || close_holder "$n"; done
	for n in "${!HPID[@]}"; do close_holder "$n"; done
}

# snap NAME: kernel memory now, and the daemon's maps' memlock.
snap() {
	cat /proc/meminfo >"$RAW/$1.meminfo"
	cat /proc/slabinfo >"$RAW/$1.slabinfo"
	[[ -n $DPID ]] || return 0
	# The daemon's maps by id (from its fds), with names and memlock.
	local ids
	ids=$(grep -h '^map_id:' /proc/"$DPID"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un | paste -sd, -)
	bpftool -j map show | jq -c --argjson ids "[$ids]" '[.[] | select(.id as $i | $ids | index($i)) | {id, name, type, max_entries, bytes_memlock}]' >"$RAW/$1.maps.json"
}

elapsed() { # T0 T1 -> seconds
	awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'
}

daemon_start() { # -> sets DPID, READY_S (seconds from exec to READY=1) and READY_CPU
	local out
	out=$(drop_holder_fds; "$TOOL" start "$RAW/daemon.log" "$SOCKACCEL" run --cgroup "$CG" --pin-dir "$PIN_DIR" \
		--max-conns "$MAX_CONNS" --metrics-addr "127.0.0.1:$MPORT" --api-socket "$API" \
		--gc-interval "$GC_INTERVAL") || die "daemon did not start (see $RAW/daemon.log)"
	PIN_USED=1
	DPID=${out% *}
	READY_S=${out#* }
	# Everything the new daemon burned from exec to READY=1 (and the few
	# milliseconds since).
	READY_CPU=$(cpu_per 0 "$(dcpu)" 1)
}

daemon_stop() {
	kill -TERM "$DPID"
	timeout 120 tail --pid="$DPID" -s 0.02 -f /dev/null || die "daemon $DPID did not stop"
	DPID=
}

# dcpu: the daemon's user+system CPU time so far, in clock ticks; CPU time
# is what a measure costs whatever else the shared machine is doing.
dcpu() { awk '{ print $14 + $15 }' "/proc/$DPID/stat"; }
TICK=$(getconf CLK_TCK)
cpu_per() { # C0 C1 REPS -> seconds per repetition
	awk -v a="$1" -v b="$2" -v n="$3" -v t="$TICK" 'BEGIN { printf "%.4f", (b - a) / t / n }'
}

status_json() { "$SOCKACCEL" status --json --pin-dir "$PIN_DIR" --api-socket "$API"; }

gc_hist() { # -> "count sum"
	curl -sS "http://127.0.0.1:$MPORT/metrics" |
		awk '$1 == "sockaccel_conntrack_gc_duration_seconds_count" { c = $2 }
		     $1 == "sockaccel_conntrack_gc_duration_seconds_sum" { s = $2 }
		     END { print c + 0, s + 0 }'
}

# ---------------------------------------------------------------- phases

baseline() { # COUNT
	local n=$1 ns=$PFX-b$1
	log "baseline: $n connections, no daemon"
	add_netns "$ns"
	snap "$n-baseline-before"
	open_conns "$ns" "$n"
	snap "$n-baseline-open"
	close_conns
	snap "$n-baseline-closed"
	del_netns "$ns"
}

accelerated() { # COUNT
	local n=$1 ns=$PFX-a$1 i t0 t1 v st
	log "accelerated: $n connections"
	daemon_start
	record "$n" accel start_empty 1 "$READY_S"
	add_netns "$ns"
	snap "$n-accel-before"
	open_conns "$ns" "$n"
	snap "$n-accel-open"
	st=$(status_json)
	echo "$st" >"$RAW/$n-status.json"
	record "$n" accel sockhash_entries 1 "$(jq .sockhash_entries <<<"$st")"
	record "$n" accel conntrack_entries 1 "$(jq .conntrack_entries <<<"$st")"
	[[ $(jq .sockhash_entries <<<"$st") -eq $((2 * n)) ]] ||
		log "warning: sockhash holds $(jq .sockhash_entries <<<"$st") sockets, not $((2 * n))"

	curl -sS -o "$RAW/$n-metrics.txt" "http://127.0.0.1:$MPORT/metrics"
	local c0
	c0=$(dcpu)
	for ((i = 1; i <= REPS; i++)); do
		record "$n" accel scrape "$i" "$(curl -sS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$MPORT/metrics")"
	done
	record "$n" accel scrape_cpu 1 "$(cpu_per "$c0" "$(dcpu)" "$REPS")"
	c0=$(dcpu)
	for ((i = 1; i <= REPS; i++)); do
		t0=$EPOCHREALTIME
		status_json >/dev/null
		t1=$EPOCHREALTIME
		record "$n" accel status_json "$i" "$(elapsed "$t0" "$t1")"
	done
	record "$n" accel status_json_cpu 1 "$(cpu_per "$c0" "$(dcpu)" "$REPS")"
	c0=$(dcpu)
	for ((i = 1; i <= REPS; i++)); do
		t0=$EPOCHREALTIME
		"$SOCKACCEL" conns --json --pin-dir "$PIN_DIR" --api-socket "$API" >"$TMPD/conns.json"
		t1=$EPOCHREALTIME
		record "$n" accel conns_json "$i" "$(elapsed "$t0" "$t1")"
	done
	record "$n" accel conns_json_cpu 1 "$(cpu_per "$c0" "$(dcpu)" "$REPS")"
	record "$n" accel conns_rows 1 "$(jq length "$TMPD/conns.json")"
	rm -f "$TMPD/conns.json"

	# GC passes over the full map: the histogram's sum and count before and
	# after a window of three intervals. An empty conntrack has no passes
	# at all (the GC sleeps on its wake-up ring buffer).
	if ((n > 0)); then
		# No polling: besides the passes the daemon only refreshes its
		# systemd STATUS= every 10 s (a few ms), so its CPU over the
		# window is the passes' CPU.
		local h0 h1 c1
		h0=$(gc_hist)
		c0=$(dcpu)
		sleep $((3 * ${GC_INTERVAL%s}))
		c1=$(dcpu)
		h1=$(gc_hist)
		if [[ ${h1% *} != "${h0% *}" ]]; then
			record "$n" accel gc_passes 1 "$(awk -v a="$h0" -v b="$h1" 'BEGIN { split(a, x, " "); split(b, y, " "); print y[1] - x[1] }')"
			record "$n" accel gc_pass 1 "$(awk -v a="$h0" -v b="$h1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.6f", (y[2] - x[2]) / (y[1] - x[1]) }')"
			record "$n" accel gc_pass_cpu 1 "$(awk -v c="$(cpu_per "$c0" "$c1" 1)" -v a="$h0" -v b="$h1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.4f", c / (y[1] - x[1]) }')"
		else
			log "warning: no GC pass within the deadline"
		fi
	fi

	for ((i = 1; i <= RESTARTS; i++)); do
		daemon_stop
		daemon_start
		record "$n" accel restart "$i" "$READY_S"
		record "$n" accel restart_cpu "$i" "$READY_CPU"
	done
	st=$(status_json)
	record "$n" accel sockhash_after_restart 1 "$(jq .sockhash_entries <<<"$st")"

	# Lossless cleanup: the applications close their connections, the
	# daemon stops, and cleanup (no --force) removes everything.
	t0=$EPOCHREALTIME
	close_conns
	t1=$EPOCHREALTIME
	record "$n" accel apps_close 1 "$(elapsed "$t0" "$t1")"
	snap "$n-accel-closed"
	daemon_stop
	t0=$EPOCHREALTIME
	"$SOCKACCEL" cleanup --pin-dir "$PIN_DIR" --timeout 120s 2>>"$RAW/cleanup.log" || die "cleanup failed (see $RAW/cleanup.log)"
	t1=$EPOCHREALTIME
	record "$n" accel cleanup 1 "$(elapsed "$t0" "$t1")"
	PIN_USED=
	del_netns "$ns"
}

for n in $COUNTS; do
	baseline "$n"
	accelerated "$n"
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/system.txt"
python3 bench/scale/report.py "$OUT" >"$OUT/results.md"
log "results in $OUT/results.md"
