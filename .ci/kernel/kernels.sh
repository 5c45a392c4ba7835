# shellcheck shell=bash
# Kernels `make test-kernel KERNEL=...` knows, sourced by image.sh and run.sh.
#
# Each one is a distribution's own kernel package, installed the way a user
# gets it: a minimal Debian root of the matching release, with that release's
# kernel metapackage (so the newest ABI of that series its security and
# updates suites carry), booted by qemu. Set KERNEL_PKG to pin an exact
# package instead (e.g. KERNEL_PKG=linux-image-6.1.0-47-amd64), as long as the
# mirror still serves it.
#
# Sets: SUITE (Debian release to debootstrap), KERNEL_PKG.

kernel_config() {
	case "$1" in
	debian-6.1)
		# Debian 12 "bookworm": 6.1 LTS. The generic flavour, not -cloud:
		# -cloud leaves out modules (9p, some netfilter) users' hosts have.
		SUITE=bookworm
		;;
	debian-11-5.10)
		# Debian 11 "bullseye" (LTS): 5.10, below the 5.15 README claims;
		# here to show what a user of an older kernel gets at start.
		SUITE=bullseye
		;;
	*)
		echo "unknown KERNEL=$1 (known: debian-6.1, debian-11-5.10)" >&2
		return 1
		;;
	esac
	KERNEL_PKG=${KERNEL_PKG:-linux-image-amd64}
}
