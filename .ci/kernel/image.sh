#!/usr/bin/env bash
# Build (once) and cache the guest for KERNEL: a minimal Debian root with the
# release's own kernel package installed in it, turned into an ext4 image, plus
# the kernel and initrd qemu boots directly. Prints the cache directory.
#
#   .ci/kernel/image.sh debian-6.1
#
# Cache: $CACHE_DIR (default /var/cache/sockaccel-kernels)/KERNEL/HASH/, where
# HASH covers this script, kernels.sh and KERNEL_PKG, so editing either builds
# a fresh guest and a second run with nothing changed downloads nothing. Older
# HASH directories of the same KERNEL are removed once the new one is ready.
#
# Needs root (debootstrap, chroot), debootstrap, mkfs.ext4 (e2fsprogs) and the
# host's apt sources: the Debian mirror is read from them, never written here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kernels.sh
. "$here/kernels.sh"

KERNEL=${1:?usage: image.sh KERNEL}
kernel_config "$KERNEL"
CACHE_DIR=${CACHE_DIR:-/var/cache/sockaccel-kernels}

# Programs the privileged tests run inside the guest, beside the static Go
# test binaries: ip (iproute2: netns, veth), mount/mountpoint (util-linux),
# modprobe (kmod: veth and qdisc modules load on demand), ps/pkill (procps),
# sha256sum/cat (coreutils, in minbase). The real programs of
# accel/apps_test.go (nginx, curl, wrk, redis, haproxy) are there too, so
# RUN='TestNginx|TestRedis|TestHAProxy' works; the default RUN leaves them out
# for time. No compiler: everything is built on the host.
GUEST_PACKAGES="iproute2 util-linux kmod procps initramfs-tools python3"
GUEST_APPS="nginx curl wrk redis-server redis-tools haproxy"

log() { echo "image[$KERNEL]: $*" >&2; }

key=$(cat "$here/image.sh" "$here/kernels.sh" <(echo "$KERNEL $KERNEL_PKG $SUITE") | sha256sum | cut -c1-12)
dir="$CACHE_DIR/$KERNEL/$key"
if [[ -f $dir/ready ]]; then
	echo "$dir"
	exit 0
fi

# One builder at a time per KERNEL; a second `make test-kernel` waits here and
# then finds the image ready.
mkdir -p "$CACHE_DIR/$KERNEL"
exec 9>"$CACHE_DIR/$KERNEL/.lock"
flock 9
if [[ -f $dir/ready ]]; then
	echo "$dir"
	exit 0
fi

# The Debian mirror and security mirror this host's apt already uses (any
# release: the paths are the same for all of them). Override with
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR.
targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | sort -u)
mirror=${DEBIAN_MIRROR:-$(awk '$2 ~ /^[a-z]+$/ {print $1; exit}' <<<"$targets")}
security=${DEBIAN_SECURITY_MIRROR:-$(awk '$2 ~ /-security$/ {print $1; exit}' <<<"$targets")}
if [[ -z $mirror ]]; then
	log "no Debian mirror in this host's apt sources (run apt-get update, or set DEBIAN_MIRROR)"
	exit 1
fi

# Left over by a builder that was killed (we hold the lock: none is running).
rm -rf "$CACHE_DIR/$KERNEL"/.build-*
work="$CACHE_DIR/$KERNEL/.build-$key"
mkdir -p "$work"
root="$work/rootfs"
started=$SECONDS

# debootstrap keeps the packages it fetched in the root's apt archive; point it
# at a cache dir outside the root so a rebuild after a script change does not
# download the base system again.
debs="$CACHE_DIR/debs/$SUITE"
mkdir -p "$debs"
log "debootstrap $SUITE minbase from $mirror"
debootstrap --variant=minbase --include="${GUEST_PACKAGES// /,}" \
	--cache-dir="$debs" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
	tail -n 30 "$work/debootstrap.log" >&2
	exit 1
}

# The release's updates and security suites carry its newest kernel ABI.
{
	echo "deb $mirror $SUITE main"
	echo "deb $mirror $SUITE-updates main"
	[[ -n $security ]] && echo "deb $security $SUITE-security main"
} >"$root/etc/apt/sources.list"
# No service may start inside the chroot (nginx, redis and haproxy try to).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo sockaccel-vm >"$root/etc/hostname"

# Install the kernel (its postinst runs update-initramfs, which puts the
# virtio block driver and ext4 in the initrd) and the programs. The chroot
# needs /proc, /sys and /dev, and the .deb cache is bind-mounted in so that it
# survives a rebuild and stays out of the image. All of these are mounted in a
# private mount namespace and vanish with it: nothing is ever left mounted on
# the host, even if this script is killed.
log "install $KERNEL_PKG and test programs in the chroot"
unshare --mount --propagation private bash -euo pipefail -c '
	root=$1 debs=$2; shift 2
	mount -t proc proc "$root/proc"
	mount -t sysfs sysfs "$root/sys"
	mount --rbind /dev "$root/dev"
	mount --bind "$debs" "$root/var/cache/apt/archives"
	export DEBIAN_FRONTEND=noninteractive LC_ALL=C
	chroot "$root" apt-get update -qq
	chroot "$root" apt-get install -y -qq --no-install-recommends "$@"
' _ "$root" "$debs" "$KERNEL_PKG" $GUEST_APPS >"$work/install.log" 2>&1 || {
	tail -n 30 "$work/install.log" >&2
	exit 1
}
rm -rf "$root"/var/lib/apt/lists/* "$root/usr/sbin/policy-rc.d"

# qemu boots the kernel and initrd directly (-kernel/-initrd): no bootloader.
vmlinuz=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
if [[ -z $vmlinuz || -z $initrd ]]; then
	log "no kernel or initrd in $root/boot"
	ls -l "$root/boot" >&2
	exit 1
fi
cp "$vmlinuz" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' "$KERNEL_PKG" 'linux-image-*' 2>/dev/null |
	sort -u >"$work/kernel-packages.txt"
basename "$vmlinuz" | sed 's/^vmlinuz-//' >"$work/kernel-release"

# PID 1 of the guest. Everything test-specific (the test binaries, what to
# run, the script that runs it) lives on a second disk built per run, so this
# image never changes between runs and qemu opens it snapshot=on.
cat >"$root/sbin/sockaccel-ci-init" <<'INIT'
#!/bin/sh
# sockaccel kernel-test guest init: mount the work disk (second virtio disk)
# and hand over to the guest script the host put there.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# initramfs-tools moves /proc, /sys, /dev and /run over to the real root;
# mount them only if it did not.
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /work
if mount -t ext4 /dev/vdb /work && [ -x /work/guest.sh ]; then
	exec /work/guest.sh
fi
echo "sockaccel-ci-init: no work disk with guest.sh on /dev/vdb" >&2
echo o >/proc/sysrq-trigger
sleep 60
INIT
chmod 755 "$root/sbin/sockaccel-ci-init"

# The root image: the tree as is, plus room for what the guest writes outside
# its tmpfs mounts (qemu's snapshot=on keeps those writes in a temporary
# overlay, the cached image is never modified).
size_mb=$(($(du -sm "$root" | cut -f1) * 5 / 4 + 256))
log "root image ${size_mb} MiB"
mkfs.ext4 -q -F -L sockaccel-root -d "$root" "$work/root.img" "${size_mb}M" >/dev/null
rm -rf "$root"

touch "$work/ready"
rm -rf "$dir"
mv "$work" "$dir"
# Guests built by an older version of these scripts.
find "$CACHE_DIR/$KERNEL" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -exec rm -rf {} +
log "ready in $((SECONDS - started)) s: $(cat "$dir/kernel-release") ($dir)"
echo "$dir"
