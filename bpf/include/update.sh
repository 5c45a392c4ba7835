#!/usr/bin/env bash
# Refreshes the vendored headers from the Debian packages they come from, so
# `make generate` never depends on whatever the build host has installed.
#   linux/bpf.h, linux/bpf_common.h: linux-libc-dev (UAPI, GPL-2.0 WITH Linux-syscall-note)
#   bpf/bpf_helpers.h, bpf_helper_defs.h, bpf_endian.h: libbpf-dev (LGPL-2.1 OR BSD-2-Clause)
# linux/types.h is our own minimal stand-in and is not refreshed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cp /usr/include/linux/bpf.h /usr/include/linux/bpf_common.h "$here/linux/"
cp /usr/include/bpf/bpf_helpers.h /usr/include/bpf/bpf_helper_defs.h /usr/include/bpf/bpf_endian.h "$here/bpf/"
dpkg-query -W -f='${Package} ${Version}\n' linux-libc-dev libbpf-dev >"$here/VERSIONS"
