#!/usr/bin/env bash
# bench/run.sh: netperf benchmark of sockaccel on three same-host topologies
# (bridge + br_netfilter + kube-proxy-like iptables, plain veth, loopback),
# baseline and accelerated runs alternating, plus an AF_UNIX socket-pair
# reference. See bench/README.md.
#
# Environment:
#   QUICK=1      fewer/shorter runs (about 2 minutes)
#   SOCKACCEL_FLAGS  extra flags for the daemon (e.g. --conntrack=false), recorded in system.txt
#   SMOKE=1      every test once for 1 s on every topology (well under a minute)
#   PROTO=1      also run the bare sockmap prototype (bench/proto) in every round:
#                baseline, accelerated, prototype (half as long again)
#   GO=go        Go toolchain that builds bench/proto (PROTO=1 only)
#   OUT=DIR      output directory (default bench/results/<date>-<kernel>[-quick|-smoke])
#   SOCKACCEL=F  sockaccel binary (default bin/sockaccel, built by make build)
#   CC=cc        C compiler for bench/unixref/unixref.c
#   IPTABLES=nft|legacy   force an iptables variant (default: the first that works, nft first)
#
# Needs root. Installs netperf (Debian non-free), iptables, gnuplot-nox and jq
# with apt-get when missing (not with INSTALL=0; INSTALL_ONLY=1 installs and
# exits: make deps). Everything it creates (network namespaces,
# cgroups, the bpffs pin dir, iptables rules, processes) is removed on exit,
# also on failure or interrupt.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench

is_set() { [[ -n ${1:-} && ${1:-} != 0 && ${1:-} != false ]]; }
log() { printf '%s bench: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ---------------------------------------------------------------- settings

# TCP_CRR runs a fixed number of connections (netperf -l -N) instead of a
# fixed time: when a time-limited CRR test ends, its last connect() is cut
# short by the timer and netserver only notices at its own timer, 4 s (netperf's
# PAD_TIME) later, which would add 4 s of idle time to every CRR run.
RUN_MODE=full
REPS=5          # rounds (one run of each mode) per test and topology
LEN=3           # seconds per netperf run
CRR_CONNS=20000 # connections per TCP_CRR run (about LEN seconds)
REF_LEN=3s      # seconds per unix-socket reference run
if is_set "${SMOKE:-}"; then
	RUN_MODE=smoke REPS=1 LEN=1 CRR_CONNS=3000 REF_LEN=1s
elif is_set "${QUICK:-}"; then
	RUN_MODE=quick REPS=3 LEN=1 CRR_CONNS=7000 REF_LEN=1s
fi

CLIENT_CPU=0
SERVER_CPU=1
ID=$$ # unique per run; every name below carries it
PFX=sab-$ID
IFP=sab$ID # interface-name prefix (<= 10 chars, names stay within 15)
PIN_DIR=/sys/fs/bpf/sockaccel-bench
LOCK=/run/lock/sockaccel-bench.lock # left in place: removing a flock file races with waiters
PORT_BASE=12865  # netserver control port, baseline
PORT_ACCEL=12866 # netserver control port, accelerated
PORT_PROTO=12867 # netserver control port, prototype (PROTO=1)
# AF_UNIX socket buffer for the reference: TCP's autotuning ceiling, so the
# reference is not held back by the small AF_UNIX default (wmem_default).
UNIX_SNDBUF=$(awk '{ print $3 }' /proc/sys/net/ipv4/tcp_wmem)
CT_TIME_WAIT=5    # s: conntrack TIME_WAIT timeout in the bridge host netns (see setup_bridge)
SVC_RULES=300    # kube-proxy-like services (filter rules per packet, nat rules per connection)

TESTS=(TCP_RR_1 TCP_RR_1K TCP_CRR TCP_STREAM_64K)
MODES=(baseline accelerated)
if is_set "${PROTO:-}"; then
	MODES+=(prototype)
fi
TOPOLOGIES=(bridge veth loopback)

SOCKACCEL=${SOCKACCEL:-$ROOT/bin/sockaccel}
[[ $SOCKACCEL == /* ]] || SOCKACCEL=$ROOT/$SOCKACCEL
CC=${CC:-cc}
GO=${GO:-go}

KERNEL=$(uname -r)
suffix=
[[ $RUN_MODE == full ]] || suffix=-$RUN_MODE
OUT=${OUT:-$BENCH/results/$(date -u +%Y-%m-%d)-$KERNEL$suffix}
[[ $OUT == /* ]] || OUT=$ROOT/$OUT

# netperf omni output selectors, in CSV order.
SELECTORS=THROUGHPUT,THROUGHPUT_UNITS,TRANSACTION_RATE,P50_LATENCY,P99_LATENCY,MEAN_LATENCY,LOCAL_CPU_UTIL,REMOTE_CPU_UTIL,LOCAL_SD,REMOTE_SD,SD_UNITS,LOCAL_CPU_BIND,REMOTE_CPU_BIND,ELAPSED_TIME
CSV_HEADER=time,run_mode,topology,test,mode,rep,seconds,client_cpu,server_cpu,throughput,throughput_units,trans_per_s,p50_us,p99_us,mean_us,local_cpu_util,remote_cpu_util,local_sd,remote_sd,sd_units,redirected_msgs,redirected_bytes,passed_msgs,passed_bytes,inserted,redirect_errors,nf_forward_pkts,check

# ---------------------------------------------------------------- checks, tools

[[ $EUID -eq 0 ]] || die "needs root (network namespaces, cgroups, BPF)"
[[ -n ${INSTALL_ONLY:-} || -x $SOCKACCEL ]] || die "sockaccel binary $SOCKACCEL not found: run make build or set SOCKACCEL"
(($(nproc) >= 2)) || die "needs at least 2 CPUs (client on CPU $CLIENT_CPU, server on CPU $SERVER_CPU)"

if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then
	CG_ROOT=/sys/fs/cgroup
elif [[ -e /sys/fs/cgroup/unified/cgroup.controllers ]]; then
	CG_ROOT=/sys/fs/cgroup/unified
else
	die "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
fi

# enable_non_free adds the non-free component (netperf lives there) to the
# Debian sources; idempotent.
enable_non_free() {
	local f=/etc/apt/sources.list.d/debian.sources
	if [[ -f $f ]]; then
		sed -i -E '/^Components:/{/(^|[[:space:]])non-free([[:space:]]|$)/!s/$/ non-free/}' "$f"
	elif [[ -f /etc/apt/sources.list ]]; then
		sed -i -E '/^deb(-src)?[[:space:]]/{/[[:space:]]non-free([[:space:]]|$)/!s/$/ non-free/}' /etc/apt/sources.list
	else
		die "no Debian apt sources found to enable non-free for netperf"
	fi
}

install_tools() {
	local pkgs=() nonfree=
	if ! command -v netperf >/dev/null || ! command -v netserver >/dev/null; then
		pkgs+=(netperf)
		nonfree=1
	fi
	command -v iptables-nft >/dev/null || command -v iptables-legacy >/dev/null || pkgs+=(iptables)
	command -v gnuplot >/dev/null || pkgs+=(gnuplot-nox)
	command -v jq >/dev/null || pkgs+=(jq)
	command -v "$CC" >/dev/null || pkgs+=(gcc libc6-dev)
	command -v taskset >/dev/null || pkgs+=(util-linux)
	if ! command -v ip >/dev/null || ! command -v ss >/dev/null; then
		pkgs+=(iproute2)
	fi
	((${#pkgs[@]})) || return 0
	# The Go smoke test (make test) never installs anything: make deps does.
	[[ ${INSTALL:-1} == 1 ]] || die "missing tools (${pkgs[*]}): run 'make deps' first"
	command -v apt-get >/dev/null || die "missing tools (${pkgs[*]}) and no apt-get to install them"
	log "installing ${pkgs[*]}"
	[[ -z $nonfree ]] || enable_non_free
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}


# ---------------------------------------------------------------- cleanup

NETNS=()    # namespaces we created
CGROUPS=()  # cgroup directories we created
PIDS=()     # background processes we started (netservers)
CUR_PID=    # the netperf/unixref running now
DAEMON_PID= # sockaccel run
PROTO_PID=  # bench/proto (PROTO=1)
PIN_CREATED=
IPT=      # iptables variant in use (nft|legacy)
IPT_NS=   # namespace holding the iptables rules
TMPD=

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	[[ -z $CUR_PID ]] || kill "$CUR_PID" 2>/dev/null
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	[[ -z $PROTO_PID ]] || kill "$PROTO_PID" 2>/dev/null
	if [[ -n $DAEMON_PID ]]; then
		kill "$DAEMON_PID" 2>/dev/null
		for _ in $(seq 50); do
			kill -0 "$DAEMON_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$DAEMON_PID" 2>/dev/null
	fi
	wait 2>/dev/null
	# Anything still in our cgroups was started by us (netserver children).
	local cg pid
	for cg in "${CGROUPS[@]}"; do
		[[ -d $cg ]] || continue
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			[[ -s $cg/cgroup.procs ]] || break
			while read -r pid; do kill -KILL "$pid" 2>/dev/null; done <"$cg/cgroup.procs"
			sleep 0.1
		done
		rmdir "$cg" || log "warning: could not remove cgroup $cg"
	done
	if [[ -n $IPT && -n $IPT_NS ]]; then
		local t
		for t in filter nat; do
			ip netns exec "$IPT_NS" "iptables-$IPT" -w -t "$t" -F 2>/dev/null
			ip netns exec "$IPT_NS" "iptables-$IPT" -w -t "$t" -X 2>/dev/null
		done
	fi
	local ns
	for ns in "${NETNS[@]}"; do
		ip netns del "$ns" || log "warning: could not delete netns $ns"
	done
	if [[ -n $PIN_CREATED ]]; then
		"$SOCKACCEL" cleanup --pin-dir "$PIN_DIR" >/dev/null 2>&1 || log "warning: sockaccel cleanup --pin-dir $PIN_DIR failed"
		rm -rf "$PIN_DIR" 2>/dev/null
	fi
	[[ -z $TMPD ]] || rm -rf "$TMPD"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

# launch CGROUP NETNS CMD...: exec CMD as a member of CGROUP inside NETNS.
# ip netns exec remounts /sys (hiding cgroupfs), so the process moves itself
# into the cgroup first; membership survives exec. The PID stays the same
# through every exec, so $! of "launch ... &" is the PID of CMD.
launch() {
	local cg=$1 ns=$2
	shift 2
	# shellcheck disable=SC2016 # expanded by the inner bash
	exec bash -c 'echo "$$" >"$0/cgroup.procs" && exec ip netns exec "$1" "${@:2}"' "$cg" "$ns" "$@"
}

add_netns() {
	ip netns add "$1"
	NETNS+=("$1")
	ip -n "$1" link set lo up
}

add_cgroup() {
	mkdir "$1"
	CGROUPS+=("$1")
}

# counters prints the daemon counters the CSV records, space separated.
counters() {
	"$SOCKACCEL" status --json --pin-dir "$PIN_DIR" |
		jq -r '[.redirected_msgs, .redirected_bytes, .passed_msgs, .passed_bytes, .inserted, .redirect_errors] | @tsv'
}

# nf_pkts prints how many packets went through the kube-proxy-like filter
# chain in the bridge host namespace so far (empty for other topologies).
nf_pkts() {
	[[ $1 == bridge ]] || return 0
	ip netns exec "$IPT_NS" "iptables-$IPT" -w -t filter -L FORWARD -v -x -n |
		awk '$3 == "KUBE-SERVICES" { print $1; exit }'
}

wait_listen() { # NETNS PORT
	local i
	for i in $(seq 100); do
		[[ -z $(ip netns exec "$1" ss -Hltn "sport = :$2") ]] || return 0
		sleep 0.05
	done
	return 1
}

# ---------------------------------------------------------------- topologies

CG_BASE=$CG_ROOT/$PFX-baseline
CG_ACCEL=$CG_ROOT/$PFX-accel
CG_PROTO=$CG_ROOT/$PFX-proto

declare -A CLIENT_NS SERVER_NS SERVER_ADDR

setup_bridge() {
	local host=$PFX-br-host a=$PFX-br-a b=$PFX-br-b br=${IFP}br
	add_netns "$host"
	add_netns "$a"
	add_netns "$b"
	ip -n "$host" link add "$br" type bridge
	ip -n "$host" link set "$br" up
	local side ns n
	for side in a b; do
		if [[ $side == a ]]; then ns=$a n=2; else ns=$b n=3; fi
		ip link add "${IFP}b$side" netns "$host" type veth peer name eth0 netns "$ns"
		ip -n "$host" link set "${IFP}b$side" master "$br" up
		ip -n "$ns" addr add "10.250.1.$n/24" dev eth0
		ip -n "$ns" link set eth0 up
	done
	# br_netfilter: bridged IPv4 goes through iptables in the bridge's netns.
	ip netns exec "$host" sysctl -qw net.bridge.bridge-nf-call-iptables=1 ||
		die "cannot enable net.bridge.bridge-nf-call-iptables in $host (br_netfilter missing?)"
	load_iptables "$host"
	# TCP_CRR opens tens of thousands of connections per run, and netfilter
	# keeps each one's conntrack entry for the TIME_WAIT timeout (120 s):
	# a few runs fill the host-wide table (nf_conntrack_max), and from then
	# on SYNs are dropped and connects wait for their 1 s retransmit, in
	# whichever mode happens to run. A short TIME_WAIT in this netns only
	# keeps the table from filling.
	ip netns exec "$host" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=$CT_TIME_WAIT ||
		die "cannot set nf_conntrack_tcp_timeout_time_wait in $host"
	CLIENT_NS[bridge]=$a SERVER_NS[bridge]=$b SERVER_ADDR[bridge]=10.250.1.3
}

setup_veth() {
	local a=$PFX-veth-a b=$PFX-veth-b
	add_netns "$a"
	add_netns "$b"
	ip link add "${IFP}va" netns "$a" type veth peer name "${IFP}vb" netns "$b"
	ip -n "$a" addr add 10.250.2.1/24 dev "${IFP}va"
	ip -n "$b" addr add 10.250.2.2/24 dev "${IFP}vb"
	ip -n "$a" link set "${IFP}va" up
	ip -n "$b" link set "${IFP}vb" up
	CLIENT_NS[veth]=$a SERVER_NS[veth]=$b SERVER_ADDR[veth]=10.250.2.2
}

setup_loopback() {
	local l=$PFX-lo
	add_netns "$l"
	# netperf resolves 127.0.0.1 with AI_ADDRCONFIG, which fails in a
	# namespace without any non-loopback IPv4 address; give it one on an
	# otherwise unused veth pair (no dummy driver on every kernel). Traffic
	# still goes over lo.
	ip -n "$l" link add "${IFP}la" type veth peer name "${IFP}lb"
	ip -n "$l" addr add 10.250.3.1/32 dev "${IFP}la"
	ip -n "$l" link set "${IFP}la" up
	ip -n "$l" link set "${IFP}lb" up
	CLIENT_NS[loopback]=$l SERVER_NS[loopback]=$l SERVER_ADDR[loopback]=127.0.0.1
}

# kube_proxy_rules writes an iptables-restore file shaped like kube-proxy's
# iptables mode with $SVC_RULES services. filter/FORWARD sends every packet
# through KUBE-SERVICES ($SVC_RULES "no endpoints" rules, none match) before
# the conntrack ESTABLISHED accept, so each packet traverses them; nat sends
# every new connection through $SVC_RULES ClusterIP rules (plus per-service
# KUBE-SVC/KUBE-SEP chains that never match our traffic).
kube_proxy_rules() {
	local i a b
	echo '*nat'
	echo ':PREROUTING ACCEPT [0:0]'
	echo ':INPUT ACCEPT [0:0]'
	echo ':OUTPUT ACCEPT [0:0]'
	echo ':POSTROUTING ACCEPT [0:0]'
	echo ':KUBE-SERVICES - [0:0]'
	echo ':KUBE-NODEPORTS - [0:0]'
	echo ':KUBE-POSTROUTING - [0:0]'
	echo ':KUBE-MARK-MASQ - [0:0]'
	for ((i = 0; i < SVC_RULES; i++)); do
		printf ':KUBE-SVC-%04d - [0:0]\n:KUBE-SEP-%04d - [0:0]\n' "$i" "$i"
	done
	echo '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
	echo '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
	echo '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
	echo '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000'
	echo '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN'
	echo '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0'
	echo '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
	for ((i = 0; i < SVC_RULES; i++)); do
		a=$((i / 250)) b=$((i % 250 + 1))
		printf -- '-A KUBE-SERVICES -d 10.96.%d.%d/32 -p tcp -m comment --comment "bench/svc-%d:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-%04d\n' "$a" "$b" "$i" "$i"
		printf -- '-A KUBE-SVC-%04d ! -s 10.244.0.0/16 -d 10.96.%d.%d/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ\n' "$i" "$a" "$b"
		printf -- '-A KUBE-SVC-%04d -j KUBE-SEP-%04d\n' "$i" "$i"
		printf -- '-A KUBE-SEP-%04d -s 10.244.%d.%d/32 -j KUBE-MARK-MASQ\n' "$i" "$a" "$b"
		printf -- '-A KUBE-SEP-%04d -p tcp -m tcp -j DNAT --to-destination 10.244.%d.%d:8080\n' "$i" "$a" "$b"
	done
	echo '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
	echo 'COMMIT'
	echo '*filter'
	echo ':INPUT ACCEPT [0:0]'
	echo ':FORWARD DROP [0:0]'
	echo ':OUTPUT ACCEPT [0:0]'
	echo ':KUBE-PROXY-FIREWALL - [0:0]'
	echo ':KUBE-FORWARD - [0:0]'
	echo ':KUBE-SERVICES - [0:0]'
	echo ':KUBE-EXTERNAL-SERVICES - [0:0]'
	echo '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL'
	echo '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'
	echo '-A FORWARD -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
	echo '-A FORWARD -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'
	echo '-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT'
	echo '-A FORWARD -s 10.250.1.0/24 -d 10.250.1.0/24 -j ACCEPT'
	echo '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP'
	echo '-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -m comment --comment "kubernetes forwarding rules" -j ACCEPT'
	for ((i = 0; i < SVC_RULES; i++)); do
		a=$((i / 250)) b=$((i % 250 + 1))
		printf -- '-A KUBE-SERVICES -d 10.97.%d.%d/32 -p tcp -m comment --comment "bench/svc-noep-%d:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable\n' "$a" "$b" "$i"
	done
	echo 'COMMIT'
}

load_iptables() { # NETNS
	local ns=$1 v variants=(nft legacy)
	[[ -z ${IPTABLES:-} ]] || variants=("$IPTABLES")
	for v in "${variants[@]}"; do
		command -v "iptables-$v" >/dev/null || continue
		if ip netns exec "$ns" "iptables-$v" -w -t filter -N SAB-PROBE 2>/dev/null &&
			ip netns exec "$ns" "iptables-$v" -w -t filter -X SAB-PROBE 2>/dev/null; then
			IPT=$v
			break
		fi
	done
	[[ -n $IPT ]] || die "no working iptables (tried ${variants[*]})"
	IPT_NS=$ns
	kube_proxy_rules >"$TMPD/rules.v4"
	ip netns exec "$ns" "iptables-$IPT-restore" -w <"$TMPD/rules.v4" || die "iptables-$IPT-restore failed"
	log "bridge: iptables-$IPT, $(grep -c '^-A' "$TMPD/rules.v4") rules loaded"
}

# ---------------------------------------------------------------- runs

declare -A TEST_NAME TEST_ARGS
TEST_NAME[TCP_RR_1]=TCP_RR TEST_ARGS[TCP_RR_1]="-r 1,1"
TEST_NAME[TCP_RR_1K]=TCP_RR TEST_ARGS[TCP_RR_1K]="-r 1024,1024"
TEST_NAME[TCP_CRR]=TCP_CRR TEST_ARGS[TCP_CRR]="-r 1,1"
TEST_NAME[TCP_STREAM_64K]=TCP_STREAM TEST_ARGS[TCP_STREAM_64K]="-m 65536"

# mode_cgroup MODE and mode_port MODE: where that mode's netperf and
# netserver run.
mode_cgroup() {
	case $1 in
	baseline) echo "$CG_BASE" ;;
	accelerated) echo "$CG_ACCEL" ;;
	prototype) echo "$CG_PROTO" ;;
	esac
}
mode_port() {
	case $1 in
	baseline) echo "$PORT_BASE" ;;
	accelerated) echo "$PORT_ACCEL" ;;
	prototype) echo "$PORT_PROTO" ;;
	esac
}

start_netservers() { # TOPOLOGY
	local ns=${SERVER_NS[$1]} mode cg port
	for mode in "${MODES[@]}"; do
		cg=$(mode_cgroup "$mode") port=$(mode_port "$mode")
		launch "$cg" "$ns" taskset -c "$SERVER_CPU" netserver -D -p "$port" \
			>"$TMPD/netserver-$1-$mode.log" 2>&1 &
		PIDS+=($!)
		wait_listen "$ns" "$port" || die "netserver ($1, $mode) did not start: $(cat "$TMPD/netserver-$1-$mode.log")"
	done
}

stop_netservers() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
}

# run_netperf TOPOLOGY TEST MODE REP: one netperf run, one CSV row.
run_netperf() {
	local topo=$1 test=$2 mode=$3 rep=$4 cg port
	cg=$(mode_cgroup "$mode") port=$(mode_port "$mode")
	local -a before after
	read -r -a before < <(counters)
	local nf0 nf1
	nf0=$(nf_pkts "$topo")
	local args len=$LEN
	read -r -a args <<<"${TEST_ARGS[$test]}"
	[[ $test != TCP_CRR ]] || len=-$CRR_CONNS
	local attempt line=
	for attempt in 1 2; do
		launch "$cg" "${CLIENT_NS[$topo]}" taskset -c "$CLIENT_CPU" \
			netperf -H "${SERVER_ADDR[$topo]}" -p "$port" -t "${TEST_NAME[$test]}" -l "$len" \
			-T "$CLIENT_CPU,$SERVER_CPU" -j -c -C -P 0 -- "${args[@]}" -o "$SELECTORS" \
			>"$TMPD/netperf.out" 2>"$TMPD/netperf.err" &
		CUR_PID=$!
		if wait "$CUR_PID"; then
			line=$(grep -E '^[0-9.]+,' "$TMPD/netperf.out" | tail -n 1 || true)
		fi
		CUR_PID=
		[[ -z $line ]] || break
		log "netperf $topo $test $mode failed (attempt $attempt): $(cat "$TMPD/netperf.out" "$TMPD/netperf.err")"
	done
	[[ -n $line ]] || die "netperf $topo $test $mode failed twice"
	nf1=$(nf_pkts "$topo")
	read -r -a after < <(counters)
	local d=() i
	for i in 0 1 2 3 4 5; do
		d+=($((after[i] - before[i])))
	done
	local nf=
	[[ -z $nf0 ]] || nf=$((nf1 - nf0))
	local check=ok
	if [[ $mode == accelerated ]]; then
		((d[0] > 0)) || check=FAIL_not_redirected
	else
		# Baseline and prototype runs are outside the daemon's cgroup.
		((d[0] == 0)) || check=FAIL_redirected_in_$mode
	fi
	[[ $check == ok ]] || log "check failed: $topo $test $mode rep $rep: redirected_msgs delta ${d[0]}"
	# line has 14 fields: THROUGHPUT .. ELAPSED_TIME (see SELECTORS)
	local f
	IFS=, read -r -a f <<<"$line"
	((${#f[@]} == 14)) || die "unexpected netperf output: $line"
	printf '%(%Y-%m-%dT%H:%M:%SZ)T,%s,%s,%s,%s,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' -1 \
		"$RUN_MODE" "$topo" "$test" "$mode" "$rep" "${f[13]}" "${f[11]}" "${f[12]}" \
		"${f[0]}" "${f[1]}" "${f[2]}" "${f[3]}" "${f[4]}" "${f[5]}" "${f[6]}" "${f[7]}" "${f[8]}" "${f[9]}" "${f[10]}" \
		"${d[0]}" "${d[1]}" "${d[2]}" "${d[3]}" "${d[4]}" "${d[5]}" "$nf" "$check" >>"$CSV"
	log "$(printf '%-8s %-15s %-11s #%d %12s %-10s redirected_msgs +%d' "$topo" "$test" "$mode" "$rep" "${f[0]}" "${f[1]}" "${d[0]}")"
}

# run_unixref TEST SIZE REP: the AF_UNIX socket-pair reference, one CSV row.
run_unixref() {
	local kind=$1 size=$2 rep=$3 test
	case $kind/$size in
	rr/1) test=TCP_RR_1 ;;
	rr/1024) test=TCP_RR_1K ;;
	stream/65536) test=TCP_STREAM_64K ;;
	esac
	"$TMPD/unixref" -test "$kind" -size "$size" -duration "$REF_LEN" -cpus "$CLIENT_CPU,$SERVER_CPU" \
		-sndbuf "$UNIX_SNDBUF" >"$TMPD/unixref.out" &
	CUR_PID=$!
	wait "$CUR_PID" || die "unixref $kind $size failed"
	CUR_PID=
	local line kv k v
	line=$(cat "$TMPD/unixref.out")
	declare -A r=()
	for kv in $line; do
		k=${kv%%=*} v=${kv#*=}
		r[$k]=$v
	done
	local tput units
	if [[ $kind == rr ]]; then tput=${r[trans_per_s]} units=Trans/s; else tput=${r[mbit_per_s]} units=10^6bits/s; fi
	printf '%(%Y-%m-%dT%H:%M:%SZ)T,%s,unix,%s,reference,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,,,,,,,,,,,,,ok\n' -1 \
		"$RUN_MODE" "$test" "$rep" "${r[duration_s]}" "${r[client_cpu]}" "${r[server_cpu]}" \
		"$tput" "$units" "${r[trans_per_s]:-}" "${r[p50_us]:-}" "${r[p99_us]:-}" "${r[mean_us]:-}" >>"$CSV"
	log "$(printf '%-8s %-15s %-11s #%d %12s %s' unix "$test" reference "$rep" "$tput" "$units")"
}

# ---------------------------------------------------------------- main

# bench/load.sh sources this file for its settings, topologies, helpers and
# cleanup trap, and runs a main of its own.
[[ -z ${BENCH_LIB:-} ]] || return 0

exec 9>"$LOCK"
if ! flock -n 9; then
	log "another bench run holds $LOCK; waiting for it (up to 15 minutes)"
	flock -w 900 9 || die "another bench run still holds $LOCK"
fi

install_tools
# make deps: install what the benchmark needs, run nothing.
[[ -z ${INSTALL_ONLY:-} ]] || exit 0

TMPD=$(mktemp -d /tmp/sockaccel-bench.XXXXXX)
mkdir -p "$OUT"
CSV=$OUT/results.csv
echo "$CSV_HEADER" >"$CSV"
START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "mode $RUN_MODE: $REPS rounds of ${MODES[*]} x ${LEN}s per test and topology; output in $OUT"

log "building bench/unixref"
"$CC" -O2 -Wall -o "$TMPD/unixref" "$BENCH/unixref/unixref.c" || die "cannot build bench/unixref/unixref.c with $CC"


# A stale pin dir can only be left by a run killed with SIGKILL (we hold the lock).
if [[ -e $PIN_DIR ]]; then
	log "removing stale $PIN_DIR"
	"$SOCKACCEL" cleanup --pin-dir "$PIN_DIR" >/dev/null
	rm -rf "$PIN_DIR"
fi

add_cgroup "$CG_BASE"
add_cgroup "$CG_ACCEL"
if is_set "${PROTO:-}"; then
	command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
	log "building bench/proto"
	(cd "$ROOT" && CGO_ENABLED=0 "$GO" build -o "$TMPD/proto" ./bench/proto) || die "cannot build bench/proto with $GO"
	add_cgroup "$CG_PROTO"
	"$TMPD/proto" -cgroup "$CG_PROTO" >"$TMPD/proto.log" 2>&1 &
	PROTO_PID=$!
	for i in $(seq 100); do
		grep -q '^attached' "$TMPD/proto.log" && break
		kill -0 "$PROTO_PID" 2>/dev/null || die "bench/proto exited: $(cat "$TMPD/proto.log")"
		((i < 100)) || die "bench/proto did not attach within 10s"
		sleep 0.1
	done
	log "prototype $PROTO_PID attached to $CG_PROTO"
fi

for topo in "${TOPOLOGIES[@]}"; do
	"setup_$topo"
done

# One real daemon for the whole bench, attached to the accelerated cgroup
# only. netperf's control connections (ports $PORT_BASE/$PORT_ACCEL) are
# excluded so that the counters count the measured data connections alone.
# shellcheck disable=SC2206 # extra daemon flags are meant to split
# netperf's sockets are blocking, which the default --conservative keeps on
# TCP; the benchmark measures the fast path, so it opts in.
DAEMON_ARGS=(run --cgroup "$CG_ACCEL" --pin-dir "$PIN_DIR" --exclude-ports "$PORT_BASE,$PORT_ACCEL,$PORT_PROTO" --metrics-addr= --log-level info --conservative=false ${SOCKACCEL_FLAGS:-})
PIN_CREATED=1
"$SOCKACCEL" "${DAEMON_ARGS[@]}" >"$OUT/daemon.log" 2>&1 &
DAEMON_PID=$!
for i in $(seq 100); do
	if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
		die "sockaccel run exited: $(cat "$OUT/daemon.log")"
	fi
	[[ $("$SOCKACCEL" status --json --pin-dir "$PIN_DIR" 2>/dev/null | jq -r .attached) == true ]] && break
	((i < 100)) || die "sockaccel did not attach within 10s"
	sleep 0.1
done
STATUS_START=$("$SOCKACCEL" status --json --pin-dir "$PIN_DIR")
log "daemon $DAEMON_PID attached to $CG_ACCEL"

ref_rep=0
for topo in "${TOPOLOGIES[@]}"; do
	# Physical-limit reference, same patterns over an AF_UNIX socket pair:
	# once before each topology, so that its median spans the whole run
	# (this VM's speed drifts by tens of percent over minutes).
	ref_rep=$((ref_rep + 1))
	run_unixref rr 1 "$ref_rep"
	run_unixref rr 1024 "$ref_rep"
	run_unixref stream 65536 "$ref_rep"

	start_netservers "$topo"
	for test in "${TESTS[@]}"; do
		for ((rep = 1; rep <= REPS; rep++)); do
			for mode in "${MODES[@]}"; do
				if [[ $mode == prototype ]] && ! kill -0 "$PROTO_PID" 2>/dev/null; then
					die "bench/proto exited: $(cat "$TMPD/proto.log")"
				fi
				run_netperf "$topo" "$test" "$mode" "$rep"
			done
		done
	done
	stop_netservers
done

STATUS_END=$("$SOCKACCEL" status --json --pin-dir "$PIN_DIR")
NF_END=$(ip netns exec "$IPT_NS" "iptables-$IPT" -w -t filter -L FORWARD -v -x -n)
ELAPSED=$(($(date +%s) - START))

# ---------------------------------------------------------------- outputs

{
	echo "date:            $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "run mode:        $RUN_MODE ($REPS rounds of ${MODES[*]} per test and topology, ${LEN}s per netperf run, $CRR_CONNS connections per TCP_CRR run, unix reference ${REF_LEN} per run, once before each topology)"
	echo "elapsed:         ${ELAPSED}s"
	echo "load average:    $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end (the bench itself keeps about 1 CPU busy; more means other work shared the CPUs)"
	echo "kernel:          $(uname -srvm)"
	echo "cpu model:       $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "cpus:            $(nproc) online; client (netperf) on CPU $CLIENT_CPU, server (netserver) on CPU $SERVER_CPU (netperf -T $CLIENT_CPU,$SERVER_CPU + taskset)"
	echo "git commit:      $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown) ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
	echo "sockaccel:       $("$SOCKACCEL" version 2>&1 | head -n 1)"
	echo "daemon command:  sockaccel ${DAEMON_ARGS[*]}"
	echo "baseline cgroup: $CG_BASE (sibling, not attached)"
	if is_set "${PROTO:-}"; then
		echo "prototype:       bench/proto on $CG_PROTO (sibling; bare sock_ops insert + sk_msg redirect, 4-tuple key)"
	fi
	echo "netperf:         $(netperf -V 2>&1 | head -n 1)"
	echo "iptables:        iptables-$IPT ($("iptables-$IPT" -V 2>&1 | head -n 1)), $(grep -c '^-A' "$TMPD/rules.v4") rules in the bridge host netns"
	echo "                 ($SVC_RULES filter rules traversed by every bridged packet, $SVC_RULES nat rules by every new connection)"
	echo "br_netfilter:    net.bridge.bridge-nf-call-iptables=$(ip netns exec "$IPT_NS" sysctl -n net.bridge.bridge-nf-call-iptables)"
	echo "nf_conntrack:    TIME_WAIT timeout $(ip netns exec "$IPT_NS" sysctl -n net.netfilter.nf_conntrack_tcp_timeout_time_wait) s in the bridge host netns ($(sysctl -n net.netfilter.nf_conntrack_tcp_timeout_time_wait) s in the root netns), $(ip netns exec "$IPT_NS" sysctl -n net.netfilter.nf_conntrack_count) entries at end, nf_conntrack_max $(sysctl -n net.netfilter.nf_conntrack_max)"
	echo "unix reference:  bench/unixref (C, $("$CC" --version | head -n 1)), AF_UNIX SOCK_STREAM socketpair between two processes, SO_SNDBUF $UNIX_SNDBUF (tcp_wmem max) on both ends"
	echo
	echo "daemon status at start:"
	echo "$STATUS_START"
	echo
	echo "daemon status at end:"
	echo "$STATUS_END"
	echo
	echo "bridge host netns filter/FORWARD counters at end:"
	echo "$NF_END"
} >"$OUT/system.txt"

awk -F, -v md="$OUT/results.md" -v dat="$TMPD/chart.dat" -v xt="$TMPD/chart-xtics.gp" \
	-v kernel="$KERNEL" -v run_mode="$RUN_MODE" -v reps="$REPS" -v len="$LEN" \
	-v cpu="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
	-v date="$(date -u +%Y-%m-%d)" -v ipt="iptables-$IPT" -v svc="$SVC_RULES" -v crr="$CRR_CONNS" \
	-f "$BENCH/report.awk" "$CSV"
gnuplot -e "dat='$TMPD/chart.dat'; xt='$TMPD/chart-xtics.gp'; out='$OUT/ratios.png'; subtitle='kernel $KERNEL, $RUN_MODE run, medians of $REPS per test, ${LEN}s per run'" \
	"$BENCH/chart.gp"

[[ -s $OUT/results.md && -s $OUT/ratios.png ]] || die "outputs missing"
log "done in ${ELAPSED}s: $OUT/{results.csv,results.md,ratios.png,system.txt}"
if grep -q ',FAIL' "$CSV"; then
	die "some runs failed the redirected_msgs check (see the check column of $CSV)"
fi
