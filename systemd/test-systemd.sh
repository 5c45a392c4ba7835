#!/usr/bin/env bash
# make test-systemd: Debian 12's systemd as PID 1 in systemd-nspawn runs the
# Debian package the way an operator would, and each check below proves one
# promise of the unit (Type=notify, journald fields and priorities, restart
# without loss, watchdog, pins outliving stop, cleanup, package removal,
# hardening score). Needs root, debootstrap, systemd-nspawn (package
# systemd-container), cgroup v2 and bpffs. The bookworm root is cached as a
# tarball in $CACHE (about 2 minutes to build once, seconds to unpack).
#
# Usage: DEB=bin/sockaccel_..._amd64.deb bash systemd/test-systemd.sh
# Under CI=true, anything that keeps it from running fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DEB:?DEB=path to the .deb (make deb)}"
CACHE=${CACHE:-/var/cache/sockaccel-systemd}
started=$(date +%s)

skip() {
	if [ "${CI:-}" = true ]; then
		echo "test-systemd: cannot run: $* (CI=true forbids skipping)" >&2
		exit 1
	fi
	echo "test-systemd: SKIP: $*" >&2
	exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root"
for tool in debootstrap systemd-nspawn nsenter dpkg-deb; do
	command -v "$tool" >/dev/null || skip "$tool not installed"
done
[ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || skip "no bpffs at /sys/fs/bpf"
if [ -d /sys/fs/cgroup/unified ]; then
	v2=/sys/fs/cgroup/unified # hybrid: v2 beside the v1 hierarchies
	named=/sys/fs/cgroup/systemd
else
	v2=/sys/fs/cgroup
	named=
fi
[ -f "$v2/cgroup.procs" ] || skip "no cgroup v2 hierarchy"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
pass() { echo "ok: $*"; }

# --- the root, cached -------------------------------------------------------
packages=systemd,systemd-sysv,dbus,iproute2,python3
key=$(echo "bookworm minbase $packages v1" | sha256sum | cut -c1-12)
tarball=$CACHE/bookworm-$key.tar
if [ ! -f "$tarball" ]; then
	echo "== debootstrap bookworm into the cache (once)"
	mkdir -p "$CACHE"
	build=$(mktemp -d "$CACHE/build.XXXXXX")
	trap 'rm -rf "$build"' EXIT # an interrupted debootstrap leaves nothing
	debootstrap --variant=minbase --include="$packages" bookworm "$build/root" >"$build/log" 2>&1 ||
		{ tail -20 "$build/log" >&2; rm -rf "$build"; fail "debootstrap"; }
	tar -C "$build/root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
	rm -rf "$build"
	trap - EXIT
fi

# --- everything this run creates, torn down on exit -------------------------
id=sasd$$
work=$(mktemp -d /var/tmp/sockaccel-systemd.XXXXXX)
root=$work/root
hostbpf=/sys/fs/bpf/$id # the container's /sys/fs/bpf: a directory on the host's bpffs
nspawn_pid=
leader=

teardown() {
	set +e
	if [ -n "${HOLD:-}" ] && [ -n "$leader" ]; then
		# Debugging: keep the container until $work/release exists.
		echo "HOLD: container leader $leader; touch $work/release to tear down" >&2
		while [ ! -e "$work/release" ]; do sleep 1; done
	fi
	if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
		nsenter -t "$leader" -a systemctl poweroff >/dev/null 2>&1
	fi
	if [ -n "$nspawn_pid" ]; then
		for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
		kill -0 "$nspawn_pid" 2>/dev/null && kill -KILL "$nspawn_pid"
		wait "$nspawn_pid" 2>/dev/null
	fi
	# Whatever still runs in the container's cgroup (its init survives a
	# killed nspawn) is this run's: cgroup.kill (5.14+) ends it all.
	if [ -e "$v2/$id/cgroup.kill" ]; then
		echo 1 >"$v2/$id/cgroup.kill"
		for _ in $(seq 50); do
			[ -z "$(find "$v2/$id" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
			sleep 0.1
		done
	fi
	# The container's cgroups, deepest first.
	for h in "$v2/$id" ${named:+"$named/$id"}; do
		[ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
		[ -d "$h" ] && echo "teardown: cgroup $h left behind" >&2
	done
	# Pins the test did not get to clean up (the cgroup is gone by now, so
	# the links are already detached).
	if [ -d "$hostbpf/sockaccel" ]; then
		echo "teardown: pins left in $hostbpf/sockaccel, removing" >&2
		"$work/sockaccel" cleanup --pin-dir "$hostbpf/sockaccel" --force --timeout 5s >/dev/null 2>&1
	fi
	rm -rf "$hostbpf" 2>/dev/null
	[ -d "$hostbpf" ] && echo "teardown: $hostbpf left behind" >&2
	rm -rf "$work"
	echo "test-systemd: $(($(date +%s) - started)) s"
}
trap teardown EXIT

echo "== unpack the root"
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
cp "$DEB" "$root/root/sockaccel.deb"
dpkg-deb --fsys-tarfile "$DEB" | tar -xO ./usr/bin/sockaccel >"$work/sockaccel"
chmod 0755 "$work/sockaccel"
echo "$id" >"$root/etc/hostname"
# Not under /root: ProtectHome= hides it from the unit's sandbox check.
install -D -m 0644 systemd/testdata/stream.py "$root/usr/local/lib/sockaccel-test/stream.py"
mkdir -m 0700 "$hostbpf"

echo "== boot systemd in nspawn"
mkdir "$v2/$id"
[ -n "$named" ] && mkdir "$named/$id"
(
	echo "$BASHPID" >"$v2/$id/cgroup.procs"
	[ -n "$named" ] && echo "$BASHPID" >"$named/$id/cgroup.procs"
	SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn -q -D "$root" -b --capability=all \
		--register=no --keep-unit --private-network \
		--system-call-filter='bpf perf_event_open pidfd_getfd' --bind="$hostbpf:/sys/fs/bpf" \
		>"$work/console.log" 2>&1 </dev/null
) &
nspawn_pid=$!
for _ in $(seq 100); do
	leader=$(awk '{print $1}' "/proc/$nspawn_pid/task/$nspawn_pid/children" 2>/dev/null)
	[ -n "$leader" ] && break
	sleep 0.1
done
[ -n "$leader" ] || { cat "$work/console.log" >&2; fail "nspawn started no container"; }

inside() { nsenter -t "$leader" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
# "offline" until the manager answers, then --wait waits for the boot.
for _ in $(seq 120); do
	state=$(timeout 60 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null || true)
	[ "$state" = offline ] || [ -z "$state" ] || break
	sleep 0.5
done
echo "container $id up: $state (leader $leader)"
case "$state" in running | degraded) ;; *) tail -30 "$work/console.log" >&2; fail "container did not boot" ;; esac

status_json() { inside sockaccel status --json; }
jget() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[sys.argv[1]])' "$1"; }
show() { inside systemctl show -p "$1" --value sockaccel.service; }

# --- install and start -------------------------------------------------------
echo "== install the package"
inside dpkg -i /root/sockaccel.deb >/dev/null
[ "$(inside systemctl is-enabled sockaccel.service 2>/dev/null || true)" = disabled ] || fail "package enabled the unit on its own"
[ "$(inside systemctl is-active sockaccel.service 2>/dev/null || true)" = inactive ] || fail "package started the daemon on its own"
pass "installed; postinst started nothing"

echo "== systemctl enable --now (Type=notify)"
inside systemctl enable --now sockaccel.service
# Right after start returns: with Type=notify it waited for READY=1.
attached=$(status_json | jget attached)
[ "$attached" = True ] || fail "start returned while status says attached=$attached"
[ "$(inside systemctl is-active sockaccel.service)" = active ] || fail "not active after start"
pass "active, and attached the moment start returned"
inside systemctl status --no-pager sockaccel.service | sed -n '/Status:/p'
pid=$(show MainPID)
caps=$(inside grep CapEff "/proc/$pid/status" | awk '{print $2}')
echo "effective capabilities: $(inside sh -c "command -v capsh >/dev/null && capsh --decode=$caps || echo $caps")"

echo "== journal"
inside journalctl -u sockaccel.service -o json --no-pager >"$work/journal.json"
python3 - "$work/journal.json" <<'PY' || fail "journal fields"
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "sockaccel"]
start = [e for e in ours if e.get("MESSAGE", "").startswith("accelerating")]
assert start, "no 'accelerating' entry"
e = start[0]
for k in ("PRIORITY", "CGROUP", "PIN_DIR", "KERNEL", "KERNEL_PROBES", "MAPS", "VERSION"):
    assert k in e, f"'accelerating' entry lacks {k}: {sorted(e)}"
assert e["PRIORITY"] == "6", e["PRIORITY"]
info = [x for x in ours if x.get("PRIORITY") == "6"]
print(f"ok: {len(ours)} entries from sockaccel, start-up line PRIORITY={e['PRIORITY']} CGROUP={e['CGROUP']} "
      f"PIN_DIR={e['PIN_DIR']} MAPS={e['MAPS']} KERNEL={e['KERNEL']}; {len(info)} at info")
PY

# --- traffic between two network namespaces ---------------------------------
echo "== accelerated traffic between two network namespaces"
inside sh -ec '
ip netns add a; ip netns add b
ip link add va netns a type veth peer name vb netns b
ip -n a addr add 10.99.0.1/24 dev va; ip -n b addr add 10.99.0.2/24 dev vb
ip -n a link set va up; ip -n b link set vb up; ip -n a link set lo up; ip -n b link set lo up'
# transfer NAME MIB [PACE]: server in b, client in a, both as transient units
# so that they run in the container's cgroups (where sock_ops is attached).
transfer_start() {
	inside systemd-run -q --unit="sa-srv-$1" ip netns exec b python3 /usr/local/lib/sockaccel-test/stream.py serve 10.99.0.2 "$2" "/root/$1.srv"
	sleep 0.5
	inside systemd-run -q --unit="sa-cli-$1" ip netns exec a python3 /usr/local/lib/sockaccel-test/stream.py send 10.99.0.2 "$2" "/root/$1.cli" "$3" "$4"
}
transfer_check() {
	for _ in $(seq 600); do
		inside test -s "/root/$1.srv" && inside test -s "/root/$1.cli" && break
		sleep 0.1
	done
	cli=$(inside cat "/root/$1.cli" 2>/dev/null || true)
	srv=$(inside cat "/root/$1.srv" 2>/dev/null || true)
	if [ -z "$cli" ] || [ "$cli" != "$srv" ]; then fail "transfer $1: sent '$cli', received '$srv'"; fi
	echo "$cli"
}
before=$(status_json | jget redirected_bytes)
transfer_start t1 5001 64 0.01 # 64 MiB in 256 KiB sends, 10 ms apart: a reader that keeps up
res=$(transfer_check t1)
after=$(status_json | jget redirected_bytes)
redirected=$((after - before))
# Not all of it: bytes the client sends before the server's end is in the
# sockhash take TCP, and the direction stays there until they are read
# (README, Ordering); and whenever the reader falls behind the backlog bound
# the rest of a burst takes TCP (sent unpaced, only 1 to 11 MiB of 64 were
# redirected here with both CPUs busy with other work, 50 to 64 idle).
((redirected > 32 * 1024 * 1024)) || fail "only $redirected bytes redirected for a 64 MiB transfer"
pass "64 MiB intact ($res), $redirected bytes redirected"

# --- a stalled splice ---------------------------------------------------------
echo "== a connection stalled in splice"
inside systemd-run -q --unit=sa-splice ip netns exec b python3 /usr/local/lib/sockaccel-test/stream.py splice 10.99.0.2 5003 /root/splice.out
sleep 0.5
inside systemd-run -q --unit=sa-poke ip netns exec a python3 /usr/local/lib/sockaccel-test/stream.py poke 10.99.0.2 5003 /root/poke.out
for _ in $(seq 100); do
	[ "$(status_json | jget splice_stalled)" != 0 ] && break
	sleep 0.1
done
status_json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert any(l["port"] == 5003 for l in d["learned_exclusions"]), d["learned_exclusions"]' ||
	fail "stalled splice not learned"
# The daemon, in this container's PID namespace like the applications, gets
# their PIDs as it sees them, so after its grace period (2 s) it resets the
# connection, from its own network namespace (no CAP_SYS_ADMIN): the
# splice fails instead of waiting for ever. stream.py's splice is blocking,
# and a thread asleep on a socket that is disconnected gets EPIPE on this
# kernel (419ce133ab92; ECONNRESET before 4faeee0cf8a5); the client, also
# waiting, gets the RST.
for _ in $(seq 150); do
	inside test -s /root/splice.out && inside test -s /root/poke.out && break
	sleep 0.1
done
spliced=$(inside cat /root/splice.out 2>/dev/null || true)
poked=$(inside cat /root/poke.out 2>/dev/null || true)
reset=$(inside journalctl -u sockaccel.service --no-pager -o cat | grep 'reset a connection stalled in splice' | tail -1)
case "$spliced" in
"error EPIPE"* | "error ECONNRESET"*) ;;
*) fail "stalled splice ended with '${spliced:-nothing within 15 s}', want EPIPE or ECONNRESET; daemon: '${reset:-no reset logged}'" ;;
esac
case "$poked" in
"error ECONNRESET"*) ;;
*) fail "the stalled connection's client saw '${poked:-nothing within 15 s}', want ECONNRESET" ;;
esac
pass "stall detected, port 5003 learned, the connection reset: splice '$spliced', client '$poked'"
inside systemctl stop sa-splice sa-poke 2>/dev/null || true

# What the reset needs, tried under the unit's own sandbox (ExecStart
# replaced), one permission at a time, to name the one that is missing; and
# what the old reset (setns, SOCK_DESTROY) needed, now refused.
echo "== the unit's sandbox allows what resetting a stalled connection needs, and no more"
inside systemd-run -q --unit=sa-victim sleep 600
victim=$(inside systemctl show -p MainPID --value sa-victim)
inside mkdir -p /run/systemd/system/sockaccel.service.d
printf '[Service]\nType=oneshot\nExecStart=\nExecStart=/usr/bin/python3 /usr/local/lib/sockaccel-test/stream.py sandbox %s /run/netns/b\n' "$victim" |
	inside tee /run/systemd/system/sockaccel.service.d/50-sandbox.conf >/dev/null
inside systemctl daemon-reload
since=$(inside date '+%Y-%m-%d %H:%M:%S')
inside systemctl restart sockaccel.service || true
got=$(inside journalctl -u sockaccel.service --since "$since" --no-pager -o cat | grep '^sandbox:' || true)
inside rm -r /run/systemd/system/sockaccel.service.d
inside systemctl daemon-reload
inside systemctl stop sa-victim
[ "$got" = "sandbox: pidfd_open ok, pidfd_getfd ok, setns Operation not permitted, sock_diag Address family not supported by protocol" ] ||
	fail "under the unit's sandbox: '$got'"
pass "$got"
inside systemctl reset-failed sockaccel.service 2>/dev/null || true
inside systemctl start sockaccel.service

# --- restart during a transfer -----------------------------------------------
echo "== systemctl restart during a transfer"
pid=$(show MainPID)
before=$(status_json | jget redirected_bytes)
transfer_start t2 5002 64 0.02 # 64 MiB in 256 KiB sends, 20 ms apart: about 5 s
sleep 1
inside systemctl restart sockaccel.service
[ "$(show MainPID)" != "$pid" ] || fail "restart kept the same process"
res=$(transfer_check t2)
after=$(status_json | jget redirected_bytes)
pass "restart mid-transfer: 64 MiB intact ($res), $((after - before)) bytes redirected across it"

# --- a fatal error reaches the journal at error priority --------------------
echo "== fatal start-up error"
since=$(inside date '+%Y-%m-%d %H:%M:%S')
inside mkdir -p /run/systemd/system/sockaccel.service.d
printf '[Service]\nExecStart=\nExecStart=/usr/bin/sockaccel run --exclude-cidrs banana\n' |
	inside tee /run/systemd/system/sockaccel.service.d/50-bad.conf >/dev/null
inside systemctl daemon-reload
inside systemctl restart sockaccel.service 2>/dev/null && fail "started with a bad --exclude-cidrs"
sleep 5 # two RestartSec= periods: a restart would have happened by now
[ "$(show ExecMainStatus)" = 78 ] || fail "exit status $(show ExecMainStatus), want 78"
[ "$(show NRestarts)" = 0 ] || fail "restarted $(show NRestarts) times after a configuration error"
reason=$(inside journalctl -u sockaccel.service -p warning --since "$since" --no-pager -o cat | grep 'invalid CIDR' || true)
[ -n "$reason" ] || { inside journalctl -u sockaccel.service --since "$since" --no-pager -o verbose | tail -40; fail "journalctl -p warning lacks the reason"; }
pass "exit 78, no restart; journalctl -p warning: $reason"
inside rm -r /run/systemd/system/sockaccel.service.d
inside systemctl daemon-reload
inside systemctl reset-failed sockaccel.service
inside systemctl start sockaccel.service

echo "== start limits stop a failure a restart cannot fix"
since=$(inside date '+%Y-%m-%d %H:%M:%S')
# The metrics port taken: exit 1 (a restart may help), so systemd retries
# every RestartSec= until StartLimitBurst= starts within
# StartLimitIntervalSec=, then gives up.
inside systemctl stop sockaccel.service
inside systemd-run -q --unit=sa-port python3 -c 'import socket, time
s = socket.create_server(("127.0.0.1", 9471)); time.sleep(600)'
sleep 0.5
inside systemctl start sockaccel.service 2>/dev/null && fail "started with its metrics port taken"
limit=
for _ in $(seq 60); do
	limit=$(inside journalctl -u sockaccel.service --since "$since" --no-pager -o cat | grep -i 'start request repeated too quickly' || true)
	[ -n "$limit" ] && break
	sleep 0.5
done
[ -n "$limit" ] || fail "still restarting ($(show NRestarts) restarts, result $(show Result)), no start limit"
n=$(show NRestarts)
sleep 5 # two RestartSec= periods
[ "$(show NRestarts)" = "$n" ] || fail "restarted after the start limit"
pass "exit $(show ExecMainStatus), $n restarts, then '$limit' and no more"
inside systemctl stop sa-port
inside systemctl reset-failed sockaccel.service
inside systemctl start sockaccel.service

echo "== bpffs private to a service's mount namespace"
out=$(timeout 60 nsenter -t "$leader" -a systemd-run -q --wait --pipe -p RuntimeMaxSec=20 -p TemporaryFileSystem=/sys/fs/bpf \
	/usr/bin/sockaccel run --metrics-addr= </dev/null 2>&1 || true)
echo "$out" | grep -q 'pins would die with it' || fail "private bpffs not refused: $out"
pass "refused: $out"

# --- watchdog -------------------------------------------------------------------
echo "== watchdog restarts a stopped daemon"
pid=$(show MainPID)
restarts=$(show NRestarts)
inside systemctl kill --kill-whom=main -s SIGSTOP sockaccel.service
for _ in $(seq 60); do
	sleep 1
	[ "$(show NRestarts)" != "$restarts" ] && [ "$(inside systemctl is-active sockaccel.service)" = active ] && break
done
[ "$(show NRestarts)" != "$restarts" ] || fail "not restarted within 60 s of SIGSTOP"
wd=$(inside journalctl -u sockaccel.service --no-pager -o cat | grep -i 'watchdog timeout' | tail -1)
[ -n "$wd" ] || { inside journalctl -u sockaccel.service --no-pager -o cat | tail -15 >&2; fail "no watchdog timeout in the journal"; }
pass "SIGSTOP: '$wd', restarted as $(show MainPID)"

# --- hardening ---------------------------------------------------------------
echo "== systemd-analyze security"
score=$(inside systemd-analyze security sockaccel.service 2>/dev/null | sed -n 's/.*Overall exposure level for sockaccel.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score"
# The issue's target. What keeps it above 2: root, CAP_SYS_PTRACE and
# pidfd_getfd (borrowing a stalled socket), bpf and perf_event_open, no
# private network (README, "Install as a service").
awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || {
	inside systemd-analyze security sockaccel.service 2>/dev/null | grep -v '✓' >&2
	fail "exposure $score > 2.5"
}
pass "exposure $score"
cg=/sys/fs/cgroup/system.slice/sockaccel.service
if inside test -e $cg/memory.max; then
	echo "memory: current $(inside cat $cg/memory.current), peak $(inside cat $cg/memory.peak 2>/dev/null || echo n/a), max $(inside cat $cg/memory.max)"
else
	echo "memory: no memory controller on this cgroup v2 hierarchy (hybrid host): MemoryMax= not enforced here"
fi

# --- stop, cleanup, removal ----------------------------------------------------
echo "== systemctl stop leaves pins"
inside systemctl stop sockaccel.service
inside test -e /sys/fs/bpf/sockaccel/links/sockops || fail "stop removed the pins"
[ "$(status_json | jget attached)" = True ] || fail "not attached after stop"
pass "stopped; pins in place, still attached"

echo "== sockaccel cleanup removes them"
inside sockaccel cleanup --timeout 10s
inside test ! -e /sys/fs/bpf/sockaccel || fail "pins left after cleanup: $(inside ls -R /sys/fs/bpf)"
pass "cleanup removed every pin"

echo "== package removal leaves nothing running"
inside systemctl start sockaccel.service
inside dpkg -r sockaccel >/dev/null
# shellcheck disable=SC2016 # expanded by the container's shell
left=$(inside sh -c 'for f in /proc/[0-9]*/comm; do [ "$(cat $f 2>/dev/null)" = sockaccel ] && echo $f; done' || true)
[ -z "$left" ] || fail "processes left: $left"
inside test ! -e /sys/fs/bpf/sockaccel || fail "pins left after removal"
inside test ! -e /usr/bin/sockaccel || fail "binary left after removal"
pass "removed: no process, no pins, no binary"

# --- a source install: make install's unit starts make install's binary ---------
echo "== make install (PREFIX=/usr/local) under the same systemd"
make -s install DESTDIR="$root" PREFIX=/usr/local >/dev/null
inside systemctl daemon-reload
inside systemctl start sockaccel.service
[ "$(inside systemctl is-active sockaccel.service)" = active ] || fail "source install not active"
exe=$(inside readlink "/proc/$(show MainPID)/exe")
[ "$exe" = /usr/local/bin/sockaccel ] || fail "source install runs $exe"
inside systemctl stop sockaccel.service
inside /usr/local/bin/sockaccel cleanup --timeout 10s >/dev/null 2>&1 || fail "cleanup after the source install"
make -s uninstall DESTDIR="$root" PREFIX=/usr/local >/dev/null
inside systemctl daemon-reload
inside test ! -e /usr/local/bin/sockaccel || fail "make uninstall left the binary"
pass "active from $exe; stopped, cleaned up, uninstalled"
