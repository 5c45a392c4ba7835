/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The bound on a direction's unread redirected bytes: what is queued at
 * a socket's psock, the autotuned bound, and whether a send would exceed
 * it or the receiver has read everything TCP handed it. Separate because
 * the send path and use detection both read the queued bytes, and the
 * bound's tuning is a topic of its own. (backlog.c is the teardown's
 * reader of the same bytes, from user space.) */
#ifndef SOCKACCEL_BACKLOG_H
#define SOCKACCEL_BACKLOG_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"
#include "core.h"
#include "kernel.h"
#include "maps.h"
#include "psock.h"

/* Unread redirected bytes queued at the socket at addr (0 if unknown). */
static __always_inline __u32 psock_queued(__u64 addr)
{
	struct sock *s = (struct sock *)addr;
	unsigned long user_data;

	if (bpf_probe_read_kernel(&user_data, sizeof(user_data), &s->sk_user_data))
		return 0;
	return psock_msg_bytes((struct sk_psock *)(user_data & SK_USER_DATA_PTRMASK));
}

/* How far back the bound's autotuning looks: a receiver may queue what it
 * consumes in this much time, the way TCP grows a receive buffer to what its
 * application reads per round trip (scaled up: a redirect has no round trip,
 * and a reader scheduled out for a tick must not push its sender to TCP). */
#define BACKLOG_TUNE_WINDOW_NS (20 * 1000 * 1000ULL)
/* Samples closer together than this say too little about a reader's pace. */
#define BACKLOG_TUNE_MIN_NS (250 * 1000ULL)
/* The least bound a blocking sender gets, whatever its receiver's
 * net.ipv4.tcp_rmem[2]: the kernel's default for that ceiling (6 MiB). On
 * a host tuned to tiny buffers (tcp_rmem max 16 KiB) a blocking echo
 * server's every answer passed the ceiling and went through TCP, and the
 * ACKs that freed its send buffer woke its next blocking recv into EAGAIN
 * (see backlog_exceeded). */
#define BACKLOG_BLOCKING_FLOOR (6U << 20)

/* Where TCP's receive-buffer autotuning stops for the receiver: its own
 * namespace's net.ipv4.tcp_rmem[2] (the daemon's when that cannot be read). */
static __always_inline __u64 backlog_ceiling(struct accel_config *cfg, struct sock *peer)
{
	struct net *net = NULL;
	int rmem_max = 0;

	if (bpf_probe_read_kernel(&net, sizeof(net), &peer->__sk_common.skc_net.net) || !net ||
	    bpf_probe_read_kernel(&rmem_max, sizeof(rmem_max), &net->ipv4.sysctl_tcp_rmem[2]) || rmem_max <= 0)
		return cfg->rcvbuf_max;
	return (__u32)rmem_max;
}

/* The default bound on one direction's unread redirected bytes, autotuned
 * like TCP's receive buffer: what the receiver consumes in
 * BACKLOG_TUNE_WINDOW_NS at the fastest pace seen, at least its receive
 * buffer (where TCP autotuning starts, or what SO_RCVBUF set) and at most
 * its namespace's net.ipv4.tcp_rmem[2] (where autotuning stops). A slow reader so holds
 * about what TCP would let it hold, and a fast one gets room to keep the
 * sender on the fast path. Sampled only when the backlog is read. */
static __always_inline __u64 backlog_bound(struct ct_entry *e, __u32 dir, struct accel_config *cfg,
					   struct sock *peer, __u64 queued)
{
	int rcvbuf = 0;
	__u64 floor, ceiling, consumed, now, elapsed, want;

	if (bpf_probe_read_kernel(&rcvbuf, sizeof(rcvbuf), &peer->sk_rcvbuf) || rcvbuf <= 0)
		rcvbuf = 0;
	floor = (__u32)rcvbuf;
	ceiling = backlog_ceiling(cfg, peer);
	if (ceiling < floor)
		ceiling = floor;

	consumed = e->bytes[dir] - queued;
	now = bpf_ktime_get_ns();
	elapsed = now - e->tune_ns[dir];
	if (!e->tune_ns[dir] || consumed < e->tune_consumed[dir]) {
		e->tune_ns[dir] = now;
		e->tune_consumed[dir] = consumed;
		e->bound[dir] = floor;
	} else if (elapsed >= BACKLOG_TUNE_MIN_NS) {
		/* Like TCP's receive buffer, the bound only grows: a reader
		 * that once kept pace may do so again. */
		want = (consumed - e->tune_consumed[dir]) * BACKLOG_TUNE_WINDOW_NS / elapsed;
		if (want > e->bound[dir])
			e->bound[dir] = want > ceiling ? ceiling : want;
		e->tune_ns[dir] = now;
		e->tune_consumed[dir] = consumed;
	}
	if (e->bound[dir] < floor)
		return floor;
	return e->bound[dir] > ceiling ? ceiling : e->bound[dir];
}

/* Whether queueing size more bytes at the receiver would exceed the bound.
 * The receiver's unread redirected bytes are its psock's msg_tot_len, the
 * kernel's own accounting, read through BTF. A receiver holding nothing
 * takes one message whatever its size, as TCP takes one write into an
 * empty send buffer.
 *
 * Those reads cost more than the rest of a redirect, so they happen only when
 * the answer could be yes: what the receiver holds now is at most what it
 * held at the last reading plus what was redirected since (only this
 * direction's sender queues there), and until bytes[dir] passes
 * backlog_clear[dir] that sum stays within the bound. A receiver that keeps
 * up is read about once per bound's worth of bytes. Two ways past the bound,
 * both small: threads sending on one socket at once (the kernel enqueues
 * after the verdict, outside the sender's lock, so a reading can miss one
 * message per such thread), and a bound lowered since the reading (a smaller
 * receive buffer, or a restart with a smaller --backlog-bytes), which holds
 * from the next reading on. */
static __always_inline int backlog_exceeded(struct bpf_sock *sk, struct ct_entry *e, __u32 dir,
					    struct accel_config *cfg, __u64 size)
{
	struct sock *peer = (struct sock *)e->sk[dir ^ 1];
	__u64 bound, queued;

	if (!peer)
		return 0;
	if (e->bytes[dir] + size <= e->backlog_clear[dir])
		return 0;
	queued = psock_queued(e->sk[dir ^ 1]);
	bound = cfg->backlog_bytes;
	if (!bound && file_blocking(sk)) {
		/* Past the bound this socket's sends go through TCP, and
		 * TCP's send-buffer wake-ups end a blocking recv on this same
		 * socket with EAGAIN (tcp_bpf_recvmsg waits once). A blocking
		 * socket's sends keep the widest bound, where TCP's own
		 * autotuning stops but never below the kernel's default for
		 * it, so that this stays rare on hosts tuned to small buffers
		 * too. */
		bound = backlog_ceiling(cfg, peer);
		if (bound < BACKLOG_BLOCKING_FLOOR)
			bound = BACKLOG_BLOCKING_FLOOR;
	} else if (!bound)
		bound = backlog_bound(e, dir, cfg, peer, queued);
	if (queued && queued + size > bound)
		return 1;
	/* Written by this direction's sender only, under its socket lock. */
	e->backlog_clear[dir] = e->bytes[dir] + (bound > queued ? bound - queued : 0);
	return 0;
}

/* Whether the receiving application has read every byte this socket handed
 * to TCP: the receiver's copied_seq has reached our write_seq (both count
 * only TCP-path bytes, in this direction's sequence space). */
static __always_inline int tcp_bytes_all_read(struct bpf_sock *sk, struct ct_entry *e, __u32 dir)
{
	struct tcp_sock *me = bpf_skc_to_tcp_sock(sk);
	struct tcp_sock *peer = (struct tcp_sock *)e->sk[dir ^ 1];
	__u32 copied = 0;

	if (!me || !peer)
		return 0;
	if (bpf_probe_read_kernel(&copied, sizeof(copied), &peer->copied_seq))
		return 0;
	return copied == me->write_seq;
}

#endif
