/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The conntrack entry of a connection: created or joined by each local
 * end at establishment, removed when its last local end closes, and the
 * wake-up of the daemon's idle GC. Separate because the entry outlives
 * either socket's callbacks and is shared with the daemon's listing, GC
 * and policy.c. */
#ifndef SOCKACCEL_CONNTRACK_H
#define SOCKACCEL_CONNTRACK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"
#include "kernel.h"
#include "maps.h"
#include "usemarks.h"

static __always_inline void gc_wake(void)
{
	__u32 zero = 0;
	struct gc_state *gc = bpf_map_lookup_elem(&sa_gc, &zero);
	__u8 event = 1;

	if (!gc || gc->armed)
		return;
	if (__sync_val_compare_and_swap(&gc->armed, 0, 1) == 0)
		bpf_ringbuf_output(&sa_gc_wake, &event, sizeof(event), 0);
}

/* What a conntrack entry knows of one local end. */
static __always_inline void ct_set_side(struct ct_entry *e, __u32 side, __u64 cookie, __u64 cgroup_id,
					struct bpf_sock *sk)
{
	e->cookie[side] = cookie;
	e->cgroup_id[side] = cgroup_id;
	e->sk[side] = (__u64)(unsigned long)sk;
}

/* Records this end in its connection's conntrack entry and asks for the
 * state callback that removes the entry at TCP_CLOSE. An accepted end
 * passes the client's entry it already looked up (one hash lookup fewer per
 * connection); a client passes NULL. 0 once tracked, 1 if not. */
static __always_inline int ct_track(struct bpf_sock_ops *skops, struct bpf_sock *sk, struct sock *ks,
				     struct sock_state *state, struct accel_stats *st, struct ct_entry *e)
{
	__u32 side = state->side & 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	__u64 cgroup_id = sock_cgroup_id(ks);
	__u32 cb;
	long err;

	/* The first end creates the entry, already holding its own side, the
	 * second joins it. */
	if (!e) {
		struct ct_entry fresh = {};

		fresh.established_ns = bpf_ktime_get_ns();
		ct_set_side(&fresh, side, cookie, cgroup_id, sk);
		if (state->flags & SOCK_F_NO_INGRESS)
			fresh.off = 1U << (side ^ 1);
		err = bpf_map_update_elem(&sa_conntrack, &state->ct_key, &fresh, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			__sync_fetch_and_add(&st->ct_full, 1);
			return 1;
		}
		if (!err) {
			__sync_fetch_and_add(&st->ct_created, 1);
			gc_wake();
			goto tracked;
		}
		/* The other end created it a moment ago: join. */
		e = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
		if (!e)
			return 1;
	}
	ct_set_side(e, side, cookie, cgroup_id, sk);
	if (state->flags & SOCK_F_NO_INGRESS)
		__sync_fetch_and_or(&e->off, 1U << (side ^ 1));
tracked:
	state->flags |= SOCK_F_TRACKED;
	/* One call for both: the header-option callbacks go off here too
	 * (token_established's job) unless the final ACK still carries the
	 * token (SOCK_F_TOKEN_ACK). */
	cb = skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG;
	if (!(state->flags & SOCK_F_TOKEN_ACK))
		cb &= ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
	bpf_sock_ops_cb_flags_set(skops, cb);
	return 0;
}

/* TCP_CLOSE on a tracked end: the entry goes when its last local end is
 * closed. Only the conntrack entry: the sockhash entry stays until the
 * application closes the socket (unlinking earlier frees unread bytes). */
static __always_inline void ct_close(struct bpf_sock_ops *skops)
{
	struct accel_stats *st = stats();
	struct sock_state *state;
	struct bpf_sock *sk = skops->sk;
	struct ct_entry *e;
	__u32 side, bit, mask, old;
	__u64 cookie;

	if (!sk || !st)
		return;
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0, 0);
	if (!state || !(state->flags & SOCK_F_TRACKED))
		return;
	state->flags &= ~SOCK_F_TRACKED;
	forget_use_mark((__u64)(unsigned long)sk);
	cookie = bpf_get_socket_cookie(skops);
	e = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
	if (!e)
		return;
	side = state->side & 1;
	/* A newer connection may own this key now: only our own entry. */
	if (e->cookie[side] != cookie)
		return;
	bit = 1U << side;
	old = __sync_fetch_and_or(&e->closed, bit);
	mask = (e->cookie[0] ? 1U : 0) | (e->cookie[1] ? 2U : 0);
	if (((old | bit) & mask) != mask)
		return; /* the other local end is still open */
	if (bpf_map_delete_elem(&sa_conntrack, &state->ct_key) == 0)
		__sync_fetch_and_add(&st->closed_direct, 1);
}

#endif
