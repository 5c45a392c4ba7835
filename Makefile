# Pinned BPF toolchain: generated objects are committed and must be
# reproducible byte for byte (make check-generate).
CLANG ?= clang-16
LLVM_STRIP ?= llvm-strip-16
export BPF2GO_CC := $(CLANG)
export BPF2GO_STRIP := $(LLVM_STRIP)
export BPF2GO_CFLAGS := -O2 -g -Wall -Werror -mcpu=v3

GO ?= go
BIN := bin/sockaccel
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

PREFIX ?= /usr/local

.PHONY: all generate check-generate build test soak soak-transitions lint clean bench bench-scale bench-load install uninstall deb test-systemd test-kernel deps

all: generate build

generate:
	$(GO) generate ./accel/... ./bench/...

check-generate: generate
	git diff --exit-code -- accel/ bench/proto/ || { echo "generated BPF bindings are stale: run make generate and commit" >&2; exit 1; }
	@# ls-files, not status: status reports a whole ignored directory (bin/
	@# after make build) whatever the pattern.
	@untracked=$$(git ls-files --others -- accel bench | grep -E '_bpfel\.(o|go)$$'); \
	if [ -n "$$untracked" ]; then echo "generated BPF files not committed (a fresh clone cannot build):"; echo "$$untracked"; exit 1; fi

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sockaccel

# Privileged tests load real programs on this kernel; they run one package at
# a time because they share the host's cgroup and bpffs.
test: build
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 40m ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Benchmark (root): make bench [QUICK=1|SMOKE=1] [OUT=dir]; see bench/README.md.
# Soak (root): the compatibility matrix, the real programs, the integrity,
# ordering, backpressure, churn and cleanup tests, SOAK_COUNT times over
# (default 20, about 17 minutes here: 52 s a round). Any failure stops it.
SOAK_COUNT ?= 20
SOAK_TESTS := TestCompatibilityMatrix|TestNginx|TestRedis|TestHAProxy|TestSplice|TestRedirectIntegrity|TestOrdering|TestIsolation|TestBacklog|TestConntrackChurn|TestCleanupUnderLoad|TestRcvlowat|TestZerocopy|TestBlockingPeers|TestBackpressureLikeTCP|TestOOBMisread
soak: build
	$(GO) test -p 1 -count=$(SOAK_COUNT) -failfast -timeout 6h -run '$(SOAK_TESTS)' ./accel/

# Transition soak (root): cleanup under load with blocking Python echo peers
# (8 connections, 64 MiB each way), TRANSITION_ROUNDS times; any broken
# connection or lost byte fails it. About 3 s a round here.
TRANSITION_ROUNDS ?= 50
soak-transitions: build
	$(GO) test -p 1 -count=$(TRANSITION_ROUNDS) -failfast -timeout 2h -run 'TestCleanupUnderLoadBlockingPeers$$' ./accel/

# Privileged tests on another kernel, booted in qemu (root; downloads and
# caches a Debian guest on first use, see .ci/kernel/run.sh):
#   make test-kernel [KERNEL=debian-6.1|debian-11-5.10] [RUN=regexp]
# The default RUN is the privileged suite without the real programs
# (TestNginx, TestRedis, TestHAProxy* need longer; pass them in RUN).
KERNEL ?= debian-6.1
KERNEL_TESTS := TestRedirectIntegrity|TestOrdering|TestIsolation|TestScope|TestCapacity|TestRestartAdoptsPins|TestCleanup|TestKernelFreesQueuedBytes|TestCompatibilityMatrix|TestRcvlowat|TestZerocopy|TestULP|TestLargeSetsockopt|TestBlockingRecv|TestSplice|TestBacklog|TestConntrack|TestConns|TestGCIdle|TestEnsureTracefs|TestVersion|TestBadInput|TestDaemonLifecycle|TestKillDuringTransfer|TestMetricsEndpoint|TestResolve|TestPathByID
RUN ?= $(KERNEL_TESTS)
test-kernel:
	KERNEL='$(KERNEL)' RUN='$(RUN)' GO='$(GO)' bash .ci/kernel/run.sh

# What the tests and the benchmark drive, installed with apt-get (root; the
# prometheus package for promtool, which the metrics tests run): the
# tests themselves never install anything.
TEST_PACKAGES := iproute2 iptables python3 libpython3.11-testsuite gcc libc6-dev nginx curl wrk redis-server redis-tools haproxy prometheus
deps:
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES)
	INSTALL_ONLY=1 bash bench/run.sh

bench: build
	QUICK='$(QUICK)' SMOKE='$(SMOKE)' PROTO='$(PROTO)' OUT='$(OUT)' SOCKACCEL='$(BIN)' CC='$(CC)' GO='$(GO)' bash bench/run.sh

# BPF time per connection and per message of every program beside the bare
# prototype (root; a few minutes on an idle host): make bench-cost
# [SOCKACCEL_B=other/sockaccel]; see bench/README.md.
.PHONY: bench-cost
bench-cost: build
	OUT='$(OUT)' SOCKACCEL='$(BIN)' SOCKACCEL_B='$(SOCKACCEL_B)' CC='$(CC)' GO='$(GO)' bash bench/cost.sh

# Capacity benchmark (root): kernel memory per connection and the cost of a
# scrape, status, conns, a GC pass, a restart and a cleanup at 0, 10k and
# 100k open accelerated connections; SCALE_QUICK=1 for 0, 1k and 5k (a few
# minutes). See bench/scale/README.md.
bench-scale: build
	SCALE_QUICK='$(SCALE_QUICK)' OUT='$(OUT)' SOCKACCEL='$(BIN)' GO='$(GO)' bash bench/scale/run.sh

# Tail latency and concurrency (root): make bench-load [QUICK=1|SMOKE=1]
# [OUT=dir] [TOPOS="bridge veth"] [CONNS="1 8 64 512"] [NETPERF_CONNS="1 8"] [CASES=regexp]
# [RUN_LEN=s] [LOAD_REPS=n] [PERF=1]; see bench/README.md.
bench-load: build
	QUICK='$(QUICK)' SMOKE='$(SMOKE)' OUT='$(OUT)' TOPOS='$(TOPOS)' CONNS='$(CONNS)' NETPERF_CONNS='$(NETPERF_CONNS)' CASES='$(CASES)' RUN_LEN='$(RUN_LEN)' LOAD_REPS='$(LOAD_REPS)' PERF='$(PERF)' SOCKACCEL='$(BIN)' CC='$(CC)' bash bench/load.sh

# Source install: the binary under PREFIX, the unit in /etc/systemd/system
# with ExecStart pointing at it (the unit in systemd/ says /usr/bin, where
# the Debian package puts it).
UNITDIR ?= /etc/systemd/system
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/sockaccel
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|^ExecStart=/usr/bin/sockaccel|ExecStart=$(PREFIX)/bin/sockaccel|' systemd/sockaccel.service > $(DESTDIR)$(UNITDIR)/sockaccel.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sockaccel.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/sockaccel/README.md
	install -D -m 0644 systemd/config.yaml $(DESTDIR)$(PREFIX)/share/doc/sockaccel/config.yaml
	install -D -m 0644 -t $(DESTDIR)$(PREFIX)/share/doc/sockaccel/prometheus systemd/prometheus/sockaccel.rules.yml systemd/prometheus/sockaccel.rules.test.yml systemd/prometheus/sockaccel.dashboard.json
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Leaves the pins (and so live connections) alone: run 'sockaccel cleanup'
# first to detach everything.
uninstall:
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl disable --now sockaccel.service || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/sockaccel $(DESTDIR)$(UNITDIR)/sockaccel.service
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/sockaccel
	@if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# Debian package (dpkg-deb): bin/sockaccel_VERSION_ARCH.deb.
DEB_ARCH ?= $(shell dpkg --print-architecture 2>/dev/null || $(GO) env GOARCH)
DEB_VERSION ?= 0.0~git$(shell git rev-list --count HEAD 2>/dev/null || echo 0).$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DEB := bin/sockaccel_$(DEB_VERSION)_$(DEB_ARCH).deb
deb: build
	DEB='$(DEB)' DEB_VERSION='$(DEB_VERSION)' DEB_ARCH='$(DEB_ARCH)' BIN='$(BIN)' bash systemd/deb/build.sh

# Debian's systemd as PID 1 in systemd-nspawn runs the package (root; caches
# a debootstrapped bookworm root in /var/cache/sockaccel-systemd).
test-systemd: deb
	DEB='$(DEB)' bash systemd/test-systemd.sh

clean:
	rm -rf bin
