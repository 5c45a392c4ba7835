//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* sockaccel: same-host TCP short-circuit.
 *
 * sock_ops (on the target cgroup) puts each established TCP socket in a
 * SOCKHASH under a key both ends of the connection agree on; sk_msg (on that
 * SOCKHASH) moves each sendmsg straight into the peer's receive queue when the
 * peer is in the map too, and otherwise leaves it to TCP. Nothing here ever
 * fails a send or removes a socket from the SOCKHASH: the kernel unlinks a
 * socket when its application closes it, and unlinking any earlier would free
 * redirected bytes the application has not read yet. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>


#include "accel.h"
#include "core.h"
#include "psock.h"
#include "kernel.h"
#include "maps.h"
#include "key.h"
#include "scope.h"
#include "backlog.h"
#include "usemarks.h"
#include "conntrack.h"
#include "token.h"

char __license[] SEC("license") = "Dual MIT/GPL";

/* Keep the flag enums in BTF so bpf2go emits them for the Go side. */
const enum config_flags *unused_config_flags __attribute__((unused));
const enum sock_flags *unused_sock_flags __attribute__((unused));
const enum ct_side *unused_ct_side __attribute__((unused));
const enum use_reason *unused_use_reason __attribute__((unused));
const struct use_event *unused_use_event __attribute__((unused));
const enum learned_end *unused_learned_end __attribute__((unused));
const struct lonely_event *unused_lonely_event __attribute__((unused));

/* A listener in scope answers a SYN: remember the connection, as its client
 * will see it, so that the client inserts itself only if its server is a
 * local socket in scope (see track_established). Runs before the SYN-ACK
 * goes out, so before the client's established callback. Not for a server
 * end that the exclusions will keep out of the sockhash: its client would
 * be a lonely end from its first instant, and a blocking recv it starts
 * before anything takes it out again waits in tcp_bpf_recvmsg, where the
 * write-space wake-ups of its own TCP sends end it with EAGAIN. */
static __always_inline void note_server(struct bpf_sock_ops *skops)
{
	struct accel_config *cfg = config();
	struct sock_key server = {}, client = {};
	__u32 family = skops->family;
	/* Until its SYN-ACK says otherwise (token_mark_echo). */
	__u32 one = TOKEN_SERVER_LEGACY;

	if (!cfg || (cfg->flags & CONFIG_F_NO_NEW) || (family != AF_INET && family != AF_INET6))
		return;
	skops_tuple(skops, family, &server);
	key_mirror(&client, &server);
	if (request_excluded(skops, cfg->flags, &server)) {
		/* An earlier answer to the same tuple (a retransmitted SYN
		 * answered before a reload) must not speak for this one. */
		bpf_map_delete_elem(&sa_servers, &client);
		return;
	}
	bpf_map_update_elem(&sa_servers, &client, &one, BPF_ANY);
}

/* Puts an established socket in the sockhash if it may be, and says
 * whether an accepted end was refused for a reason that can leave a client
 * already in the sockhash waiting for it (see drop_lonely_client): 1 then,
 * 0 when it was inserted or its client cannot be in the sockhash. */
static __always_inline int track_established(struct bpf_sock_ops *skops)
{
	struct accel_stats *st = stats();
	struct accel_config *cfg = config();
	struct ct_entry *client = NULL;
	struct sock_state *state;
	struct sock_key key = {};
	__u32 family = skops->family;
	struct bpf_sock *sk;
	struct sock *ks;
	__u32 flags;
	long err;
	int miss;

	if (!st || !cfg)
		return 0;
	flags = cfg->flags;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__sync_fetch_and_add(&st->established, 1);

	if (flags & CONFIG_F_NO_NEW) {
		__sync_fetch_and_add(&st->disabled, 1);
		return 1;
	}
	if ((flags & CONFIG_F_CONSERVATIVE) && skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    file_blocking(skops->sk)) {
		__sync_fetch_and_add(&st->blocking, 1);
		return 0;
	}
	/* Bytes this socket sent before establishment (TCP Fast Open) went
	 * through TCP outside our ordering rule and shift the sequence number
	 * the key is built from. */
	if (skops->data_segs_out) {
		__sync_fetch_and_add(&st->early_data, 1);
		return 1;
	}

	skops_tuple(skops, family, &key);

	if ((flags & CONFIG_F_EXCL_PORTS) &&
	    (port_excluded((__u16)skops->local_port) || port_excluded(bpf_ntohs(key.remote_port)))) {
		__sync_fetch_and_add(&st->excluded_port, 1);
		return 1;
	}
	if ((flags & CONFIG_F_EXCL_CIDRS) && (addr_excluded(key.local_ip) || addr_excluded(key.remote_ip))) {
		__sync_fetch_and_add(&st->excluded_cidr, 1);
		return 1;
	}
	/* Per socket: an end in an excluded subtree stays out of the map, so
	 * its peer finds nothing to redirect to either. */
	if ((flags & CONFIG_F_EXCL_CGROUPS) && skops->sk && cgroup_excluded(kernel_sock(skops->sk))) {
		__sync_fetch_and_add(&st->excluded_cgroup, 1);
		return 1;
	}
	if ((flags & CONFIG_F_LEARNED) && skops->sk &&
	    learned_excluded(sock_cgroup_id(kernel_sock(skops->sk)), (__u16)skops->local_port,
			     bpf_ntohs(key.remote_port))) {
		__sync_fetch_and_add(&st->excluded_learned, 1);
		return 1;
	}

	/* Having sent nothing yet, snd_nxt is our ISN + 1. The peer may
	 * already have sent data (its first segment can complete the
	 * handshake), so its ISN is rcv_nxt less what we received, less 1. */
	key.local_isn = skops->snd_nxt - 1;
	key.remote_isn = skops->rcv_nxt - (__u32)skops->bytes_received - 1;

	sk = skops->sk;
	if (!sk) {
		__sync_fetch_and_add(&st->storage_errors, 1);
		return 1;
	}
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0,
				   BPF_SK_STORAGE_GET_F_CREATE);
	if (!state) {
		__sync_fetch_and_add(&st->storage_errors, 1);
		return 1;
	}
	/* The kernel refuses a socket with a ULP in a sockhash (an MPTCP
	 * subflow has one from its start): such a connection simply stays
	 * on TCP, counted as what it is rather than as an insert error. */
	ks = kernel_sock(sk);
	if (ks && ((struct tcp_sock *)ks)->inet_conn.icsk_ulp_ops) {
		__sync_fetch_and_add(&st->ulp, 1);
		return 1;
	}
	/* A socket in repair mode chose its own sequence numbers, so its key
	 * could be another connection's: it is never paired. (The setsockopt
	 * hook marks it too; this catches one put in repair mode before the
	 * daemon attached.) */
	if (ks && CORE_READ_BITFIELD((struct tcp_sock *)ks, repair)) {
		__sync_fetch_and_add(&st->repair, 1);
		return 1;
	}
	/* Keep what setsockopt said before establishment. */
	state->flags &= SOCK_F_NO_INGRESS | SOCK_F_NO_ACCEL | SOCK_F_TCP_PATH | SOCK_F_REPAIR | SOCK_F_TOKEN |
			SOCK_F_TOKEN_NO_ROOM;
	if (state->flags & SOCK_F_REPAIR) {
		__sync_fetch_and_add(&st->repair, 1);
		return 1;
	}
	if (state->flags & SOCK_F_NO_ACCEL) {
		__sync_fetch_and_add(&st->off_setsockopt, 1);
		return 1;
	}
	/* Without the pairing token the key could be someone else's. */
	miss = token_fold(skops, state, &key);
	if (miss == TOKEN_ABSENT) {
		/* Its client is elsewhere or not in scope (it would have sent
		 * one), or the token was stripped: never a paired client. */
		__sync_fetch_and_add(&st->no_peer, 1);
		return 0;
	}
	if (miss) {
		/* A client: not paired either way; counted as no_peer when no
		 * listener in scope answered it at all (consuming the record
		 * as below), by the token's fate when one did. */
		struct sock_key tuple = key;

		tuple.local_isn = 0;
		tuple.remote_isn = 0;
		if (bpf_map_delete_elem(&sa_servers, &tuple))
			__sync_fetch_and_add(&st->no_peer, 1);
		else if (miss == TOKEN_NO_ROOM)
			__sync_fetch_and_add(&st->token_no_room, 1);
		else
			__sync_fetch_and_add(&st->token_unconfirmed, 1);
		return 0;
	}
	/* SO_RCVLOWAT is inherited from the listener; poll on the psock
	 * queue ignores it, so nothing may be redirected into this socket. */
	if (ks && ks->sk_rcvlowat > 1 && !(state->flags & SOCK_F_NO_INGRESS)) {
		state->flags |= SOCK_F_NO_INGRESS;
		__sync_fetch_and_add(&st->off_setsockopt, 1);
	}
	key_mirror(&state->peer, &key);
	/* The conntrack key is the client end's key, known to both ends. */
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		state->side = CT_SIDE_ACTIVE;
		state->ct_key = key;
	} else {
		state->side = CT_SIDE_PASSIVE;
		state->ct_key = state->peer;
	}

	/* An accepted end joins only a client that is in the sockhash: that
	 * client established (and entered conntrack) before it sent the ACK
	 * that establishes us, so without it now we would be a lonely end,
	 * sending everything through TCP while receiving through
	 * tcp_bpf_recvmsg, whose blocking reader gets EAGAIN from the
	 * write-space wake-ups of those sends. */
	if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && !(flags & CONFIG_F_NO_CONNTRACK)) {
		client = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
		if (!client || !client->cookie[CT_SIDE_ACTIVE]) {
			__sync_fetch_and_add(&st->no_peer, 1);
			return 0;
		}
	}

	/* A client joins only if a listener in scope answered its SYN on this
	 * host (note_server): otherwise its server never joins, and it would
	 * be a lonely end from the start. The record is consumed here. */
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		struct sock_key tuple = key;

		tuple.local_isn = 0;
		tuple.remote_isn = 0;
		if (bpf_map_delete_elem(&sa_servers, &tuple)) {
			__sync_fetch_and_add(&st->no_peer, 1);
			return 0;
		}
	}

	err = bpf_sock_hash_update(skops, &sa_sockhash, &key, BPF_NOEXIST);
	if (err == -E2BIG) {
		__sync_fetch_and_add(&st->map_full, 1);
		return 1;
	}
	if (err) {
		__sync_fetch_and_add(&st->insert_errors, 1);
		return 1;
	}
	__sync_fetch_and_add(&st->inserted, 1);
	if ((flags & CONFIG_F_NO_CONNTRACK) || !ct_track(skops, sk, ks, state, st, client))
		return 0;
	/* Not tracked (conntrack full): an accepted end joins only a client
	 * it finds in conntrack, so this client would be a lonely end that
	 * sk_msg, finding no entry, never reports. Nothing can have been
	 * redirected into it yet: out again, before its application runs. */
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && !bpf_map_delete_elem(&sa_sockhash, &key))
		__sync_fetch_and_add(&st->lonely_direct, 1);
	return 0;
}

/* An accepted end that track_established refused, whose client is in the
 * sockhash and in conntrack without a server end: the client is a lonely
 * end (it will send everything through TCP and still receive through
 * tcp_bpf_recvmsg, which ends a blocking recv with EAGAIN on the
 * write-space wake-ups of those sends). note_server keeps most such
 * clients out to begin with; this catches the rest (a full map, an insert
 * error, an exclusion that changed since the SYN, a listener that could
 * not be read, a ULP, ...). It runs as the client's final ACK arrives,
 * before the client's connect() has returned to its application (unless
 * that ACK was dropped: see README, Lonely ends), so no recv of the client
 * is asleep in tcp_bpf_recvmsg yet, and nothing was redirected into the
 * client (its server never was in the sockhash): removing it loses
 * nothing. sock_ops may delete from a sockhash on every kernel (since
 * 98e948fb60d4 only some program types may). Without the pairing token
 * (stripped, or the final ACK to a listener from before us lost) the
 * client's key is unknown here and sk_msg's report is the fallback. */
static __always_inline void drop_lonely_client(struct bpf_sock_ops *skops)
{
	struct accel_stats *st = stats();
	struct sock_key server = {}, key = {};
	__u32 family = skops->family;
	struct token_opt opt;
	struct ct_entry *e;
	int err;

	if (!st || (family != AF_INET && family != AF_INET6))
		return;
	err = token_load(skops, &opt, BPF_LOAD_HDR_OPT_TCP_SYN);
	if (err == -ENOENT)
		err = token_load(skops, &opt, 0);
	if (err)
		return;
	/* The client's key, as token_fold and track_established build ours,
	 * mirrored: its ISN is ours to receive, ours is its to receive. */
	skops_tuple(skops, family, &server);
	key_mirror(&key, &server);
	key.local_isn = (skops->rcv_nxt - (__u32)skops->bytes_received - 1) ^ opt.tok[0];
	key.remote_isn = (skops->snd_nxt - 1) ^ opt.tok[1];

	/* Only a connection whose server end never joined. The key holds
	 * this handshake's token, which no other connection's key holds, so
	 * the socket under it is the client that created this entry (a
	 * sockhash lookup would tell its cookie, but sock_ops may not release
	 * the socket reference such a lookup takes). */
	e = bpf_map_lookup_elem(&sa_conntrack, &key);
	if (!e || !e->cookie[CT_SIDE_ACTIVE] || e->cookie[CT_SIDE_PASSIVE])
		return;
	if (bpf_map_delete_elem(&sa_sockhash, &key))
		return;
	bpf_map_delete_elem(&sa_conntrack, &key);
	__sync_fetch_and_add(&st->lonely_direct, 1);
}

/* The callbacks sa_sockops acts on. The kernel also runs it for others on
 * every connection whatever flags we set (TIMEOUT_INIT, NEEDS_ECN,
 * RWND_INIT on the connecting socket, ...), and the state callback, which
 * ct_track turns on for TCP_CLOSE, on every state change: those leave
 * before anything is read but the op. */
#define SOCKOPS_HANDLED                                                                                  \
	((1U << BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) | (1U << BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) |      \
	 (1U << BPF_SOCK_OPS_TCP_CONNECT_CB) | (1U << BPF_SOCK_OPS_TCP_LISTEN_CB) |                      \
	 (1U << BPF_SOCK_OPS_HDR_OPT_LEN_CB) | (1U << BPF_SOCK_OPS_WRITE_HDR_OPT_CB) |                   \
	 (1U << BPF_SOCK_OPS_RWND_INIT))

static __always_inline void sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;

	if (op == BPF_SOCK_OPS_STATE_CB) {
		if (skops->args[1] == TCP_CLOSE)
			ct_close(skops);
		return;
	}
	if (op >= 32 || !((1U << op) & SOCKOPS_HANDLED))
		return;
	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		track_established(skops);
		token_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (track_established(skops))
			drop_lonely_client(skops);
		token_established(skops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		token_on_connect(skops);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		token_on_listen(skops);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		token_hdr_len(skops);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		token_hdr_write(skops);
		break;
	case BPF_SOCK_OPS_RWND_INIT:
		/* Also run for a connect()ing socket, a full one. */
		if (!skops->is_fullsock)
			note_server(skops);
		break;
	}
}

#ifdef SA_OPPROF
/* A profiling build (bench/opprof.sh, never make generate): runs and time
 * of every callback, by op, end (local port OPPROF_SERVER_PORT is the
 * server's), request socket and, for the state callback, the state entered.
 * Key: op | server << 4 | request << 5 | state << 6. */
#define OPPROF_SERVER_PORT 20000
struct opprof_val {
	__u64 count;
	__u64 ns;
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct opprof_val);
} sa_opprof SEC(".maps");
#endif

SEC("sockops")
int sa_sockops(struct bpf_sock_ops *skops)
{
#ifdef SA_OPPROF
	__u64 t0 = bpf_ktime_get_ns();
	__u32 op = skops->op, k = op & 15;
	struct opprof_val *v;

	if (skops->local_port == OPPROF_SERVER_PORT)
		k |= 1 << 4;
	if (!skops->is_fullsock)
		k |= 1 << 5;
	if (op == BPF_SOCK_OPS_STATE_CB)
		k |= (skops->args[1] & 15) << 6;
	sockops(skops);
	/* The clock first: the slot's own cache miss is not the callback's. */
	t0 = bpf_ktime_get_ns() - t0;
	v = bpf_map_lookup_elem(&sa_opprof, &k);
	if (v) {
		v->count++;
		v->ns += t0;
	}
#else
	sockops(skops);
#endif
	/* Other sock_ops programs on this or a parent cgroup decide replies;
	 * we have nothing to say about any of them. */
	return 1;
}

/* Takes one direction of a tracked connection off the fast path for good
 * (the setsockopt reasons, not the backlog, which is resumable):
 * its sender sees the bit on its next send. What is already queued stays
 * readable by recvmsg. */
static __always_inline int direction_off(struct ct_entry *e, __u32 dir)
{
	__u32 bit = 1U << (dir & 1);

	return !(__sync_fetch_and_or(&e->off, bit) & bit);
}

/* SO_RCVLOWAT counts only the TCP receive queue: bytes redirected into the
 * socket before the mark was set are read first but never count towards it,
 * so a reader waiting for the mark could wait for bytes that already came
 * (a blocking recv, poll, select: a hang). Once anything was redirected into
 * the socket (some of it may still be queued, or on its way from a send whose
 * verdict came before this call), the mark is applied as 1: reads and poll
 * then return as soon as any byte is there, which a reader must handle
 * anyway, and never wait for bytes that went elsewhere. Before the first
 * redirected byte the mark is applied as asked, and nothing is ever
 * redirected into the socket from then on. */
static __always_inline void lower_rcvlowat(struct bpf_sockopt *ctx, struct bpf_sock *sk, struct sock_state *state,
					   struct ct_entry *e, struct accel_stats *st)
{
	int *val = ctx->optval;
	int received;

	if (ctx->optlen < (int)sizeof(int) || (void *)(val + 1) > ctx->optval_end || *val <= 1)
		return;
	if (e) {
		received = e->bytes[(state->side & 1) ^ 1] != 0;
	} else {
		/* Untracked: with --conntrack=false whether it was put in the
		 * sockhash (nothing counts what reached it); otherwise nothing
		 * is ever redirected into an untracked socket. */
		struct accel_config *cfg = config();

		received = cfg && (cfg->flags & CONFIG_F_NO_CONNTRACK) && state->peer.local_port;
	}
	if (!received)
		return;
	*val = 1;
	__sync_fetch_and_add(&st->rcvlowat_lowered, 1);
}

/* Socket options whose semantics the redirect path does not honour, seen
 * before the first redirected byte when set early. SO_RCVLOWAT (poll
 * ignores it on the redirect queue) keeps redirected bytes out of the
 * socket; a ULP such as kTLS keeps the socket off the fast path. */
SEC("cgroup/setsockopt")
int sa_setsockopt(struct bpf_sockopt *ctx)
{
	struct accel_stats *st = stats();
	struct bpf_sock *sk = ctx->sk;
	struct sock_state *state;
	int level = ctx->level, optname = ctx->optname;
	__u32 mark;
	struct ct_entry *e;

	/* Options larger than a page reach us truncated; optlen 0 tells the
	 * kernel to use the caller's buffer untouched (older kernels fail the
	 * syscall with EFAULT otherwise: iptables-legacy sets huge ones). */
	if (ctx->optlen > PAGE_SIZE)
		ctx->optlen = 0;
	if (!st || !sk || sk->protocol != IPPROTO_TCP)
		return 1;
	if (level == SOL_SOCKET && optname == SO_RCVLOWAT)
		mark = SOCK_F_NO_INGRESS;
	else if (level == SOL_SOCKET && optname == SO_ZEROCOPY)
		/* The redirect path copies and never posts the completion a
		 * MSG_ZEROCOPY sender waits for. */
		mark = SOCK_F_TCP_PATH;
	else if (level == IPPROTO_TCP && optname == TCP_ULP)
		mark = SOCK_F_NO_INGRESS | SOCK_F_NO_ACCEL | SOCK_F_TCP_PATH;
	else if (level == IPPROTO_TCP && optname == TCP_REPAIR)
		/* Whoever sets its own sequence numbers could claim another
		 * connection's key; a live connection being checkpointed
		 * (CRIU) must also leave the fast path. */
		mark = SOCK_F_NO_INGRESS | SOCK_F_NO_ACCEL | SOCK_F_TCP_PATH | SOCK_F_REPAIR;
	else
		return 1;
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state)
		return 1;
	e = NULL;
	if (state->flags & SOCK_F_TRACKED)
		e = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
	if (mark == SOCK_F_NO_INGRESS)
		lower_rcvlowat(ctx, sk, state, e, st);
	if ((state->flags & mark) == mark)
		return 1;
	state->flags |= mark;
	__sync_fetch_and_add(&st->off_setsockopt, 1);
	if (e) {
		int newly = 0;

		if (mark & SOCK_F_NO_INGRESS)
			newly |= direction_off(e, (state->side & 1) ^ 1);
		if (mark & SOCK_F_TCP_PATH)
			newly |= direction_off(e, state->side & 1);
		if (newly && e->off == 3)
			announce_retire(e);
	}
	return 1;
}

/* A client end whose data its server acknowledged while the server end is
 * still missing from the entry is lonely for good: a local server in scope
 * enters conntrack when it establishes, before it acknowledges any data.
 * Tells the daemon once (a full ring buffer: the next send tries again). */
static __always_inline void report_lonely(struct bpf_sock *sk, struct sock_state *state, struct ct_entry *e)
{
	struct tcp_sock *me = bpf_skc_to_tcp_sock(sk);
	struct lonely_event *ev;

	/* (The key's ISN fields carry the pairing token: bytes_acked says it.) */
	if (!me || me->bytes_acked <= 1)
		return; /* nothing acknowledged yet: the server may still join */
	ev = bpf_ringbuf_reserve(&sa_lonely, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->key = state->ct_key;
	ev->_pad = 0;
	ev->cookie = e->cookie[CT_SIDE_ACTIVE];
	bpf_ringbuf_submit(ev, 0);
	state->flags |= SOCK_F_LONELY;
}

SEC("sk_msg")
int sa_redirect(struct sk_msg_md *msg)
{
	struct accel_stats *st = stats();
	struct accel_config *cfg = config();
	struct ct_entry *e = NULL;
	struct sock_state *state;
	struct bpf_sock *sk = msg->sk;
	__u64 size = msg->size;
	__u32 flags, dir;

	if (!st || !sk || !cfg)
		return SK_PASS;
	flags = cfg->flags;

	state = bpf_sk_storage_get(&sa_sock_state, sk, 0, 0);
	if (!state || (flags & CONFIG_F_NO_REDIRECT))
		goto pass;
	dir = state->side & 1;

	if (state->flags & SOCK_F_TRACKED) {
		/* The one lookup beyond what the redirect needs: it carries
		 * the per-direction counters and the backlog bound. */
		e = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
	}
	/* Without its entry (conntrack full) nothing bounds the backlog:
	 * such a connection is not accelerated. */
	if (!e && !(flags & CONFIG_F_NO_CONNTRACK))
		goto pass;
	if (e && !(e->off & (1U << dir))) {
		struct use_gate *gate = use_gate();

		if (gate && gate->unconsumed > 0)
			consume_use_marks(e, st, gate);
	}
	if (e && (e->off & (1U << dir)))
		goto pass; /* the receiver cannot take redirected bytes */
	if (state->flags & SOCK_F_TCP_PATH) {
		/* Bytes of this direction went through TCP. The receiver
		 * reads its redirect queue before its TCP queue, so
		 * redirecting now could overtake them, unless its
		 * application has already read every one of them. */
		if (!e || !tcp_bytes_all_read(sk, e, dir))
			goto pass;
		state->flags &= ~SOCK_F_TCP_PATH;
		__sync_fetch_and_add(&st->resumed, 1);
	}
	if (e && backlog_exceeded(sk, e, dir, cfg, size)) {
		/* Redirected bytes are charged to nobody the sender waits on:
		 * past the bound, hand this direction to TCP's flow control
		 * until the receiver has caught up with it. */
		__sync_fetch_and_add(&st->off_backlog, 1);
		goto pass;
	}

	if (bpf_msg_redirect_hash(msg, &sa_sockhash, &state->peer, BPF_F_INGRESS) == SK_PASS) {
		/* Set once: a store on every message would dirty the line
		 * for nothing. */
		if (!(state->flags & SOCK_F_REDIRECTED))
			state->flags |= SOCK_F_REDIRECTED;
		st->redirected_msgs++;
		st->redirected_bytes += size;
		if (e) {
			/* Each direction is written only by its sender, under
			 * its socket lock. */
			e->msgs[dir]++;
			e->bytes[dir] += size;
		}
		return SK_PASS;
	}
	/* The helper refused: the peer is not in the map (not yet
	 * established, outside scope, or gone). */
	if (state->flags & SOCK_F_REDIRECTED)
		st->redirect_errors++;
pass:
	/* From here on this direction stays on TCP (see SOCK_F_TCP_PATH). */
	if (state && size)
		state->flags |= SOCK_F_TCP_PATH;
	/* No server end: only a client's own entry lacks one. */
	if (e && !e->cookie[CT_SIDE_PASSIVE] && !(state->flags & (SOCK_F_REDIRECTED | SOCK_F_LONELY)))
		report_lonely(sk, state, e);
	st->passed_msgs++;
	st->passed_bytes += size;
	return SK_PASS;
}

/* The record a syscalls:sys_enter_* tracepoint hands to BPF. */
struct syscall_enter {
	__u64 common;
	__s32 nr;
	__u32 _pad;
	__u64 args[6];
};

/* These see, before the kernel acts on them, the calls whose semantics the
 * redirect path does not honour, and mark the socket; the connection's next
 * redirected send takes it off the fast path (consume_use_marks). Each is a
 * syscall tracepoint of its own: unlike a sys_enter hook, other syscalls
 * never run BPF (they still take the kernel's traced-syscall entry path
 * while any syscall tracepoint is enabled). io_uring submissions do not pass
 * here. */
static __always_inline void check_flags(__u64 fd, __u64 flags, int receiving)
{
	__u64 addr;

	if (flags & MSG_OOB) {
		addr = mark_use(fd, USE_OOB);
		if (addr && receiving)
			report_misread(addr, fd, USE_OOB);
	} else if (receiving && (flags & MSG_WAITALL)) {
		mark_use(fd, USE_WAITALL);
	}
}

SEC("tracepoint/syscalls/sys_enter_splice")
int sa_det_splice(struct syscall_enter *ctx)
{
	mark_use(ctx->args[0], USE_SPLICE); /* fd_in */
	return 0;
}

/* sendfile(out_fd, in_fd, ...) with a socket as in_fd reads it through
 * splice_read, like splice. */
SEC("tracepoint/syscalls/sys_enter_sendfile64")
int sa_det_sendfile(struct syscall_enter *ctx)
{
	mark_use(ctx->args[1], USE_SPLICE); /* in_fd */
	return 0;
}

/* recvfrom(fd, buf, len, flags, ...) and recvmmsg(fd, vec, vlen, flags, ...) */
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int sa_det_recv(struct syscall_enter *ctx)
{
	check_flags(ctx->args[0], ctx->args[3], 1);
	return 0;
}

/* recvmsg(fd, msg, flags) */
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int sa_det_recvmsg(struct syscall_enter *ctx)
{
	check_flags(ctx->args[0], ctx->args[2], 1);
	return 0;
}

/* sendto(fd, buf, len, flags, ...) and sendmmsg(fd, vec, vlen, flags) */
SEC("tracepoint/syscalls/sys_enter_sendto")
int sa_det_send(struct syscall_enter *ctx)
{
	check_flags(ctx->args[0], ctx->args[3], 0);
	return 0;
}

/* sendmsg(fd, msg, flags) */
SEC("tracepoint/syscalls/sys_enter_sendmsg")
int sa_det_sendmsg(struct syscall_enter *ctx)
{
	check_flags(ctx->args[0], ctx->args[2], 0);
	return 0;
}

/* ioctl(fd, FIONREAD, ...): attached only on kernels whose FIONREAD leaves
 * redirected bytes out (the daemon's kernel probe). The mark takes the
 * connection off the fast path, so FIONREAD is right again once the bytes
 * redirected before it are read; the daemon learns the service so its next
 * connections stay on TCP from the start. */
SEC("tracepoint/syscalls/sys_enter_ioctl")
int sa_det_ioctl(struct syscall_enter *ctx)
{
	__u64 addr;

	if ((__u32)ctx->args[1] != FIONREAD)
		return 0;
	addr = mark_use(ctx->args[0], USE_FIONREAD);
	if (addr)
		report_misread(addr, ctx->args[0], USE_FIONREAD);
	return 0;
}

/* shutdown(fd, how): SHUT_WR and SHUT_RDWR wake the socket's sleepers
 * (inet_shutdown -> sk_state_change); see report_shutdown_wake. */
SEC("tracepoint/syscalls/sys_enter_shutdown")
int sa_det_shutdown(struct syscall_enter *ctx)
{
	__u32 how = (__u32)ctx->args[1];

	if (how == SHUT_WR || how == SHUT_RDWR)
		report_shutdown_wake(ctx->args[0]);
	return 0;
}
