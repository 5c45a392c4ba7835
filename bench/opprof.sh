#!/usr/bin/env bash
# bench/opprof.sh: where sa_sockops's time per TCP_CRR connection goes, by
# callback. Builds REV (default HEAD; the working tree with REV=.) with
# -DSA_OPPROF, whose sa_sockops counts its runs and times them with
# bpf_ktime_get_ns by op, end (client or server), request socket and, for
# the state callback, the state entered (bpf/accel.c, sa_opprof), runs
# CONNS TCP_CRR connections over loopback in a network namespace of its
# own, and prints one row per kind of run: runs and ns per connection, ns
# per run. The clock reads add about 30-40 ns to every run. PERF=FILE also
# records the run with perf record -a -g into FILE. Root.
#
#   REV=main CONNS=5000 bash bench/opprof.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
REV=${REV:-HEAD}
CONNS=${CONNS:-5000}
TEST=${TEST:-TCP_CRR} # or TCP_RR (CONNS transactions): for PERF
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
ID=$$ NS=sao-$$ PIN=/sys/fs/bpf/sockaccel-opprof-$$
PORT=20000 # OPPROF_SERVER_PORT in bpf/accel.c
if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then CG=/sys/fs/cgroup/sao-$ID; else CG=/sys/fs/cgroup/unified/sao-$ID; fi
[[ $EUID -eq 0 ]] || { echo "opprof: needs root" >&2; exit 1; }

TMPD=$(mktemp -d /tmp/sockaccel-opprof.XXXXXX)
PIDS=() BIN=$TMPD/sockaccel
cleanup() {
	local p
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [[ -e $CG ]]; then
		while read -r p; do kill -KILL "$p"; done <"$CG/cgroup.procs"
		sleep 0.2
		rmdir "$CG"
	fi
	ip netns del "$NS" 2>/dev/null
	if [[ -e $PIN ]]; then
		"$BIN" cleanup --pin-dir "$PIN" >/dev/null 2>&1
		rm -rf "$PIN"
	fi
	rm -rf "$TMPD"
}
trap cleanup EXIT

# Build the instrumented daemon in a copy, never in the tree (OPPROF_BIN:
# reuse that build if the file exists, else keep this one there).
if [[ -n ${OPPROF_BIN:-} && -x $OPPROF_BIN ]]; then
	BIN=$OPPROF_BIN
elif [[ $REV == . ]]; then
	tar -C "$ROOT" --exclude=./bin --exclude=./bench/results -cf - . | tar -C "$TMPD" -xf - --one-top-level=src
else
	mkdir "$TMPD/src"
	git -C "$ROOT" archive "$REV" | tar -C "$TMPD/src" -xf -
fi
if [[ $BIN != "${OPPROF_BIN:-}" ]]; then
	(cd "$TMPD/src/accel/bpfobj" && BPF2GO_CC=clang-16 BPF2GO_STRIP=llvm-strip-16 \
		BPF2GO_CFLAGS="-O2 -g -Wall -Werror -mcpu=v3 -DSA_OPPROF" "$GO" generate . >/dev/null)
	(cd "$TMPD/src" && CGO_ENABLED=0 "$GO" build -o "$BIN" ./cmd/sockaccel)
	[[ -z ${OPPROF_BIN:-} ]] || cp "$BIN" "$OPPROF_BIN"
fi

mkdir "$CG"
ip netns add "$NS"
ip -n "$NS" link set lo up
# netperf's AI_ADDRCONFIG wants one non-loopback address (see run.sh).
ip -n "$NS" link add "sao${ID}l" type veth peer name "sao${ID}m"
ip -n "$NS" addr add 10.252.3.1/32 dev "sao${ID}l"
ip -n "$NS" link set "sao${ID}l" up
ip -n "$NS" link set "sao${ID}m" up
"$BIN" run --cgroup "$CG" --pin-dir "$PIN" --exclude-ports 12899 --metrics-addr= --api-socket= \
	--conservative=false ${SOCKACCEL_FLAGS:-} >"$TMPD/daemon.log" 2>&1 &
PIDS+=($!)
for i in $(seq 100); do
	[[ $("$BIN" status --json --pin-dir "$PIN" 2>/dev/null | jq -r .attached) == true ]] && break
	((i < 100)) || { cat "$TMPD/daemon.log" >&2; exit 1; }
	sleep 0.1
done
PROG=$(bpftool cgroup show "$CG" -j | jq -r '.[] | select(.attach_type == "cgroup_sock_ops") | .id')
MAP=$(bpftool prog show id "$PROG" -j | jq -r '.map_ids[]' | while read -r m; do
	if [[ $(bpftool map show id "$m" -j | jq -r .name) == sa_opprof ]]; then echo "$m"; fi; done)
[[ -n $MAP ]] || { echo "opprof: no sa_opprof map" >&2; exit 1; }
[[ -z ${JITED:-} ]] || bpftool prog dump jited id "$PROG" linum >"$JITED"

# shellcheck disable=SC2016
bash -c 'echo $$ >"$0/cgroup.procs" && exec ip netns exec "$1" taskset -c 1 netserver -D -p 12899' "$CG" "$NS" >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5
# shellcheck disable=SC2016
${PERF:+perf record -q -F 20000 -a -g -o "$PERF" --} bash -c 'echo $$ >"$0/cgroup.procs" && exec ip netns exec "$1" taskset -c 0 netperf -H 127.0.0.1 -p 12899 -T 0,1 -P 0 -t "$4" -l "-$2" -- -r 1,1 -P ",$3"' \
	"$CG" "$NS" "$CONNS" "$PORT" "$TEST" >"$TMPD/netperf.out"
sleep 0.5 # the last connections' closes

echo "REV=$REV ($(git -C "$ROOT" rev-parse --short "${REV/#./HEAD}" 2>/dev/null || echo "no git")), $CONNS $TEST units over loopback, kernel $(uname -r)"
echo
bpftool map dump id "$MAP" -j | jq -r --argjson n "$CONNS" '
	["VOID","TIMEOUT_INIT","RWND_INIT","TCP_CONNECT","ACTIVE_ESTABLISHED","PASSIVE_ESTABLISHED","NEEDS_ECN","BASE_RTT","RTO","RETRANS","STATE","TCP_LISTEN","RTT","PARSE_HDR_OPT","HDR_OPT_LEN","WRITE_HDR_OPT"] as $ops
	| ["?","ESTABLISHED","SYN_SENT","SYN_RECV","FIN_WAIT1","FIN_WAIT2","TIME_WAIT","CLOSE","CLOSE_WAIT","LAST_ACK","LISTEN","CLOSING","NEW_SYN_RECV","BOUND_INACTIVE"] as $st
	| map(.formatted // .) | map({k: .key, c: ([.values[].value.count] | add), t: ([.values[].value.ns] | add)}) | map(select(.c > 0)) | sort_by(.k) as $rows
	| "| callback | end | runs/connection | ns/connection | ns/run |", "| --- | --- | --- | --- | --- |",
	($rows[] | "| \($ops[.k % 16])\(if (.k % 16) == 10 then " -> " + $st[(.k / 64 | floor) % 16] else "" end)\(if ((.k / 32 | floor) % 2) == 1 then " (request)" else "" end) | \(if ((.k / 16 | floor) % 2) == 1 then "server" else "client" end) | \(.c / $n * 100 | round / 100) | \(.t / $n | round) | \(.t / .c | round) |"),
	"| total | | \(([$rows[].c] | add) / $n * 100 | round / 100) | \(([$rows[].t] | add) / $n | round) | \(([$rows[].t] | add) / ([$rows[].c] | add) | round) |"'
echo
echo "netperf: $(tail -n 1 "$TMPD/netperf.out")"
"$BIN" status --pin-dir "$PIN" 2>/dev/null | grep -E 'inserted|no_peer|established|closed|token|created' || true
