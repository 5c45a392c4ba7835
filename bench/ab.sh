#!/usr/bin/env bash
# bench/ab.sh: what a change costs. Two sockaccel binaries, each a daemon
# on its own cgroup and pin dir at the same time (--conservative=false, as
# bench/run.sh), netperf TCP_CRR and TCP_RR on loopback and on a veth pair,
# A and B alternating in every round (which goes first alternates too), so
# the ratios come from one run on one machine state.
#
#   bench/ab.sh BINARY_A BINARY_B [ROUNDS]
#
# Prints one CSV row per run and, per topology and test, the median of
# B/A over the rounds, of the transaction rate and of the CPU time both
# ends' processes used per transaction (the cgroup's cpu.stat usage_usec:
# what other load on a shared machine moves least). Needs root, netperf, jq. Everything it creates
# (namespaces, cgroups, pin dirs, processes) is removed on exit.
set -euo pipefail

A=$(realpath "$1") B=$(realpath "$2") ROUNDS=${3:-5}
CRR_CONNS=${CRR_CONNS:-5000}
RR_LEN=${RR_LEN:-3}
ID=$$
if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then CG_ROOT=/sys/fs/cgroup; else CG_ROOT=/sys/fs/cgroup/unified; fi
TMPD=$(mktemp -d)
NETNS=() CGROUPS=() PIDS=() PINS=()

cleanup() {
	local p cg ns
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	for cg in "${CGROUPS[@]}"; do
		[[ -d $cg ]] || continue
		while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$cg/cgroup.procs"
	done
	for p in "${PINS[@]}"; do "${p%%:*}" cleanup --pin-dir "${p#*:}" >/dev/null 2>&1 || true; done
	for cg in "${CGROUPS[@]}"; do
		for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
	done
	for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$TMPD"
}
trap cleanup EXIT

launch() { # CGROUP NETNS CMD...
	local cg=$1 ns=$2
	shift 2
	# shellcheck disable=SC2016 # expanded by the inner bash
	exec bash -c 'echo "$$" >"$0/cgroup.procs" && exec ip netns exec "$1" "${@:2}"' "$cg" "$ns" "$@"
}

for ns in lo c s; do ip netns add "ab$ID$ns" && NETNS+=("ab$ID$ns") && ip -n "ab$ID$ns" link set lo up; done
# netperf resolves 127.0.0.1 with AI_ADDRCONFIG, which fails in a namespace
# without a non-loopback IPv4 address (see bench/run.sh): give it one.
ip -n "ab${ID}lo" link add "ab${ID}la" type veth peer name "ab${ID}lb"
ip -n "ab${ID}lo" addr add 10.231.1.1/32 dev "ab${ID}la"
ip -n "ab${ID}lo" link set "ab${ID}la" up
ip -n "ab${ID}lo" link set "ab${ID}lb" up
ip link add "ab${ID}c" netns "ab${ID}c" type veth peer name "ab${ID}s" netns "ab${ID}s"
ip -n "ab${ID}c" addr add 10.231.0.1/24 dev "ab${ID}c"
ip -n "ab${ID}s" addr add 10.231.0.2/24 dev "ab${ID}s"
ip -n "ab${ID}c" link set "ab${ID}c" up
ip -n "ab${ID}s" link set "ab${ID}s" up

declare -A CG PIN PORT
PORT[A]=12871 PORT[B]=12872
for m in A B; do
	CG[$m]=$CG_ROOT/ab$ID$m
	mkdir "${CG[$m]}" && CGROUPS+=("${CG[$m]}")
	PIN[$m]=/sys/fs/bpf/ab$ID$m
	bin=$A
	[[ $m == A ]] || bin=$B
	PINS+=("$bin:${PIN[$m]}")
	"$bin" run --cgroup "${CG[$m]}" --pin-dir "${PIN[$m]}" --exclude-ports "${PORT[A]},${PORT[B]}" \
		--metrics-addr= --api-socket "$TMPD/api-$m.sock" --conservative=false --log-level warn >"$TMPD/daemon-$m.log" 2>&1 &
	PIDS+=($!)
	for i in $(seq 100); do
		[[ $("$bin" status --json --pin-dir "${PIN[$m]}" 2>/dev/null | jq -r .attached) == true ]] && break
		((i < 100)) || { echo "daemon $m did not attach: $(cat "$TMPD/daemon-$m.log")" >&2; exit 1; }
		sleep 0.1
	done
	# Listeners after the daemon: the token needs its listen() callback.
	for ns in lo s; do
		launch "${CG[$m]}" "ab$ID$ns" taskset -c 1 netserver -D -p "${PORT[$m]}" >"$TMPD/ns-$m-$ns.log" 2>&1 &
		PIDS+=($!)
	done
done
for m in A B; do
	for ns in lo s; do
		for _ in $(seq 100); do
			ip netns exec "ab$ID$ns" ss -Hltn "sport = :${PORT[$m]}" | grep -q . && break
			sleep 0.1
		done
	done
done

declare -A HOST=([loopback]=127.0.0.1 [veth]=10.231.0.2) CLIENT=([loopback]=ab${ID}lo [veth]=ab${ID}c)
usage() { awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"; }
echo "round,topology,test,mode,trans_per_s,cpu_us_per_trans" | tee "$TMPD/csv"
for r in $(seq "$ROUNDS"); do
	order=(A B)
	((r % 2)) || order=(B A)
	for topo in loopback veth; do
		for test in TCP_CRR TCP_RR; do
			len=$RR_LEN
			[[ $test != TCP_CRR ]] || len=-$CRR_CONNS
			for m in "${order[@]}"; do
				u0=$(usage "${CG[$m]}")
				launch "${CG[$m]}" "${CLIENT[$topo]}" taskset -c 0 netperf -H "${HOST[$topo]}" -p "${PORT[$m]}" \
					-t "$test" -l "$len" -T 0,1 -P 0 -- -r 1,1 -o TRANSACTION_RATE,ELAPSED_TIME >"$TMPD/out" 2>&1 &
				wait $! || { cat "$TMPD/out" >&2; exit 1; }
				u1=$(usage "${CG[$m]}")
				IFS=, read -r rate secs < <(grep -E '^[0-9.]+,' "$TMPD/out" | tail -n 1)
				echo "$r,$topo,$test,$m,$rate,$(awk -v u=$((u1 - u0)) -v r="$rate" -v s="$secs" 'BEGIN { printf "%.2f", u / (r * s) }')"
			done
		done
	done
done | tee -a "$TMPD/csv"
for m in A B; do
	bin=$A
	[[ $m == A ]] || bin=$B
	echo "daemon $m: $("$bin" status --json --pin-dir "${PIN[$m]}" | jq -c '{inserted, redirected_msgs, no_peer, token_unconfirmed, token_no_room}')"
done
# Median of B/A per topology and test, pairing runs of the same round.
python3 - "$TMPD/csv" <<'PY'
import csv, statistics, sys
runs = {}
for row in csv.DictReader(open(sys.argv[1])):
    for col in ("trans_per_s", "cpu_us_per_trans"):
        runs.setdefault((row["topology"], row["test"], col), {}).setdefault(row["round"], {})[row["mode"]] = float(row[col])
for key, rounds in sorted(runs.items()):
    r = sorted(v["B"] / v["A"] for v in rounds.values() if v.get("A") and "B" in v)
    print(f"{key[0]},{key[1]},{key[2]}: median B/A {statistics.median(r):.3f} over {len(r)} rounds (min {r[0]:.3f}, max {r[-1]:.3f})")
PY
