#!/usr/bin/env bash
# bench/cost.sh: BPF cost per TCP_CRR connection and per TCP_RR message of
# every sockaccel program, beside the bare prototype (bench/proto), from the
# kernel's own accounting (kernel.bpf_stats_enabled: run_time_ns, run_cnt).
# Also the throughput of baseline, accelerated and prototype runs of TCP_CRR,
# TCP_RR and TCP_STREAM alternating within each round, and the AF_UNIX pair
# (bench/unixref) in every round. See bench/README.md, "Cost per connection
# and per message".
#
# Environment:
#   ROUNDS=3      rounds (baseline, accelerated, prototype, unix pair each)
#   CRR_CONNS=5000 connections per TCP_CRR run
#   RR_TRANS=50000 transactions per TCP_RR run (1 byte each way)
#   STREAM_LEN=2  seconds per TCP_STREAM run (64 KiB sends)
#   TOPOLOGIES="veth loopback"
#   TESTS="TCP_CRR TCP_RR TCP_STREAM"
#   OUT=DIR       default bench/results/<date>-<kernel>-cost
#   SOCKACCEL_B=F a second sockaccel binary (say, a branch's build) as a fourth
#                 mode, accelerated_b, in every round: its programs are the
#                 rows marked @b. Before/after in one run, which on a noisy
#                 host says more than two runs can.
#   PERF=1        also record round 1's accelerated and prototype runs with
#                 perf record -a -g (OUT/perf-<topology>-<test>-<mode>.data)
#   SOCKACCEL, GO, CC as for bench/run.sh
#
# Root. Separate from run.sh (own pin dir, names and ports), so both can run.
# The statistics are turned on by the prototype process (bench/proto -stats)
# through a BPF_ENABLE_STATS descriptor while it runs, never through the
# host-wide kernel.bpf_stats_enabled sysctl that others may be using.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
log() { printf '%s cost: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

ROUNDS=${ROUNDS:-3}
CRR_CONNS=${CRR_CONNS:-5000}
RR_TRANS=${RR_TRANS:-50000}
STREAM_LEN=${STREAM_LEN:-2}
read -r -a TOPOLOGIES <<<"${TOPOLOGIES:-veth loopback}"
read -r -a TESTS <<<"${TESTS:-TCP_CRR TCP_RR TCP_STREAM}"
SOCKACCEL=${SOCKACCEL:-$ROOT/bin/sockaccel}
[[ $SOCKACCEL == /* ]] || SOCKACCEL=$ROOT/$SOCKACCEL
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
CC=${CC:-cc}
KERNEL=$(uname -r)
OUT=${OUT:-$BENCH/results/$(date -u +%Y-%m-%d)-$KERNEL-cost}
[[ $OUT == /* ]] || OUT=$ROOT/$OUT
CLIENT_CPU=0 SERVER_CPU=1
ID=$$ PFX=sac-$$ IFP=sac$$
PIN_DIR=/sys/fs/bpf/sockaccel-cost-$$
PIN_DIR_B=/sys/fs/bpf/sockaccel-cost-b-$$
PORT_BASE=12875 PORT_ACCEL=12876 PORT_PROTO=12877 PORT_B=12878
UNIX_SNDBUF=$(awk '{ print $3 }' /proc/sys/net/ipv4/tcp_wmem)
MODES=(baseline accelerated prototype)
if [[ -n ${SOCKACCEL_B:-} ]]; then
	[[ $SOCKACCEL_B == /* ]] || SOCKACCEL_B=$ROOT/$SOCKACCEL_B
	[[ -x $SOCKACCEL_B ]] || die "no $SOCKACCEL_B"
	MODES+=(accelerated_b)
fi

[[ $EUID -eq 0 ]] || die "needs root"
[[ -x $SOCKACCEL ]] || die "no $SOCKACCEL: make build"
for t in netperf netserver bpftool jq taskset; do
	command -v "$t" >/dev/null || die "missing $t (make deps)"
done
if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then CG_ROOT=/sys/fs/cgroup; else CG_ROOT=/sys/fs/cgroup/unified; fi
[[ -e $CG_ROOT/cgroup.controllers ]] || die "no cgroup v2 hierarchy"

NETNS=() CGROUPS=() PIDS=() DAEMON_PID= DAEMON_B_PID= PROTO_PID= TMPD=
cleanup() {
	local rc=$? p cg ns pid
	set +e
	trap - EXIT INT TERM
	for p in "${PIDS[@]}" $PROTO_PID $DAEMON_PID $DAEMON_B_PID; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	for cg in "${CGROUPS[@]}"; do
		for _ in 1 2 3 4 5; do
			[[ -s $cg/cgroup.procs ]] || break
			while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$cg/cgroup.procs"
			sleep 0.1
		done
		rmdir "$cg" 2>/dev/null || log "warning: could not remove $cg"
	done
	for ns in "${NETNS[@]}"; do ip netns del "$ns"; done
	if [[ -e $PIN_DIR ]]; then
		"$SOCKACCEL" cleanup --pin-dir "$PIN_DIR" >/dev/null 2>&1
		rm -rf "$PIN_DIR"
	fi
	if [[ -e $PIN_DIR_B ]]; then
		"$SOCKACCEL_B" cleanup --pin-dir "$PIN_DIR_B" >/dev/null 2>&1
		rm -rf "$PIN_DIR_B"
	fi
	[[ -z $TMPD ]] || rm -rf "$TMPD"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

launch() { # CGROUP NETNS CMD...: as in run.sh, join the cgroup before ip netns exec hides it
	local cg=$1 ns=$2
	shift 2
	# shellcheck disable=SC2016
	exec bash -c 'echo "$$" >"$0/cgroup.procs" && exec ip netns exec "$1" "${@:2}"' "$cg" "$ns" "$@"
}
add_netns() { ip netns add "$1" && NETNS+=("$1") && ip -n "$1" link set lo up; }
add_cgroup() { mkdir "$1" && CGROUPS+=("$1"); }

declare -A CLIENT_NS SERVER_NS SERVER_ADDR
setup_veth() {
	add_netns "$PFX-va"
	add_netns "$PFX-vb"
	ip link add "${IFP}a" netns "$PFX-va" type veth peer name "${IFP}b" netns "$PFX-vb"
	ip -n "$PFX-va" addr add 10.251.2.1/24 dev "${IFP}a"
	ip -n "$PFX-vb" addr add 10.251.2.2/24 dev "${IFP}b"
	ip -n "$PFX-va" link set "${IFP}a" up
	ip -n "$PFX-vb" link set "${IFP}b" up
	CLIENT_NS[veth]=$PFX-va SERVER_NS[veth]=$PFX-vb SERVER_ADDR[veth]=10.251.2.2
}
setup_loopback() {
	add_netns "$PFX-lo"
	# netperf's AI_ADDRCONFIG wants one non-loopback address (see run.sh).
	ip -n "$PFX-lo" link add "${IFP}l" type veth peer name "${IFP}m"
	ip -n "$PFX-lo" addr add 10.251.3.1/32 dev "${IFP}l"
	ip -n "$PFX-lo" link set "${IFP}l" up
	ip -n "$PFX-lo" link set "${IFP}m" up
	CLIENT_NS[loopback]=$PFX-lo SERVER_NS[loopback]=$PFX-lo SERVER_ADDR[loopback]=127.0.0.1
}

CG_BASE=$CG_ROOT/$PFX-baseline CG_ACCEL=$CG_ROOT/$PFX-accel CG_PROTO=$CG_ROOT/$PFX-proto CG_B=$CG_ROOT/$PFX-accel-b
mode_cg() { case $1 in baseline) echo "$CG_BASE" ;; accelerated) echo "$CG_ACCEL" ;; prototype) echo "$CG_PROTO" ;; accelerated_b) echo "$CG_B" ;; esac; }
mode_port() { case $1 in baseline) echo $PORT_BASE ;; accelerated) echo $PORT_ACCEL ;; prototype) echo $PORT_PROTO ;; accelerated_b) echo $PORT_B ;; esac; }

# PROGS: "id label" of every program this run loaded. Found through what
# only this run owns (its cgroups, its pin dir), never by name: other
# sockaccel daemons and prototypes may run on the host at the same time.
PROGS=()
find_progs() { # CGROUP PIN_DIR LABEL_SUFFIX
	local id map l name cg=$1 pin=$2 sfx=$3
	while read -r id name; do PROGS+=("$id $name$sfx"); done < <(bpftool cgroup show "$cg" -j | jq -r '.[] | "\(.id) \(.name)"')
	id=$(bpftool prog show pinned "$pin/progs/sk_msg" -j | jq -r .id)
	PROGS+=("$id sa_redirect$sfx")
	# One program may serve several tracepoints (recvfrom and recvmmsg).
	declare -A tps=()
	for l in "$pin"/links/detect-*; do
		id=$(bpftool link show pinned "$l" -j | jq -r .prog_id)
		tps[$id]+=${tps[$id]:++}${l##*detect-sys_enter_}
	done
	for id in "${!tps[@]}"; do
		name=$(bpftool prog show id "$id" -j | jq -r .name)
		PROGS+=("$id $name(${tps[$id]})$sfx")
	done
}
find_proto() {
	local id map
	id=$(bpftool cgroup show "$CG_PROTO" -j | jq -r '.[] | select(.attach_type == "cgroup_sock_ops") | .id')
	PROGS+=("$id proto_sockops")
	# The prototype's sk_msg is the proto_redirect program sharing its
	# sock_ops program's sockhash.
	map=$(bpftool prog show id "$id" -j | jq -r '.map_ids[0]')
	id=$(bpftool prog show -j | jq -r --argjson m "$map" '.[] | select(.name == "proto_redirect" and ((.map_ids // []) | index($m))) | .id')
	PROGS+=("$id proto_redirect")
}

# snapshot FILE: "id run_time_ns run_cnt" for every program of PROGS.
snapshot() {
	local ids p
	ids=$(for p in "${PROGS[@]}"; do echo "${p%% *}"; done | paste -sd, -)
	bpftool prog show -j | jq -r --arg ids "$ids" \
		'($ids | split(",") | map(tonumber)) as $want | .[] | select(.id as $i | $want | index($i)) | "\(.id) \(.run_time_ns // 0) \(.run_cnt // 0)"' >"$1"
}

CSV=
# measure TOPO TEST MODE ROUND: one netperf run between two snapshots; one
# CSV row per program: its run count and time per unit (connection,
# transaction, or second of stream) and per run.
measure() {
	local topo=$1 test=$2 mode=$3 rnd=$4 cg port units line tput
	cg=$(mode_cg "$mode") port=$(mode_port "$mode")
	local -a a
	case $test in
	TCP_CRR) a=(-t TCP_CRR -l "-$CRR_CONNS" -- -r 1,1) units=$CRR_CONNS ;;
	TCP_RR) a=(-t TCP_RR -l "-$RR_TRANS" -- -r 1,1) units=$RR_TRANS ;;
	TCP_STREAM) a=(-t TCP_STREAM -l "$STREAM_LEN" -- -m 65536) units=$STREAM_LEN ;;
	esac
	local perf=()
	if [[ -n ${PERF:-} && $rnd == 1 && $mode != baseline ]]; then
		perf=(perf record -q -a -g -o "$OUT/perf-$topo-$test-$mode.data" --)
	fi
	snapshot "$TMPD/s0"
	("${perf[@]}" bash -c "$(declare -f launch); launch \"\$@\"" launch "$cg" "${CLIENT_NS[$topo]}" taskset -c $CLIENT_CPU netperf -H "${SERVER_ADDR[$topo]}" -p "$port" \
		-T "$CLIENT_CPU,$SERVER_CPU" -P 0 "${a[@]}" -o THROUGHPUT,THROUGHPUT_UNITS >"$TMPD/np.out" 2>&1) ||
		die "netperf $topo $test $mode: $(cat "$TMPD/np.out")"
	snapshot "$TMPD/s1"
	line=$(grep -E '^[0-9.]+,' "$TMPD/np.out" | tail -n 1) || die "netperf output: $(cat "$TMPD/np.out")"
	tput=${line%%,*}
	local p id name t0 c0 t1 c1
	for p in "${PROGS[@]}"; do
		id=${p%% *} name=${p#* }
		read -r t0 c0 < <(awk -v id="$id" '$1 == id { print $2, $3 }' "$TMPD/s0")
		read -r t1 c1 < <(awk -v id="$id" '$1 == id { print $2, $3 }' "$TMPD/s1")
		awk -v OFS=, -v topo="$topo" -v test="$test" -v mode="$mode" -v r="$rnd" -v tp="$tput" -v u="$units" \
			-v name="$name" -v dt=$((t1 - t0)) -v dc=$((c1 - c0)) \
			'BEGIN { print topo, test, mode, r, tp, u, name, dc, dt, dc / u, dt / u, (dc ? dt / dc : 0) }' >>"$CSV"
	done
	log "$(printf '%-8s %-10s %-11s #%d %s' "$topo" "$test" "$mode" "$rnd" "$line")"
}

unixref() { # TEST ROUND
	local kind=$1 rnd=$2 size=1 tput
	[[ $kind == rr ]] || size=65536
	"$TMPD/unixref" -test "$kind" -size "$size" -duration "${STREAM_LEN}s" -cpus "$CLIENT_CPU,$SERVER_CPU" \
		-sndbuf "$UNIX_SNDBUF" >"$TMPD/u.out" || die "unixref $kind failed"
	if [[ $kind == rr ]]; then
		tput=$(tr ' ' '\n' <"$TMPD/u.out" | awk -F= '$1 == "trans_per_s" { print $2 }')
		echo "unix,TCP_RR,unixpair,$rnd,$tput,,,,,,," >>"$CSV"
	else
		tput=$(tr ' ' '\n' <"$TMPD/u.out" | awk -F= '$1 == "mbit_per_s" { print $2 }')
		echo "unix,TCP_STREAM,unixpair,$rnd,$tput,,,,,,," >>"$CSV"
	fi
	log "unix     $kind #$rnd $tput"
}

# ---------------------------------------------------------------- main

TMPD=$(mktemp -d /tmp/sockaccel-cost.XXXXXX)
mkdir -p "$OUT"
CSV=$OUT/cost.csv
echo "topology,test,mode,round,throughput,units,program,run_cnt,run_time_ns,runs_per_unit,ns_per_unit,ns_per_run" >"$CSV"
"$CC" -O2 -Wall -o "$TMPD/unixref" "$BENCH/unixref/unixref.c" || die "cannot build unixref"
(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -o "$TMPD/proto" ./bench/proto) || die "cannot build bench/proto"

add_cgroup "$CG_BASE"
add_cgroup "$CG_ACCEL"
add_cgroup "$CG_PROTO"
[[ -z ${SOCKACCEL_B:-} ]] || add_cgroup "$CG_B"
for topo in "${TOPOLOGIES[@]}"; do "setup_$topo"; done

"$TMPD/proto" -cgroup "$CG_PROTO" -stats >"$TMPD/proto.log" 2>&1 &
PROTO_PID=$!
# Like run.sh: netperf's sockets are blocking, and the bench measures the
# fast path; the control ports stay on TCP.
PORTS=$PORT_BASE,$PORT_ACCEL,$PORT_PROTO,$PORT_B
# shellcheck disable=SC2206 # extra daemon flags are meant to split
DAEMON_ARGS=(run --cgroup "$CG_ACCEL" --pin-dir "$PIN_DIR" --exclude-ports "$PORTS"
	--metrics-addr= --api-socket= --conservative=false ${SOCKACCEL_FLAGS:-})
"$SOCKACCEL" "${DAEMON_ARGS[@]}" >"$OUT/daemon.log" 2>&1 &
DAEMON_PID=$!
if [[ -n ${SOCKACCEL_B:-} ]]; then
	# shellcheck disable=SC2206
	"$SOCKACCEL_B" run --cgroup "$CG_B" --pin-dir "$PIN_DIR_B" --exclude-ports "$PORTS" \
		--metrics-addr= --api-socket= --conservative=false ${SOCKACCEL_FLAGS:-} >"$OUT/daemon-b.log" 2>&1 &
	DAEMON_B_PID=$!
fi
for i in $(seq 100); do
	kill -0 "$DAEMON_PID" 2>/dev/null || die "daemon exited: $(cat "$OUT/daemon.log")"
	kill -0 "$PROTO_PID" 2>/dev/null || die "bench/proto exited: $(cat "$TMPD/proto.log")"
	[[ -z $DAEMON_B_PID ]] || kill -0 "$DAEMON_B_PID" 2>/dev/null || die "daemon B exited: $(cat "$OUT/daemon-b.log")"
	[[ -z $DAEMON_B_PID || $("$SOCKACCEL_B" status --json --pin-dir "$PIN_DIR_B" 2>/dev/null | jq -r .attached) == true ]] &&
		[[ $("$SOCKACCEL" status --json --pin-dir "$PIN_DIR" 2>/dev/null | jq -r .attached) == true ]] &&
		grep -q '^attached' "$TMPD/proto.log" && break
	((i < 100)) || die "daemon or prototype did not attach within 10 s"
	sleep 0.1
done
find_progs "$CG_ACCEL" "$PIN_DIR" ""
[[ -z $DAEMON_B_PID ]] || find_progs "$CG_B" "$PIN_DIR_B" @b
find_proto
log "programs: $(printf '%s; ' "${PROGS[@]}")"

for topo in "${TOPOLOGIES[@]}"; do
	for mode in "${MODES[@]}"; do
		launch "$(mode_cg "$mode")" "${SERVER_NS[$topo]}" taskset -c $SERVER_CPU netserver -D -p "$(mode_port "$mode")" \
			>/dev/null 2>&1 &
		PIDS+=($!)
	done
	sleep 0.5
	for ((r = 1; r <= ROUNDS; r++)); do
		for test in "${TESTS[@]}"; do
			for mode in "${MODES[@]}"; do measure "$topo" "$test" "$mode" "$r"; done
		done
		[[ " ${TESTS[*]} " != *" TCP_RR "* ]] || unixref rr "$r"
		[[ " ${TESTS[*]} " != *" TCP_STREAM "* ]] || unixref stream "$r"
	done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	PIDS=()
done

{
	echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel:   $(uname -srvm)"
	echo "commit:   $(git -C "$ROOT" rev-parse HEAD) ($(git -C "$ROOT" describe --always --dirty))"
	echo "daemon:   sockaccel ${DAEMON_ARGS[*]}"
	[[ -z ${SOCKACCEL_B:-} ]] || echo "daemon b: $SOCKACCEL_B (mode accelerated_b, its programs marked @b), same flags on $CG_B"
	echo "rounds:   $ROUNDS; TCP_CRR $CRR_CONNS connections, TCP_RR $RR_TRANS transactions (1 B each way), TCP_STREAM ${STREAM_LEN}s of 64 KiB sends"
	echo "load:     $(cut -d' ' -f1-3 /proc/loadavg) at end"
} >"$OUT/system.txt"
awk -F, -f "$BENCH/cost.awk" "$CSV" >"$OUT/cost.md"
cat "$OUT/cost.md"
log "done: $OUT/{cost.csv,cost.md,system.txt,daemon.log}"
