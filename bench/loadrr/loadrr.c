/* loadrr: request/response over many TCP connections at once, recording
 * every round trip, for the tail-latency and concurrency bench
 * (bench/load.sh).
 *
 * netperf -j reports p50, p90, p99 and max per process but not p99.9, and N
 * netperf processes give N separate distributions that cannot be merged.
 * loadrr keeps one histogram of every round trip on every connection (0.1 us
 * buckets up to 100 ms, 100 us buckets beyond, the true maximum beside it),
 * so p99.9 and max are exact over the whole run.
 *
 * C, not Go, for the reason given in bench/unixref/unixref.c: a Go runtime's
 * own threads share the two measured CPUs.
 *
 *   loadrr -server -port 7000 -size 1
 *   loadrr -client -host 10.250.1.3 -port 7000 -conns 64 -size 1 -duration 5
 *   conns=64 size=1 duration_s=5.000 transactions=... trans_per_s=... p50_us=... p90_us=... p99_us=... p999_us=... max_us=... mean_us=...
 *   loadrr -server -sink -port 7002
 *   loadrr -client -stream -host 10.250.1.3 -port 7002 -conns 512 -size 65536 -duration 5
 *   conns=512 size=65536 duration_s=5.000 bytes=... mbit_per_s=...
 *
 * -stream is the bulk counterpart: every connection writes -size chunks as
 * fast as it can into a server that discards them. Unlike N netperf
 * processes, all N connections start and stop together (512 netperf
 * processes took longer to start than a run lasts on the bench VM).
 *
 * Both sides use non-blocking sockets and one epoll loop (one thread each):
 * the client keeps exactly one request in flight per connection, so -conns 1
 * is netperf's TCP_RR and -conns N is N of them sharing two event loops. The
 * client connects every connection before it starts the clock, so connection
 * setup is not in the figures. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXSIZE 65536
/* Two tiers: 0.1 us buckets up to 100 ms, then 100 us buckets up to 100 s
 * (512 connections through one loop each way on a loaded 2-CPU host wait
 * well beyond 100 ms at the median). Slower ones land in the last. */
#define BUCKET_NS 100
#define NFINE 1000000
#define COARSE_NS 100000
#define NBUCKETS (2 * NFINE)

static void die(const char *what)
{
	fprintf(stderr, "loadrr: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(const char *msg)
{
	fprintf(stderr, "loadrr: %s (usage: loadrr -server [-sink] -port P [-size N] | loadrr -client [-stream] -host A -port P -conns N -size N -duration S)\n", msg);
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		die("fcntl O_NONBLOCK");
}

static void nodelay(int fd)
{
	int one = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
		die("setsockopt TCP_NODELAY");
}

/* 512 connections plus listeners need more than the default 1024 files in
 * some shells' limits; raise the soft limit to the hard one. */
static void raise_nofile(void)
{
	struct rlimit r;

	if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
		r.rlim_cur = r.rlim_max;
		setrlimit(RLIMIT_NOFILE, &r);
	}
}

/* write_all writes n bytes to a non-blocking socket. A request or response
 * is at most a few KiB and the peer keeps at most one in flight, so the
 * send buffer is never full and EAGAIN only spins in theory. */
static void write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);

		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			die("write");
		}
		buf += w;
		n -= (size_t)w;
	}
}

struct conn {
	int fd;
	size_t got;     /* bytes of the current response (client) or request (server) */
	uint64_t sent;  /* when the current request was sent (client) */
};

static char buf[MAXSIZE];

static _Noreturn void serve(int port, size_t size, int sink)
{
	int lfd = socket(AF_INET6, SOCK_STREAM, 0), one = 1, ep;
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any };
	struct epoll_event ev, evs[256];

	if (lfd < 0)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 4096))
		die("bind/listen");
	nonblock(lfd);
	if ((ep = epoll_create1(0)) < 0)
		die("epoll_create1");
	ev.events = EPOLLIN;
	ev.data.ptr = NULL; /* NULL marks the listener */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev))
		die("epoll_ctl listener");
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c) {
				int fd;

				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					nodelay(fd);
					c = calloc(1, sizeof(*c));
					if (!c)
						die("calloc");
					c->fd = fd;
					ev.events = EPOLLIN;
					ev.data.ptr = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
						die("epoll_ctl conn");
				}
				continue;
			}
			for (;;) {
				ssize_t r = read(c->fd, buf, sizeof(buf));

				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					break;
				if (r <= 0) { /* EOF or reset: the client is done */
					close(c->fd);
					free(c);
					break;
				}
				if (sink)
					continue;
				c->got += (size_t)r;
				/* A client sends its next request only after the
				 * response, so a read never spans two requests. */
				if (c->got >= size) {
					c->got = 0;
					write_all(c->fd, buf, size);
				}
			}
		}
	}
}

static uint32_t hist[NBUCKETS];

static double pct(uint64_t total, double p)
{
	uint64_t want = (uint64_t)(p * (double)total), seen = 0;

	if (want == 0)
		want = 1;
	for (int i = 0; i < NBUCKETS; i++) {
		seen += hist[i];
		if (seen >= want) /* the bucket's upper edge */
			return i < NFINE ? (double)(i + 1) * BUCKET_NS / 1000.0
					 : ((double)NFINE * BUCKET_NS + (double)(i - NFINE + 1) * COARSE_NS) / 1000.0;
	}
	return 0;
}

/* stream writes size-byte chunks on every connection as fast as the
 * sockets take them, for duration seconds, and reports the bytes written.
 * The server (-sink) reads and discards, so what was written was received
 * but for what sits in the socket buffers at the end (at most a few MB
 * against the GBs of a run). */
static int stream(int ep, struct conn *conns, int nconns, size_t size, double duration)
{
	struct epoll_event ev, evs[256];
	uint64_t bytes = 0, start = now_ns(), end = start + (uint64_t)(duration * 1e9), t;

	for (int i = 0; i < nconns; i++) {
		ev.events = EPOLLOUT;
		ev.data.ptr = &conns[i];
		if (epoll_ctl(ep, EPOLL_CTL_MOD, conns[i].fd, &ev))
			die("epoll_ctl");
	}
	while ((t = now_ns()) < end) {
		int n = epoll_wait(ep, evs, 256, 100);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			ssize_t w = write(c->fd, buf, size);

			if (w < 0 && errno != EAGAIN && errno != EINTR)
				die("write");
			if (w > 0)
				bytes += (uint64_t)w;
		}
	}
	for (int i = 0; i < nconns; i++)
		close(conns[i].fd);
	{
		double secs = (double)(t - start) / 1e9;

		printf("conns=%d size=%zu duration_s=%.3f bytes=%llu mbit_per_s=%.1f\n", nconns, size, secs,
		       (unsigned long long)bytes, (double)bytes * 8 / 1e6 / secs);
	}
	return 0;
}

static int client(const char *host, int port, int nconns, size_t size, double duration, int is_stream)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t sl;
	struct conn *conns = calloc((size_t)nconns, sizeof(*conns));
	struct epoll_event ev, evs[256];
	int ep;
	uint64_t trans = 0, sum_ns = 0, max_ns = 0, start, end, t;

	if (!conns)
		die("calloc");
	if (strchr(host, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			usage("bad -host");
		sl = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;

		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			usage("bad -host");
		sl = sizeof(*a);
	}
	if ((ep = epoll_create1(0)) < 0)
		die("epoll_create1");
	memset(buf, 'q', sizeof(buf));
	/* Blocking connects, one at a time, then non-blocking I/O: setup stays
	 * out of the measured window. */
	for (int i = 0; i < nconns; i++) {
		int fd = socket(ss.ss_family, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket");
		if (connect(fd, (struct sockaddr *)&ss, sl))
			die("connect");
		nodelay(fd);
		nonblock(fd);
		conns[i].fd = fd;
		ev.events = EPOLLIN;
		ev.data.ptr = &conns[i];
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
			die("epoll_ctl");
	}
	if (is_stream)
		return stream(ep, conns, nconns, size, duration);
	start = now_ns();
	end = start + (uint64_t)(duration * 1e9);
	for (int i = 0; i < nconns; i++) {
		conns[i].sent = now_ns();
		write_all(conns[i].fd, buf, size);
	}
	for (int live = nconns; live > 0;) {
		int n = epoll_wait(ep, evs, 256, 1000);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		if (n == 0 && now_ns() > end + 5000000000u) {
			fprintf(stderr, "loadrr: %d connections without a response 5 s after the end\n", live);
			return 1;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			for (;;) {
				ssize_t r = read(c->fd, buf, sizeof(buf));

				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					break;
				if (r < 0)
					die("read");
				if (r == 0) {
					fprintf(stderr, "loadrr: server closed a connection\n");
					return 1;
				}
				c->got += (size_t)r;
				if (c->got < size)
					continue;
				t = now_ns();
				c->got = 0;
				{
					uint64_t d = t - c->sent;
					uint64_t b = d / BUCKET_NS;

					if (b >= NFINE)
						b = NFINE + (d - (uint64_t)NFINE * BUCKET_NS) / COARSE_NS;
					hist[b < NBUCKETS ? b : NBUCKETS - 1]++;
					sum_ns += d;
					if (d > max_ns)
						max_ns = d;
					trans++;
				}
				if (t >= end) { /* this connection is done */
					epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
					live--;
					break;
				}
				c->sent = t;
				write_all(c->fd, buf, size);
				break;
			}
		}
	}
	t = now_ns();
	for (int i = 0; i < nconns; i++)
		close(conns[i].fd);
	{
		double secs = (double)(t - start) / 1e9;

		printf("conns=%d size=%zu duration_s=%.3f transactions=%llu trans_per_s=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f mean_us=%.2f\n",
		       nconns, size, secs, (unsigned long long)trans, (double)trans / secs,
		       pct(trans, 0.50), pct(trans, 0.90), pct(trans, 0.99), pct(trans, 0.999),
		       (double)max_ns / 1000.0, trans ? (double)sum_ns / (double)trans / 1000.0 : 0.0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	int is_server = 0, is_client = 0, port = 0, nconns = 1, sink = 0, is_stream = 0;
	size_t size = 1;
	double duration = 5;
	const char *host = NULL;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (!strcmp(a, "-server"))
			is_server = 1;
		else if (!strcmp(a, "-client"))
			is_client = 1;
		else if (!strcmp(a, "-sink"))
			sink = 1;
		else if (!strcmp(a, "-stream"))
			is_stream = 1;
		else if (!v)
			usage("missing value");
		else if (!strcmp(a, "-host"))
			host = v, i++;
		else if (!strcmp(a, "-port"))
			port = atoi(v), i++;
		else if (!strcmp(a, "-conns"))
			nconns = atoi(v), i++;
		else if (!strcmp(a, "-size"))
			size = (size_t)atol(v), i++;
		else if (!strcmp(a, "-duration"))
			duration = atof(v), i++;
		else
			usage("unknown flag");
	}
	if (port <= 0 || size < 1 || size > MAXSIZE || is_server == is_client)
		usage("need -server or -client, -port and 1 <= -size <= 65536");
	raise_nofile();
	if (is_server)
		serve(port, size, sink);
	if (!host || nconns < 1 || duration <= 0)
		usage("client needs -host, -conns >= 1 and -duration > 0");
	return client(host, port, nconns, size, duration, is_stream);
}
