/* unixref: the physical-limit reference of the sockaccel benchmark.
 *
 * Request/response and bulk transfer over an AF_UNIX SOCK_STREAM socket pair
 * between two processes pinned to two CPUs, with plain blocking read(2) and
 * write(2) like netperf and netserver: no TCP/IP, no netfilter, no device,
 * the best any socket-to-socket path on this host can do.
 *
 * C, not Go: a Go program's runtime threads (its monitor wakes every 20 us
 * while a thread sits in a blocking syscall) share the two measured CPUs; a
 * Go version switched context 4.2 times per transaction against 2.3-3.6
 * here, and measured a third of netperf's TCP rate over the same CPUs.
 *
 *   unixref -test rr -size 1 -duration 5s -cpus 0,1
 *   test=UNIX_RR size=1 duration_s=5.000 transactions=... trans_per_s=... p50_us=... p99_us=... mean_us=...
 *   unixref -test stream -size 65536 -duration 5s -cpus 0,1 -sndbuf 4194304
 *   test=UNIX_STREAM size=65536 duration_s=5.000 bytes=... mbit_per_s=... mb_per_s=...
 *
 * -sndbuf sets SO_SNDBUF on both ends with SO_SNDBUFFORCE (the AF_UNIX
 * default, net.core.wmem_default, is far below what TCP autotunes to). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "unixref: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(const char *msg)
{
	fprintf(stderr, "unixref: %s (usage: unixref -test rr|stream -size N -duration 5s -cpus C,S [-sndbuf N])\n", msg);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("pin to CPU");
}

/* read_full returns 0 at end of stream before any byte, 1 once buf is full. */
static int read_full(int fd, char *buf, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = read(fd, buf + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read");
		if (n == 0) {
			if (off)
				usage("peer closed mid-message");
			return 0;
		}
		off += n;
	}
	return 1;
}

static void write_full(int fd, const char *buf, size_t len)
{
	size_t off = 0;

	while (off < len) {
		/* MSG_NOSIGNAL: a dead peer is an error message, not SIGPIPE. */
		ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("send");
		off += n;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pct_us(const uint64_t *sorted, size_t n, int p)
{
	size_t i = (n * p + 99) / 100;

	if (i < 1)
		i = 1;
	return sorted[i - 1] / 1000.0;
}

static void rr(int fd, size_t size, uint64_t duration, int cpu, int server_cpu, int sndbuf)
{
	char *buf = calloc(1, size);
	size_t n = 0, cap = 1 << 20;
	uint64_t *lat = malloc(cap * sizeof(*lat));
	uint64_t start, deadline, t0, sum = 0;

	if (!buf || !lat)
		die("allocate");
	start = now_ns();
	deadline = start + duration;
	for (;;) {
		t0 = now_ns();
		if (t0 >= deadline)
			break;
		write_full(fd, buf, size);
		if (!read_full(fd, buf, size))
			usage("server closed early");
		if (n == cap) {
			cap *= 2;
			lat = realloc(lat, cap * sizeof(*lat));
			if (!lat)
				die("allocate");
		}
		lat[n] = now_ns() - t0;
		sum += lat[n++];
	}
	if (!n)
		usage("no transaction completed");
	qsort(lat, n, sizeof(*lat), cmp_u64);
	double secs = (t0 - start) / 1e9;
	printf("test=UNIX_RR size=%zu duration_s=%.3f transactions=%zu trans_per_s=%.2f p50_us=%.2f p99_us=%.2f mean_us=%.2f client_cpu=%d server_cpu=%d sndbuf=%d\n",
	       size, secs, n, n / secs, pct_us(lat, n, 50), pct_us(lat, n, 99), sum / 1000.0 / n, cpu, server_cpu, sndbuf);
}

static void rr_server(int fd, size_t size)
{
	char *buf = calloc(1, size);

	if (!buf)
		die("allocate");
	while (read_full(fd, buf, size))
		write_full(fd, buf, size);
}

/* The client writes for the duration; the server reads until end of stream
 * and reports its byte count and end time through report. */
static void stream(int fd, int report, size_t size, uint64_t duration, int cpu, int server_cpu, int sndbuf)
{
	char *buf = calloc(1, size);
	uint64_t start, deadline, got[2];

	if (!buf)
		die("allocate");
	start = now_ns();
	deadline = start + duration;
	while (now_ns() < deadline)
		write_full(fd, buf, size);
	shutdown(fd, SHUT_WR);
	if (read(report, got, sizeof(got)) != sizeof(got))
		usage("server did not report");
	double secs = (got[1] - start) / 1e9;
	double bps = got[0] / secs;
	printf("test=UNIX_STREAM size=%zu duration_s=%.3f bytes=%llu mbit_per_s=%.2f mb_per_s=%.2f client_cpu=%d server_cpu=%d sndbuf=%d\n",
	       size, secs, (unsigned long long)got[0], bps * 8 / 1e6, bps / 1e6, cpu, server_cpu, sndbuf);
}

static void stream_server(int fd, int report, size_t size)
{
	char *buf = malloc(size);
	uint64_t got[2] = {0, 0};

	if (!buf)
		die("allocate");
	for (;;) {
		ssize_t n = read(fd, buf, size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read");
		if (n == 0)
			break;
		got[0] += n;
	}
	got[1] = now_ns();
	if (write(report, got, sizeof(got)) != sizeof(got))
		die("report");
}

/* parse_duration accepts "5s", "500ms" or plain seconds. */
static uint64_t parse_duration(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || v <= 0)
		usage("invalid -duration");
	if (!strcmp(end, "ms"))
		return v * 1e6;
	if (!strcmp(end, "s") || !*end)
		return v * 1e9;
	usage("invalid -duration");
	return 0;
}

int main(int argc, char **argv)
{
	const char *test = "rr";
	long size = 1;
	uint64_t duration = 5000000000ull;
	int cpu = 0, server_cpu = 1, sndbuf = 0, fds[2], report[2];
	pid_t pid;

	for (int i = 1; i < argc; i++) {
		const char *flag = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (!val)
			usage("missing flag value");
		i++;
		if (!strcmp(flag, "-test"))
			test = val;
		else if (!strcmp(flag, "-size"))
			size = atol(val);
		else if (!strcmp(flag, "-duration"))
			duration = parse_duration(val);
		else if (!strcmp(flag, "-cpus")) {
			if (sscanf(val, "%d,%d", &cpu, &server_cpu) != 2 || cpu < 0 || server_cpu < 0)
				usage("invalid -cpus (want CLIENT,SERVER)");
		} else if (!strcmp(flag, "-sndbuf"))
			sndbuf = atoi(val);
		else
			usage("unknown flag");
	}
	if (size <= 0)
		usage("invalid -size");
	if (strcmp(test, "rr") && strcmp(test, "stream"))
		usage("invalid -test (want rr or stream)");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) || pipe(report))
		die("socketpair");
	for (int i = 0; i < 2 && sndbuf > 0; i++)
		if (setsockopt(fds[i], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)))
			die("SO_SNDBUFFORCE");
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(fds[0]);
		close(report[0]);
		pin(server_cpu);
		if (!strcmp(test, "rr"))
			rr_server(fds[1], size);
		else
			stream_server(fds[1], report[1], size);
		_exit(0);
	}
	close(fds[1]);
	close(report[1]);
	pin(cpu);
	if (!strcmp(test, "rr"))
		rr(fds[0], size, duration, cpu, server_cpu, sndbuf);
	else
		stream(fds[0], report[0], size, duration, cpu, server_cpu, sndbuf);
	shutdown(fds[0], SHUT_WR);
	int status;
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		usage("server process failed");
	return 0;
}
