#!/bin/sh
# Runs inside the test VM as PID 1 (exec'd by /sbin/sockaccel-ci-init from the
# root image), from the work disk mounted at /work that run.sh built:
#
#   /work/guest.sh     this script
#   /work/config       RUN, TEST_TIMEOUT, PACKAGES (sourced)
#   /work/bin/         sockaccel, PKG.test for each package
#   /work/shim/go      stands in for the Go toolchain (run.sh says why)
#   /work/src/         the source tree
#   /work/out/         results, read back on the host with debugfs
#
# It sets up the host the tests expect (the mounts systemd would make, in the
# hybrid cgroup layout of the development machine and CI), checks that the
# daemon starts, runs each test binary with -test.v, writes every exit code
# to /work/out, then syncs and powers off. Output also goes to the serial
# console, which the host shows as it comes.
#
# POSIX sh: the guest's /bin/sh is dash.
set -u
export PATH=/work/shim:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LANG=C.UTF-8 CI=true
# Under TCG emulation bulk transfers run some 50 times slower than on the
# host: tests that move tens of MiB per connection divide their sizes by this.
export SOCKACCEL_TEST_EMULATED=1
W=/work
OUT=$W/out
mkdir -p "$OUT"
. "$W/config"

say() { echo "[guest] $*"; }

finish() {
	date +%s >"$OUT/done"
	sync
	umount "$W" 2>/dev/null || sync
	# poweroff(8) needs an init system; the kernel does it directly. qemu
	# runs with -no-reboot, so it exits either way.
	echo o >/proc/sysrq-trigger
	sleep 60
}

mnt() { # mnt TYPE DIR [OPTIONS]: mount unless something already is there
	mkdir -p "$2"
	mountpoint -q "$2" || mount -t "$1" ${3:+-o "$3"} "$1" "$2" || say "mount $1 on $2 failed"
}

mnt tmpfs /run mode=0755
mnt tmpfs /tmp mode=1777
mkdir -p /dev/pts /dev/shm
mnt devpts /dev/pts
mnt tmpfs /dev/shm mode=1777
# cgroups as on the machines the suite was written on: hybrid mode, v1
# controllers under /sys/fs/cgroup and v2 at /sys/fs/cgroup/unified.
# TestBadInput needs the v1 cpu hierarchy to check that a v1 path is refused.
mnt tmpfs /sys/fs/cgroup mode=0755
mkdir -p /sys/fs/cgroup/cpu /sys/fs/cgroup/unified
mountpoint -q /sys/fs/cgroup/cpu || mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu || say "mount cgroup v1 cpu failed"
mountpoint -q /sys/fs/cgroup/unified || mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || say "mount cgroup2 failed"
mnt bpf /sys/fs/bpf mode=0700
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
ip link set lo up
# Entropy from the host (-device virtio-rng-pci): Go reads getrandom at start,
# which can block for long on an emulated CPU right after boot.
modprobe virtio_rng 2>/dev/null

cp /proc/version "$OUT/kernel-version"
uname -r >"$OUT/kernel-release"
say "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
if [ -e /sys/kernel/btf/vmlinux ]; then say "kernel BTF: yes"; else say "kernel BTF: NO (/sys/kernel/btf/vmlinux missing)"; fi

# Daemon smoke check: does `sockaccel run` load and attach on this kernel?
# Scoped to a cgroup of its own so it cannot touch the tests that follow, and
# stopped with --cleanup-on-exit. Its one-line error is the first thing a
# user of this kernel would see.
smoke() {
	cg=/sys/fs/cgroup/unified/sockaccel-smoke
	pin=/sys/fs/bpf/sockaccel-smoke
	mkdir -p "$cg"
	"$W/bin/sockaccel" run --cgroup "$cg" --pin-dir "$pin" --metrics-addr= \
		--cleanup-on-exit --log-format json >"$OUT/daemon.log" 2>&1 &
	pid=$!
	result=FAIL
	i=0
	# Wait for the daemon to attach or exit. The bound only limits how long
	# a hung start can take; emulation makes a start take seconds.
	while [ $i -lt 120 ]; do
		if ! kill -0 $pid 2>/dev/null; then
			break
		fi
		if "$W/bin/sockaccel" status --json --pin-dir "$pin" 2>/dev/null | grep -q '"attached": *true'; then
			result=PASS
			break
		fi
		sleep 1
		i=$((i + 1))
	done
	"$W/bin/sockaccel" status --json --pin-dir "$pin" >"$OUT/daemon-status.json" 2>&1
	kill -TERM $pid 2>/dev/null
	wait $pid
	"$W/bin/sockaccel" cleanup --force --pin-dir "$pin" >/dev/null 2>&1
	rmdir "$cg" 2>/dev/null
	echo "$result" >"$OUT/daemon.result"
	say "daemon start: $result"
	if [ $result = FAIL ]; then
		# Its error line without the verifier log that follows on it.
		tail -n 3 "$OUT/daemon.log" | cut -f1 | cut -c1-300 | sed 's/^/[guest]   /'
	fi
}
smoke

# Each package's tests run in that package's directory of the source tree, as
# `go test` runs them (testdata/ and relative paths work as on the host).
for pkg in $PACKAGES; do
	name=$(echo "$pkg" | tr / _)
	mkdir -p "$W/src/$pkg"
	say "=== $pkg: -test.run '$RUN'"
	start=$(date +%s)
	(
		cd "$W/src/$pkg" &&
			"$W/bin/$name.test" -test.v -test.count=1 -test.timeout="$TEST_TIMEOUT" -test.run="$RUN" 2>&1
		echo $? >"$OUT/$name.rc"
	) | tee "$OUT/$name.log"
	say "=== $pkg: exit $(cat "$OUT/$name.rc") in $(($(date +%s) - start)) s"
done

# Anything the tests left behind is a test bug worth seeing on the host.
{
	echo "## ip netns"
	ip netns list
	echo "## bpffs"
	ls -la /sys/fs/bpf
	echo "## cgroups"
	find /sys/fs/cgroup/unified -mindepth 1 -maxdepth 1 -type d
} >"$OUT/leftovers.txt" 2>&1
dmesg >"$OUT/dmesg.txt" 2>&1
finish
