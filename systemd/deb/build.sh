#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb from an already built binary:
# DEB (output), DEB_VERSION, DEB_ARCH, BIN. Run through `make deb`.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DEB:?}" "${DEB_VERSION:?}" "${DEB_ARCH:?}" "${BIN:?}"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -D -m 0755 "$BIN" "$root/usr/bin/sockaccel"
install -D -m 0644 systemd/sockaccel.service "$root/lib/systemd/system/sockaccel.service"
install -D -m 0644 README.md "$root/usr/share/doc/sockaccel/README.md"
install -D -m 0644 systemd/deb/copyright "$root/usr/share/doc/sockaccel/copyright"
# The commented default config and the example Prometheus alerts and
# dashboard, as documentation: the daemon needs no config file.
install -D -m 0644 systemd/config.yaml "$root/usr/share/doc/sockaccel/config.yaml"
install -D -m 0644 -t "$root/usr/share/doc/sockaccel/prometheus" systemd/prometheus/sockaccel.rules.yml systemd/prometheus/sockaccel.rules.test.yml systemd/prometheus/sockaccel.dashboard.json
install -d "$root/DEBIAN"
for f in postinst prerm postrm; do
	install -m 0755 "systemd/deb/$f" "$root/DEBIAN/$f"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$DEB_ARCH/" -e "s/@SIZE@/$size/" \
	systemd/deb/control >"$root/DEBIAN/control"
(cd "$root" && find usr lib -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
mkdir -p "$(dirname "$DEB")"
dpkg-deb --root-owner-group -Zxz --build "$root" "$DEB" >/dev/null
echo "$DEB"
