//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Two questions user space asks the SOCKHASH's sockets through tc programs
 * run with BPF_PROG_TEST_RUN:
 *
 * sockhash_backlog reports, for one socket of the SOCKHASH, the redirected
 * bytes queued for its application and not read yet (psock_msg_bytes).
 *
 * Teardown needs it: when a socket leaves the SOCKHASH the kernel drops its
 * psock and frees everything still queued in it (sk_psock_drop ->
 * sk_psock_stop -> purge of ingress_msg), so sockaccel only removes sockets
 * once this reads zero.
 *
 * It is a tc program run through BPF_PROG_TEST_RUN, once per sockhash key
 * (the key follows an Ethernet header in the test packet), not a sockmap
 * iterator: iterators are tracing programs, which hardened kernels refuse
 * to load. The SOCKHASH lookup takes a reference on the socket, so the
 * socket cannot be freed while it is read. Kernel types come from BTF
 * through CO-RE.
 *
 * sockhash_cookies answers, for many keys a run, the cookie of the socket
 * the SOCKHASH holds under each key (0: none), for the fallback GC: a
 * userspace lookup answers one key per bpf() call, and at 100k connections
 * those 100k calls were almost all of a GC pass (bench/scale). */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"
#include "psock.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Replaced at load time by the daemon's pinned sockhash. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, struct sock_key);
	__type(value, __u64);
} sa_sockhash SEC(".maps");

typedef struct {
	long long counter;
} atomic64_t;

struct sock_common {
	atomic64_t skc_cookie;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct inet_sock icsk_inet;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
} __attribute__((preserve_access_index));


/* Where the key starts in the test packet: after an Ethernet header, the
 * smallest packet BPF_PROG_TEST_RUN accepts for tc. */
#define BACKLOG_KEY_OFFSET 14

SEC("tc")
int sockhash_backlog(struct __sk_buff *skb)
{
	struct sock_key key;
	struct bpf_sock *sk;
	struct tcp_sock *tp;
	struct sk_psock *psock;
	__u32 queued = 0;

	if (bpf_skb_load_bytes(skb, BACKLOG_KEY_OFFSET, &key, sizeof(key)))
		return 0;
	sk = bpf_map_lookup_elem(&sa_sockhash, &key);
	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		psock = (struct sk_psock *)((unsigned long)tp->inet_conn.icsk_inet.sk.sk_user_data & SK_USER_DATA_PTRMASK);
		queued = psock_msg_bytes(psock);
	}
	bpf_sk_release(sk);
	return queued;
}

/* One key of the test packet; the program writes the cookie after it. */
struct gclive_rec {
	struct sock_key key;
	__u64 cookie;
};

/* Records start after an Ethernet header, the smallest packet
 * BPF_PROG_TEST_RUN accepts for tc; a tc test packet must fit in one page
 * with the skb's headroom and shared info, which GCLIVE_MAX records do. */
#define GCLIVE_OFFSET 14
#define GCLIVE_MAX 60

/* Returns how many records it answered. The cookie was generated when
 * sock_ops first asked for it, before the socket was inserted. */
SEC("tc")
int sockhash_cookies(struct __sk_buff *skb)
{
	__u32 n = (skb->len - GCLIVE_OFFSET) / sizeof(struct gclive_rec);
	__u32 i;

	for (i = 0; i < GCLIVE_MAX && i < n; i++) {
		__u32 off = GCLIVE_OFFSET + i * sizeof(struct gclive_rec);
		struct sock_key key;
		struct bpf_sock *sk;
		struct tcp_sock *tp;
		__u64 cookie = 0;

		if (bpf_skb_load_bytes(skb, off, &key, sizeof(key)))
			return i;
		sk = bpf_map_lookup_elem(&sa_sockhash, &key);
		if (sk) {
			tp = bpf_skc_to_tcp_sock(sk);
			if (tp)
				cookie = tp->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter;
			bpf_sk_release(sk);
		}
		if (bpf_skb_store_bytes(skb, off + __builtin_offsetof(struct gclive_rec, cookie), &cookie, sizeof(cookie), 0))
			return i;
	}
	return i;
}
