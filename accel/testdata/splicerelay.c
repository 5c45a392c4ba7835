/* A minimal splice(2) relay, the way C proxies move bytes without copying
 * them to user space: accept one connection on LISTEN_PORT, connect to
 * UPSTREAM_PORT on the same address, wait DELAY_MS (so that the client's
 * first bytes are already queued), then splice client -> pipe -> upstream
 * with blocking calls until end of stream. Prints "ok BYTES", or
 * "error ERRNO-NAME after BYTES" when a splice fails.
 *
 *   splicerelay ADDR LISTEN_PORT UPSTREAM_PORT DELAY_MS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int die(const char *what)
{
	printf("error %s: %s\n", what, strerror(errno));
	fflush(stdout);
	exit(1);
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	struct timespec delay;
	long long total = 0;
	int ln, client, upstream, pipefd[2], one = 1;
	ssize_t n, w;

	if (argc != 5) {
		fprintf(stderr, "usage: %s ADDR LISTEN_PORT UPSTREAM_PORT DELAY_MS\n", argv[0]);
		return 2;
	}
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	ln = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ln, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	addr.sin_port = htons(atoi(argv[2]));
	if (ln < 0 || bind(ln, (struct sockaddr *)&addr, sizeof(addr)) || listen(ln, 1))
		die("listen");
	printf("listening\n");
	fflush(stdout);
	client = accept(ln, NULL, NULL);
	if (client < 0)
		die("accept");
	upstream = socket(AF_INET, SOCK_STREAM, 0);
	addr.sin_port = htons(atoi(argv[3]));
	if (upstream < 0 || connect(upstream, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect upstream");
	if (pipe(pipefd))
		die("pipe");
	delay.tv_sec = atoi(argv[4]) / 1000;
	delay.tv_nsec = (atoi(argv[4]) % 1000) * 1000000L;
	nanosleep(&delay, NULL);
	for (;;) {
		n = splice(client, NULL, pipefd[1], NULL, 65536, SPLICE_F_MOVE);
		if (n < 0) {
			printf("error %s after %lld\n", strerrorname_np(errno), total);
			return 1;
		}
		if (n == 0)
			break;
		while (n > 0) {
			w = splice(pipefd[0], NULL, upstream, NULL, n, SPLICE_F_MOVE);
			if (w <= 0) {
				printf("error upstream %s after %lld\n", w < 0 ? strerrorname_np(errno) : "EOF", total);
				return 1;
			}
			n -= w;
			total += w;
		}
	}
	shutdown(upstream, SHUT_WR);
	printf("ok %lld\n", total);
	return 0;
}
