//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Takes directions of one tracked connection off the fast path for good,
 * on the daemon's request: exclusions changed (reload, or a restart with
 * new flags) and the connection now matches one.
 *
 * It does what consume_use_marks does for a call seen on one end: one
 * atomic OR of direction bits into the conntrack entry, which the sender
 * of each direction reads on its next sendmsg and from then on passes its
 * bytes to TCP (recvmsg reads the redirect queue before the TCP queue, so
 * nothing is reordered). The daemon takes the direction into the accepting
 * end first and the other once that end has left the sockhash (see
 * retireExcluded). Why not insert a use mark from user space: marks are keyed by
 * the kernel address of a socket the daemon holds no reference to (it may
 * close and its address be reused by then), and the use gate's counters are
 * updated by the programs with atomic adds that a user-space map write
 * would race with. Here no address is used at all, and the entry is
 * identified by key and both socket cookies.
 *
 * A tc program run through BPF_PROG_TEST_RUN, like backlog.c: the request
 * follows an Ethernet header in the test packet. The return value is a
 * POLICY_* code. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Replaced at load time by the daemon's pinned conntrack map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct sock_key);
	__type(value, struct ct_entry);
} sa_conntrack SEC(".maps");

struct policy_req {
	struct sock_key key; /* the conntrack key (the client end's key) */
	__u32 bits;          /* directions to take off: 1 << sending side */
	__u64 cookie[2];     /* the entry's cookies as the daemon read them */
};

enum policy_result {
	POLICY_GONE = 0,    /* no such entry, or another connection's now */
	POLICY_OFF = 1,     /* a direction of those went off now */
	POLICY_ALREADY = 2, /* those directions were off already */
	POLICY_BAD = 3,     /* the request could not be read */
};

#define POLICY_REQ_OFFSET 14

SEC("tc")
int conn_off(struct __sk_buff *skb)
{
	struct policy_req req;
	struct ct_entry *e;
	__u32 was;
	int i;

	if (bpf_skb_load_bytes(skb, POLICY_REQ_OFFSET, &req, sizeof(req)) || !req.bits || req.bits > 3)
		return POLICY_BAD;
	e = bpf_map_lookup_elem(&sa_conntrack, &req.key);
	if (!e)
		return POLICY_GONE;
	/* The same connection: an end that joined since may have filled a
	 * cookie the daemon read as 0, but a known cookie never changes. */
	for (i = 0; i < 2; i++)
		if (req.cookie[i] && e->cookie[i] != req.cookie[i])
			return POLICY_GONE;
	was = __sync_fetch_and_or(&e->off, req.bits);
	return (was & req.bits) == req.bits ? POLICY_ALREADY : POLICY_OFF;
}

/* For bpf2go's -type. */
const struct policy_req *unused_policy_req __attribute__((unused));
const enum policy_result *unused_policy_result __attribute__((unused));
