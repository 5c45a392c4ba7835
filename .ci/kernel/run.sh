#!/usr/bin/env bash
# Run sockaccel's privileged Go tests on another kernel, inside qemu.
#
#   make test-kernel [KERNEL=debian-6.1] [RUN='TestCompat|TestRedirect']
#
# 1. image.sh builds (once, cached) a Debian root with that release's kernel.
# 2. Here: static test binaries for PACKAGES and bin/sockaccel, on a work
#    disk (ext4 image made with mkfs.ext4 -d; nothing is mounted on the host).
# 3. qemu boots the kernel, guest.sh runs the tests and writes logs and exit
#    codes back to the work disk, then powers off.
# 4. Here again: read the results back (debugfs rdump), print one line per
#    test and exit non-zero if any test failed or the VM did not finish.
#
# Environment (the Makefile passes these on):
#   KERNEL        debian-6.1 (default) or debian-11-5.10 (see kernels.sh)
#   RUN           go test -run regexp for every package
#   PACKAGES      Go packages to test (default ./accel ./accel/detect ./accel/pins
#                 ./accel/hostfs ./cmd/sockaccel ./cgroup)
#   OUT           where logs go (default bin/kernel-test/KERNEL)
#   CACHE_DIR     guest images (default /var/cache/sockaccel-kernels)
#   VM_MEM, VM_CPUS   guest size (2048 MiB, 2 vCPUs: the CI machine's CPUs)
#   VM_TIMEOUT    hard limit for the whole VM run (default 40m)
#   TEST_TIMEOUT  go test -timeout for each package inside (default 30m)
#   QEMU_ACCEL    default tcg,thread=single (why: below); kvm where KVM works
set -euo pipefail

cd "$(dirname "$0")/../.."
repo=$(pwd)
here=$repo/.ci/kernel

KERNEL=${KERNEL:-debian-6.1}
RUN=${RUN:-.}
PACKAGES=${PACKAGES:-./accel ./accel/detect ./accel/pins ./accel/hostfs ./cmd/sockaccel ./cgroup}
OUT=${OUT:-$repo/bin/kernel-test/$KERNEL}
GO=${GO:-go}
VM_MEM=${VM_MEM:-2048}
VM_CPUS=${VM_CPUS:-2}
VM_TIMEOUT=${VM_TIMEOUT:-40m}
TEST_TIMEOUT=${TEST_TIMEOUT:-30m}
# KVM on the development machine and CI is a nested-PVM module that cannot
# run a stock guest kernel ("KVM internal error ... emulation failure"), so
# the default is qemu's own emulation (TCG). Multi-threaded TCG soft-locked
# both vCPUs in 2 of 5 runs (in the int3 handler while syscall tracepoints
# were patched in); single-threaded TCG has not. Where KVM works:
# QEMU_ACCEL=kvm.
QEMU_ACCEL=${QEMU_ACCEL:-tcg,thread=single}

say() { echo "test-kernel[$KERNEL]: $*"; }
fail() {
	say "$*" >&2
	exit 1
}

for tool in qemu-system-x86_64 debootstrap mkfs.ext4 debugfs timeout; do
	command -v "$tool" >/dev/null || fail "$tool not found (apt-get install qemu-system-x86 debootstrap e2fsprogs coreutils)"
done
[[ $(id -u) == 0 ]] || fail "needs root (debootstrap and chroot build the guest)"

t0=$SECONDS
image=$("$here/image.sh" "$KERNEL")
t_image=$((SECONDS - t0))

rm -rf "$OUT"
mkdir -p "$OUT"
stage=$(mktemp -d "$OUT/.work-XXXXXX")
vm=""
cleanup() {
	# Stop the VM if we are interrupted: $vm is our own `timeout`, which
	# passes the signal on to qemu.
	if [[ -n $vm ]] && kill -0 "$vm" 2>/dev/null; then
		kill "$vm" 2>/dev/null || true
		wait "$vm" 2>/dev/null || true
	fi
	rm -rf "$stage"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Static binaries (CGO_ENABLED=0), built from this tree. cmd/sockaccel's
# TestMain builds the binary with `go build -o BIN .`; the guest has no Go
# toolchain, so a shim `go` copies in the one built here from the same tree.
t0=$SECONDS
mkdir -p "$stage/disk/bin" "$stage/disk/shim" "$stage/disk/out"
export CGO_ENABLED=0
"$GO" build -trimpath -o "$stage/disk/bin/sockaccel" ./cmd/sockaccel
pkgs=""
for p in $PACKAGES; do
	p=${p#./}
	"$GO" test -c -o "$stage/disk/bin/${p//\//_}.test" "./$p"
	pkgs="$pkgs $p"
done
t_build=$((SECONDS - t0))
cat >"$stage/disk/shim/go" <<'EOF'
#!/bin/sh
# Guest stand-in for `go build -o BIN .` (cmd/sockaccel's TestMain): the host
# built that binary from the same tree.
if [ "$1" = build ] && [ "$2" = -o ] && [ "$4" = . ] && [ $# -eq 4 ]; then
	exec cp /work/bin/sockaccel "$3"
fi
echo "go (test-kernel shim): only 'go build -o BIN .' is available in the guest, not: go $*" >&2
exit 1
EOF
chmod 755 "$stage/disk/shim/go"
# The source tree (tracked and new files, not ignored ones), so that tests
# find testdata and other files relative to their package directory as under
# `go test`.
mkdir -p "$stage/disk/src"
git ls-files -z -co --exclude-standard | tar -C "$repo" --null -T - -cf - | tar -C "$stage/disk/src" -xf -
cp "$here/guest.sh" "$stage/disk/guest.sh"
chmod 755 "$stage/disk/guest.sh"
# Single quotes survive any regexp the caller passes (but one with a quote).
[[ $RUN != *"'"* ]] || fail "RUN must not contain a single quote"
{
	echo "RUN='$RUN'"
	echo "TEST_TIMEOUT='$TEST_TIMEOUT'"
	echo "PACKAGES='${pkgs# }'"
} >"$stage/disk/config"

# The work disk: binaries plus room for logs.
size_mb=$(($(du -sm "$stage/disk" | cut -f1) + 256))
mkfs.ext4 -q -F -L sockaccel-work -d "$stage/disk" "$stage/work.img" "${size_mb}M" >/dev/null

# Boot. -kernel/-initrd: no bootloader. Root opened snapshot=on so the cached
# image never changes. No network device: the tests use loopback and the
# namespaces they create. On a panic, soft lockup or hung task the kernel
# reboots at once (panic=-1), and -no-reboot turns that into qemu exiting, so
# a wedged guest ends the run in seconds instead of at VM_TIMEOUT.
case $QEMU_ACCEL in
kvm*) cpu=host ;;
*) cpu=max ;;
esac
cmdline="root=/dev/vda rw console=ttyS0 init=/sbin/sockaccel-ci-init"
cmdline+=" panic=-1 oops=panic softlockup_panic=1 hung_task_panic=1"
cmdline+=" random.trust_cpu=on net.ifnames=0 quiet loglevel=4"
say "kernel $(cat "$image/kernel-release"), RUN='$RUN', packages:$pkgs"
say "booting qemu (-accel $QEMU_ACCEL, ${VM_CPUS} vCPUs, ${VM_MEM} MiB, limit $VM_TIMEOUT); log: $OUT/serial.log"
t0=$SECONDS
timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 \
	-accel "$QEMU_ACCEL" -cpu "$cpu" -smp "$VM_CPUS" -m "$VM_MEM" \
	-no-reboot -display none -monitor none -serial stdio -nic none \
	-device virtio-rng-pci \
	-kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "$cmdline" \
	-drive "file=$image/root.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
	-drive "file=$stage/work.img,format=raw,if=virtio,cache=writeback" \
	</dev/null >"$OUT/serial.log" 2>&1 &
vm=$!

# Follow the console while the VM runs: the guest's own lines and go test's
# top-level results, not every subtest. Also track qemu's peak memory (VmHWM).
qemu_pid=""
peak_kb=0
tail -n +1 -F --pid="$vm" "$OUT/serial.log" 2>/dev/null |
	grep --line-buffered -E '^\[guest\]|^(--- |ok |FAIL|PASS$|panic:)|Kernel panic|BUG:|soft lockup|hung_task|Oops' &
follower=$!
while kill -0 "$vm" 2>/dev/null; do
	[[ -n $qemu_pid ]] || qemu_pid=$(pgrep -P "$vm" -x qemu-system-x86 || true)
	if [[ -n $qemu_pid ]]; then
		kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$qemu_pid/status" 2>/dev/null || true)
		[[ -n $kb ]] && ((kb > peak_kb)) && peak_kb=$kb
	fi
	sleep 2
done
vmrc=0
wait "$vm" || vmrc=$?
vm=""
wait "$follower" 2>/dev/null || true
t_vm=$((SECONDS - t0))

# Results back from the work disk without mounting it.
debugfs -R "rdump /out $OUT" "$stage/work.img" >/dev/null 2>&1 || true
res=$OUT/out

echo
status=0
if [[ ! -f $res/done ]]; then
	case $vmrc in
	124 | 137) why="timed out after $VM_TIMEOUT" ;;
	*) why="qemu exited $vmrc before the guest finished" ;;
	esac
	say "VM did not finish: $why; last console lines:"
	tail -n 40 "$OUT/serial.log" | sed 's/^/    /'
	status=1
fi

say "timings: image ${t_image} s, build ${t_build} s, VM ${t_vm} s; qemu peak RSS $((peak_kb / 1024)) MiB"
# One line per test (failed subtests too), from go test -v output, ending
# with the "N passed, N failed" line.
bash "$here/report.sh" "$KERNEL" "$res" $pkgs || status=1
exit $status
