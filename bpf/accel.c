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

#define AF_INET 2
#define AF_INET6 10
#define E2BIG 7
#define EEXIST 17
#define TCP_CLOSE 7

char __license[] SEC("license") = "Dual MIT/GPL";

/* Just enough of the kernel's types to read a socket's cgroup id; CO-RE
 * relocates the offsets against the running kernel's BTF. */
struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));
struct cgroup_subsys_state {
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));
struct cgroup {
	struct cgroup_subsys_state self; /* first member: a css pointer to it is the cgroup */
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));
struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));
struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));
struct file {
	unsigned int f_flags;
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));
struct sock;
struct socket {
	struct file *file;
	struct sock *sk;
} __attribute__((preserve_access_index));
struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));
struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));
struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));
typedef struct {
	__s64 counter;
} atomic64_t;
struct netns_ipv4 {
	int sysctl_tcp_rmem[3];
} __attribute__((preserve_access_index));
struct net {
	struct netns_ipv4 ipv4;
} __attribute__((preserve_access_index));
typedef struct {
	struct net *net;
} __attribute__((preserve_access_index)) possible_net_t;
struct sock_common {
	possible_net_t skc_net;
	unsigned char skc_state;
	__u16 skc_dport; /* network byte order */
	__u16 skc_num;   /* host byte order */
	atomic64_t skc_cookie; /* 0 until first asked for; sock_ops asked */
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	int sk_rcvbuf;
	int sk_rcvlowat;
	void *sk_user_data;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));
struct inet_connection_sock {
	const void *icsk_ulp_ops; /* set for MPTCP subflows, kTLS, ... */
} __attribute__((preserve_access_index));
struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 write_seq;  /* end of what the application handed to TCP */
	__u32 copied_seq; /* what the application has read from TCP */
	__u8 repair : 1;  /* TCP_REPAIR: sequence numbers set by the caller */
	__u32 snd_una;    /* first byte we sent that is not acknowledged */
	__u64 bytes_acked; /* snd_una - ISN, so 1 once the SYN is acknowledged */
} __attribute__((preserve_access_index));


#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define MSG_OOB 1
#define MSG_WAITALL 0x100
#define PAGE_SIZE 4096
#define O_NONBLOCK 04000
#define SOL_SOCKET 1
#define SO_ZEROCOPY 60
#define SO_RCVLOWAT 18
#define IPPROTO_TCP 6
#define TCP_ULP 31
#define TCP_REPAIR 19
#define FIONREAD 0x541B /* SIOCINQ */

/* Keep the flag enums in BTF so bpf2go emits them for the Go side. */
const enum config_flags *unused_config_flags __attribute__((unused));
const enum sock_flags *unused_sock_flags __attribute__((unused));
const enum ct_side *unused_ct_side __attribute__((unused));
const enum use_reason *unused_use_reason __attribute__((unused));
const struct use_event *unused_use_event __attribute__((unused));
const enum learned_end *unused_learned_end __attribute__((unused));
const struct lonely_event *unused_lonely_event __attribute__((unused));


/* Both ends of every accelerated connection. Sized at load time from
 * --max-conns; pinned so live connections outlive the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 131072);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_sockhash SEC(".maps");

/* Per-socket pairing state; lives and dies with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_sock_state SEC(".maps");

/* Single entry: runtime switches (struct accel_config). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct accel_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_config SEC(".maps");

/* Ports (host byte order) whose connections are never accelerated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_ports SEC(".maps");

/* cgroup v2 ids whose subtrees are never accelerated (--exclude-cgroups). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_cgroups SEC(".maps");

/* Networks whose connections are never accelerated, IPv4-mapped. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_cidrs SEC(".maps");

/* One entry per tracked connection (struct ct_entry), removed by the close
 * callback when its last local end reaches TCP_CLOSE, or by the daemon's GC
 * for closes the kernel never reported. Sized from --max-conns; pinned so
 * restarts keep the history of live connections. Not preallocated: an entry
 * freed while another CPU still holds a pointer to it stays valid memory
 * until RCU says otherwise. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_conntrack SEC(".maps");

/* Single entry: GC hand-shake with the daemon (struct gc_state). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gc_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_gc SEC(".maps");

/* Wakes the daemon's idle GC when conntrack stops being empty, so an idle
 * daemon needs no timer at all. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_gc_wake SEC(".maps");

/* Connections a listener in scope answered the SYN of, keyed by the
 * client's view of the tuple (ISNs 0), until that client establishes. LRU:
 * a record lost to a SYN flood only leaves that connection on TCP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sock_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_servers SEC(".maps");

/* Client ends whose server never joined (struct lonely_event), for the
 * daemon to take out of the sockhash. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_lonely SEC(".maps");

/* Sockets seen using a call the redirect path does not honour (struct
 * use_mark), by struct sock address. LRU: a mark is never worth failing
 * for, and one evicted before it was consumed only leaves that connection
 * as it was. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct use_mark);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_use_marks SEC(".maps");

/* Single entry: struct use_gate. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct use_gate);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_use_gate SEC(".maps");

/* Services the daemon learned to keep on TCP (struct learned_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct learned_key);
	__type(value, struct learned_use);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_learned SEC(".maps");

/* Detector events for the daemon's log (struct use_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_events SEC(".maps");

/* Counters (struct accel_stats), one copy per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct accel_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_stats SEC(".maps");

static __always_inline struct accel_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_stats, &zero);
}

static __always_inline struct accel_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_config, &zero);
}

static __always_inline struct use_gate *use_gate(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_use_gate, &zero);
}


static __always_inline void ipv4_mapped(__u32 dst[4], __u32 addr)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = addr;
}

static __always_inline int port_excluded(__u16 port_host)
{
	return bpf_map_lookup_elem(&sa_excl_ports, &port_host) != NULL;
}

static __always_inline int addr_excluded(const __u32 addr[4])
{
	struct cidr_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	return bpf_map_lookup_elem(&sa_excl_cidrs, &k) != NULL;
}

/* A cgroup's v2 id (its kernfs node's), read through probe reads where the
 * pointer is not one the verifier can follow; 0 if unreadable. */
static __always_inline __u64 cgroup_id_probed(struct cgroup *cg)
{
	struct kernfs_node *kn = NULL;
	__u64 id = 0;

	if (bpf_probe_read_kernel(&kn, sizeof(kn), &cg->kn) || !kn)
		return 0;
	bpf_probe_read_kernel(&id, sizeof(id), &kn->id);
	return id;
}

/* cgroup hierarchies this deep are not walked past (the kernel allows
 * more, nobody nests that far). */
#define MAX_CGROUP_DEPTH 32

/* Whether the socket's cgroup or one of its ancestors is excluded. */
static __always_inline int cgroup_excluded(struct sock *ks)
{
	struct cgroup *cg = NULL;
	__u64 id;
	int i;

	if (!ks || bpf_probe_read_kernel(&cg, sizeof(cg), &ks->sk_cgrp_data.cgroup))
		return 0;
	for (i = 0; i < MAX_CGROUP_DEPTH && cg; i++) {
		id = cgroup_id_probed(cg);
		if (!id)
			return 0;
		if (bpf_map_lookup_elem(&sa_excl_cgroups, &id))
			return 1;
		if (bpf_probe_read_kernel(&cg, sizeof(cg), &cg->self.parent))
			return 0;
	}
	return 0;
}

static __always_inline struct sock *kernel_sock(struct bpf_sock *sk)
{
	return (struct sock *)bpf_skc_to_tcp_sock(sk);
}

static __always_inline int learned_match(__u64 cgroup_id, __u16 port, __u8 end)
{
	struct learned_key k = { .cgroup_id = cgroup_id, .port = port, .end = end };

	return bpf_map_lookup_elem(&sa_learned, &k) != NULL;
}

/* Whether a learned exclusion covers this socket: the service port at this
 * end, in this socket's cgroup or in any (cgroup 0). */
static __always_inline int learned_excluded(__u64 cgroup_id, __u16 local_port, __u16 remote_port)
{
	return learned_match(cgroup_id, local_port, LEARNED_SERVER) ||
	       learned_match(cgroup_id, remote_port, LEARNED_CLIENT) ||
	       learned_match(0, local_port, LEARNED_SERVER) || learned_match(0, remote_port, LEARNED_CLIENT);
}

/* The cgroup v2 id the socket is charged to (its creator's, or its
 * listener's for accepted sockets); sock_ops has no helper for it. */
static __always_inline __u64 sock_cgroup_id(struct sock *s)
{
	return s ? s->sk_cgrp_data.cgroup->kn->id : 0;
}

/* sock_cgroup_id for a socket known only by address (tracepoints). */
static __always_inline __u64 sock_cgroup_id_probed(struct sock *s)
{
	struct cgroup *cg = NULL;

	if (bpf_probe_read_kernel(&cg, sizeof(cg), &s->sk_cgrp_data.cgroup) || !cg)
		return 0;
	return cgroup_id_probed(cg);
}

/* Whether the socket's file is in blocking mode. Only the connect()ing end
 * has a file at establishment; an accepted socket gets one later. */
static __always_inline int file_blocking(struct bpf_sock *sk)
{
	struct sock *ks;
	struct socket *sock;
	struct file *file;

	if (!sk)
		return 0;
	ks = kernel_sock(sk);
	if (!ks)
		return 0;
	sock = ks->sk_socket;
	if (!sock)
		return 0;
	file = sock->file;
	if (!file)
		return 0;
	return !(file->f_flags & O_NONBLOCK);
}

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
 * state callback that removes the entry at TCP_CLOSE. */
static __always_inline void ct_track(struct bpf_sock_ops *skops, struct bpf_sock *sk, struct sock *ks,
				     struct sock_state *state, struct accel_stats *st)
{
	__u32 side = state->side & 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	__u64 cgroup_id = sock_cgroup_id(ks);
	struct ct_entry *e;
	long err;

	/* The first end creates the entry, already holding its own side, the
	 * second joins it. */
	e = state->side == CT_SIDE_ACTIVE ? NULL : bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
	if (!e) {
		struct ct_entry fresh = {};

		fresh.established_ns = bpf_ktime_get_ns();
		ct_set_side(&fresh, side, cookie, cgroup_id, sk);
		if (state->flags & SOCK_F_NO_INGRESS)
			fresh.off = 1U << (side ^ 1);
		err = bpf_map_update_elem(&sa_conntrack, &state->ct_key, &fresh, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			__sync_fetch_and_add(&st->ct_full, 1);
			return;
		}
		if (!err) {
			__sync_fetch_and_add(&st->ct_created, 1);
			gc_wake();
			goto tracked;
		}
		/* The other end created it a moment ago: join. */
		e = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);
		if (!e)
			return;
	}
	ct_set_side(e, side, cookie, cgroup_id, sk);
	if (state->flags & SOCK_F_NO_INGRESS)
		__sync_fetch_and_or(&e->off, 1U << (side ^ 1));
tracked:
	state->flags |= SOCK_F_TRACKED;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A closed socket's address will be reused: its mark must go with it. */
static __always_inline void forget_use_mark(__u64 addr)
{
	struct use_gate *gate = use_gate();
	struct use_mark *m;

	if (!gate || gate->marks <= 0)
		return;
	m = bpf_map_lookup_elem(&sa_use_marks, &addr);
	if (!m)
		return;
	/* Whoever flips consumed settles the unconsumed count. */
	if (__sync_val_compare_and_swap(&m->consumed, 0, 1) == 0)
		__sync_fetch_and_add(&gate->unconsumed, -1);
	if (bpf_map_delete_elem(&sa_use_marks, &addr) == 0)
		__sync_fetch_and_add(&gate->marks, -1);
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

/* The addresses and ports of the socket skops is about (a request socket's
 * too: they live in sock_common), in sock_key form; ISNs are left alone. */
static __always_inline void skops_tuple(struct bpf_sock_ops *skops, __u32 family, struct sock_key *key)
{
	if (family == AF_INET) {
		/* Separate loads: the verifier rejects a ctx pointer the
		 * compiler offsets once and shares between two reads. */
		__u32 local4 = skops->local_ip4;
		__u32 remote4 = skops->remote_ip4;

		barrier_var(local4);
		barrier_var(remote4);
		ipv4_mapped(key->local_ip, local4);
		ipv4_mapped(key->remote_ip, remote4);
	} else {
		key->local_ip[0] = skops->local_ip6[0];
		key->local_ip[1] = skops->local_ip6[1];
		key->local_ip[2] = skops->local_ip6[2];
		key->local_ip[3] = skops->local_ip6[3];
		key->remote_ip[0] = skops->remote_ip6[0];
		key->remote_ip[1] = skops->remote_ip6[1];
		key->remote_ip[2] = skops->remote_ip6[2];
		key->remote_ip[3] = skops->remote_ip6[3];
	}
	/* local_port is host order; remote_port carries the network-order port
	 * in its upper 16 bits. */
	key->local_port = bpf_htons((__u16)skops->local_port);
	key->remote_port = (__u16)(skops->remote_port >> 16);
}

#include "token.h"

/* A listener in scope answers a SYN: remember the connection, as its client
 * will see it, so that the client inserts itself only if its server is a
 * local socket in scope (see track_established). Runs before the SYN-ACK
 * goes out, so before the client's established callback. */
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
	__builtin_memcpy(client.local_ip, server.remote_ip, sizeof(client.local_ip));
	__builtin_memcpy(client.remote_ip, server.local_ip, sizeof(client.remote_ip));
	client.local_isn = 0;
	client.remote_isn = 0;
	client.local_port = server.remote_port;
	client.remote_port = server.local_port;
	bpf_map_update_elem(&sa_servers, &client, &one, BPF_ANY);
}

static __always_inline void track_established(struct bpf_sock_ops *skops)
{
	struct accel_stats *st = stats();
	struct accel_config *cfg = config();
	struct sock_state *state;
	struct sock_key key = {};
	__u32 family = skops->family;
	struct bpf_sock *sk;
	struct sock *ks;
	__u32 flags;
	long err;
	int miss;

	if (!st || !cfg)
		return;
	flags = cfg->flags;
	if (family != AF_INET && family != AF_INET6)
		return;
	__sync_fetch_and_add(&st->established, 1);

	if (flags & CONFIG_F_NO_NEW) {
		__sync_fetch_and_add(&st->disabled, 1);
		return;
	}
	if ((flags & CONFIG_F_CONSERVATIVE) && skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    file_blocking(skops->sk)) {
		__sync_fetch_and_add(&st->blocking, 1);
		return;
	}
	/* Bytes this socket sent before establishment (TCP Fast Open) went
	 * through TCP outside our ordering rule and shift the sequence number
	 * the key is built from. */
	if (skops->data_segs_out) {
		__sync_fetch_and_add(&st->early_data, 1);
		return;
	}

	skops_tuple(skops, family, &key);

	if ((flags & CONFIG_F_EXCL_PORTS) &&
	    (port_excluded((__u16)skops->local_port) || port_excluded(bpf_ntohs(key.remote_port)))) {
		__sync_fetch_and_add(&st->excluded_port, 1);
		return;
	}
	if ((flags & CONFIG_F_EXCL_CIDRS) && (addr_excluded(key.local_ip) || addr_excluded(key.remote_ip))) {
		__sync_fetch_and_add(&st->excluded_cidr, 1);
		return;
	}
	/* Per socket: an end in an excluded subtree stays out of the map, so
	 * its peer finds nothing to redirect to either. */
	if ((flags & CONFIG_F_EXCL_CGROUPS) && skops->sk && cgroup_excluded(kernel_sock(skops->sk))) {
		__sync_fetch_and_add(&st->excluded_cgroup, 1);
		return;
	}
	if ((flags & CONFIG_F_LEARNED) && skops->sk &&
	    learned_excluded(sock_cgroup_id(kernel_sock(skops->sk)), (__u16)skops->local_port,
			     bpf_ntohs(key.remote_port))) {
		__sync_fetch_and_add(&st->excluded_learned, 1);
		return;
	}

	/* Having sent nothing yet, snd_nxt is our ISN + 1. The peer may
	 * already have sent data (its first segment can complete the
	 * handshake), so its ISN is rcv_nxt less what we received, less 1. */
	key.local_isn = skops->snd_nxt - 1;
	key.remote_isn = skops->rcv_nxt - (__u32)skops->bytes_received - 1;

	sk = skops->sk;
	if (!sk) {
		__sync_fetch_and_add(&st->storage_errors, 1);
		return;
	}
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0,
				   BPF_SK_STORAGE_GET_F_CREATE);
	if (!state) {
		__sync_fetch_and_add(&st->storage_errors, 1);
		return;
	}
	/* The kernel refuses a socket with a ULP in a sockhash (an MPTCP
	 * subflow has one from its start): such a connection simply stays
	 * on TCP, counted as what it is rather than as an insert error. */
	ks = kernel_sock(sk);
	if (ks && ((struct tcp_sock *)ks)->inet_conn.icsk_ulp_ops) {
		__sync_fetch_and_add(&st->ulp, 1);
		return;
	}
	/* A socket in repair mode chose its own sequence numbers, so its key
	 * could be another connection's: it is never paired. (The setsockopt
	 * hook marks it too; this catches one put in repair mode before the
	 * daemon attached.) */
	if (ks && CORE_READ_BITFIELD((struct tcp_sock *)ks, repair)) {
		__sync_fetch_and_add(&st->repair, 1);
		return;
	}
	/* Keep what setsockopt said before establishment. */
	state->flags &= SOCK_F_NO_INGRESS | SOCK_F_NO_ACCEL | SOCK_F_TCP_PATH | SOCK_F_REPAIR | SOCK_F_TOKEN |
			SOCK_F_TOKEN_NO_ROOM;
	if (state->flags & SOCK_F_REPAIR) {
		__sync_fetch_and_add(&st->repair, 1);
		return;
	}
	if (state->flags & SOCK_F_NO_ACCEL) {
		__sync_fetch_and_add(&st->off_setsockopt, 1);
		return;
	}
	/* Without the pairing token the key could be someone else's. */
	miss = token_fold(skops, state, &key);
	if (miss == TOKEN_ABSENT) {
		/* Its client is elsewhere or not in scope (it would have sent
		 * one), or the token was stripped: never a paired client. */
		__sync_fetch_and_add(&st->no_peer, 1);
		return;
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
		return;
	}
	/* SO_RCVLOWAT is inherited from the listener; poll on the psock
	 * queue ignores it, so nothing may be redirected into this socket. */
	if (ks && ks->sk_rcvlowat > 1 && !(state->flags & SOCK_F_NO_INGRESS)) {
		state->flags |= SOCK_F_NO_INGRESS;
		__sync_fetch_and_add(&st->off_setsockopt, 1);
	}
	__builtin_memcpy(state->peer.local_ip, key.remote_ip, sizeof(key.remote_ip));
	__builtin_memcpy(state->peer.remote_ip, key.local_ip, sizeof(key.local_ip));
	state->peer.local_isn = key.remote_isn;
	state->peer.remote_isn = key.local_isn;
	state->peer.local_port = key.remote_port;
	state->peer.remote_port = key.local_port;
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
		struct ct_entry *client = bpf_map_lookup_elem(&sa_conntrack, &state->ct_key);

		if (!client || !client->cookie[CT_SIDE_ACTIVE]) {
			__sync_fetch_and_add(&st->no_peer, 1);
			return;
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
			return;
		}
	}

	err = bpf_sock_hash_update(skops, &sa_sockhash, &key, BPF_NOEXIST);
	if (err == -E2BIG) {
		__sync_fetch_and_add(&st->map_full, 1);
		return;
	}
	if (err) {
		__sync_fetch_and_add(&st->insert_errors, 1);
		return;
	}
	__sync_fetch_and_add(&st->inserted, 1);
	if (!(flags & CONFIG_F_NO_CONNTRACK))
		ct_track(skops, sk, ks, state, st);
}

SEC("sockops")
int sa_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		track_established(skops);
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
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			ct_close(skops);
		break;
	case BPF_SOCK_OPS_RWND_INIT:
		/* Also run for a connect()ing socket, a full one. */
		if (!skops->is_fullsock)
			note_server(skops);
		break;
	}
	/* Other sock_ops programs on this or a parent cgroup decide replies;
	 * we have nothing to say about any of them. */
	return 1;
}


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
	if (!bound && file_blocking(sk))
		/* Past the bound this socket's sends go through TCP, and
		 * TCP's send-buffer wake-ups end a blocking recv on this same
		 * socket with EAGAIN (tcp_bpf_recvmsg waits once). A blocking
		 * socket's sends keep the widest bound, where TCP's own
		 * autotuning stops, so that this stays rare. */
		bound = backlog_ceiling(cfg, peer);
	else if (!bound)
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

/* Tells the daemon that this connection just left the fast path in both
 * directions for good: its sockets still receive through tcp_bpf_recvmsg,
 * which ends a blocking reader's wait with EAGAIN on wake-ups that TCP
 * sends cause, and serves FIONREAD, SO_RCVLOWAT and urgent data from the
 * redirect queue. Out of the sockhash, they are plain TCP sockets again. */
static __always_inline void announce_retire(struct ct_entry *e)
{
	struct use_event *ev = bpf_ringbuf_reserve(&sa_events, sizeof(*ev), 0);

	if (!ev)
		return; /* the connection stays as it is: on TCP, in the map */
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->cookie = e->cookie[0] ? e->cookie[0] : e->cookie[1];
	ev->reason = USE_RETIRE;
	ev->fd = -1;
	bpf_ringbuf_submit(ev, 0);
}

/* Takes a connection off the fast path for good where one of its ends was
 * seen using a call the redirect path does not honour.
 *
 * Only the direction into that end goes to TCP (its reads, splices and
 * FIONREAD then see a TCP receive queue); its own sends stay redirected.
 * That matters to blocking applications: every socket in a sockhash
 * receives through tcp_bpf_recvmsg, which returns EAGAIN to a blocking
 * reader woken with nothing queued, and a socket sending through TCP wakes
 * its own readers whenever ACKs free send-buffer space. An end that keeps
 * redirecting never sends through TCP. Urgent data goes both ways to TCP
 * (a send with MSG_OOB needs TCP as much as a receive), and a connection
 * off both ways is handed back to TCP completely (announce_retire).
 *
 * Falling back is safe for recvmsg, which drains the redirect queue before
 * the TCP queue. splice reads only the TCP queue, so while the splicing end
 * still has redirected bytes unread, this keeps redirecting: bytes sent
 * through TCP now would be spliced ahead of them. */
static __always_inline void consume_use_marks(struct ct_entry *e, struct accel_stats *st, struct use_gate *gate)
{
	struct use_mark *m;
	__u32 bits, was;
	__u64 addr;
	int i;

	for (i = 0; i < 2; i++) {
		addr = e->sk[i];
		/* A closed end's address may already belong to a new socket,
		 * whose mark is not ours to take. */
		if (!addr || (e->closed & (1U << i)))
			continue;
		m = bpf_map_lookup_elem(&sa_use_marks, &addr);
		if (!m || m->consumed)
			continue;
		if (m->reasons == USE_SPLICE && psock_queued(addr))
			continue;
		if (__sync_val_compare_and_swap(&m->consumed, 0, 1) != 0)
			continue;
		__sync_fetch_and_add(&gate->unconsumed, -1);
		/* Direction d is the one sent by side d: into side i is i ^ 1. */
		bits = (m->reasons & USE_OOB) ? 3 : 1U << (i ^ 1);
		was = __sync_fetch_and_or(&e->off, bits);
		if ((was & bits) == bits)
			continue; /* already off for another reason */
		if ((was | bits) == 3)
			announce_retire(e);
		if (m->reasons & USE_SPLICE)
			__sync_fetch_and_add(&st->off_splice, 1);
		if (m->reasons & USE_WAITALL)
			__sync_fetch_and_add(&st->off_waitall, 1);
		if (m->reasons & USE_OOB)
			__sync_fetch_and_add(&st->off_oob, 1);
		if (m->reasons & USE_FIONREAD)
			__sync_fetch_and_add(&st->off_fionread, 1);
	}
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

/* Maps a psock's link list is walked for at most. */
#define PSOCK_LINKS_MAX 4

/* Whether a psock belongs to our sockhash. The detectors see every socket
 * on the host that has a psock, other sockmap users' (another sockaccel,
 * Cilium) too; a mark on one of theirs would never be cleared by our close
 * callback and could later match one of our sockets allocated at the same
 * address, taking it off the fast path for nothing. */
static __always_inline int psock_in_sockhash(struct sk_psock *psock)
{
	struct accel_config *cfg = config();
	struct list_head *head = &psock->link, *pos = NULL;
	struct sk_psock_link *l;
	struct bpf_map *map;
	__u32 id;
	int i;

	if (!cfg || !cfg->sockhash_id)
		return 1;
	if (bpf_probe_read_kernel(&pos, sizeof(pos), &head->next))
		return 0;
	for (i = 0; i < PSOCK_LINKS_MAX; i++) {
		if (!pos || pos == head)
			return 0;
		l = CORE_CONTAINER_OF(pos, struct sk_psock_link, list);
		map = NULL;
		id = 0;
		if (bpf_probe_read_kernel(&map, sizeof(map), &l->map) || !map ||
		    bpf_probe_read_kernel(&id, sizeof(id), &map->id))
			return 0;
		if (id == cfg->sockhash_id)
			return 1;
		if (bpf_probe_read_kernel(&pos, sizeof(pos), &pos->next))
			return 0;
	}
	return 0;
}

/* The struct sock behind the calling task's fd, if the fd is a socket
 * in some SOCKHASH or SOCKMAP (its sk_user_data is a psock). Read with
 * bpf_probe_read_kernel under the tracepoint's RCU read lock: a racing
 * close() yields no socket or a wrong one at worst, and a wrong mark only
 * ever costs a connection its acceleration. */
static __always_inline __u64 psock_of_fd(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = NULL;
	struct fdtable *fdt = NULL;
	struct file **fds = NULL;
	struct file *file = NULL;
	struct inode *inode = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;
	unsigned long user_data = 0;
	unsigned int max_fds = 0;
	unsigned short mode = 0;
	unsigned char state = 0;

	if (bpf_probe_read_kernel(&files, sizeof(files), &task->files) || !files)
		return 0;
	if (bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt) || !fdt)
		return 0;
	if (bpf_probe_read_kernel(&max_fds, sizeof(max_fds), &fdt->max_fds) || fd >= max_fds)
		return 0;
	if (bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd) || !fds)
		return 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if (bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode) || !inode)
		return 0;
	if (bpf_probe_read_kernel(&mode, sizeof(mode), &inode->i_mode) || (mode & S_IFMT) != S_IFSOCK)
		return 0;
	if (bpf_probe_read_kernel(&sock, sizeof(sock), &file->private_data) || !sock)
		return 0;
	if (bpf_probe_read_kernel(&sk, sizeof(sk), &sock->sk) || !sk)
		return 0;
	if (bpf_probe_read_kernel(&user_data, sizeof(user_data), &sk->sk_user_data))
		return 0;
	if (!(user_data & SK_USER_DATA_PSOCK))
		return 0;
	if (!psock_in_sockhash((struct sk_psock *)(user_data & SK_USER_DATA_PTRMASK)))
		return 0;
	/* A socket past TCP_CLOSE (reset, or closed with the application
	 * still holding it) has lost its mark with its conntrack entry; a
	 * new one would report it again. */
	if (bpf_probe_read_kernel(&state, sizeof(state), &sk->__sk_common.skc_state) || state == TCP_CLOSE)
		return 0;
	return (__u64)(unsigned long)sk;
}

/* Tells the daemon who used a call the redirect path cannot serve while
 * redirected bytes were queued at the socket (reason USE_SPLICE: splice
 * found them, so that connection stalls; USE_OOB: recv(MSG_OOB) returned
 * the first of them instead of the urgent byte), so it can log it and keep
 * that service off the fast path from then on. */
/* The daemon's own PID namespace, written at load. Reported PIDs are the
 * ones the daemon can open (pidfd_open, to reset a stalled connection):
 * a daemon in a container has a PID namespace of its own, where the host's
 * PIDs mean nothing. 0: report the host's. */
volatile const __u64 daemon_pidns_dev;
volatile const __u64 daemon_pidns_ino;

/* The current process's PID as the daemon sees it, 0 when it lives outside
 * the daemon's PID namespace (the daemon could not reach it by any PID). */
static __always_inline __u32 current_pid_for_daemon(void)
{
	struct bpf_pidns_info ns = {};

	if (!daemon_pidns_ino)
		return bpf_get_current_pid_tgid() >> 32;
	if (bpf_get_ns_current_pid_tgid(daemon_pidns_dev, daemon_pidns_ino, &ns, sizeof(ns)))
		return 0;
	return ns.tgid;
}

static __always_inline void report_use(__u64 addr, __u64 fd, __u32 reason, __u32 queued)
{
	struct sock *sk = (struct sock *)addr;
	struct use_event *ev;
	__u16 dport = 0;

	ev = bpf_ringbuf_reserve(&sa_events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->cookie = 0;
	bpf_probe_read_kernel(&ev->cookie, sizeof(ev->cookie), &sk->__sk_common.skc_cookie.counter);
	ev->pid = current_pid_for_daemon();
	ev->queued = queued;
	ev->local_port = 0;
	bpf_probe_read_kernel(&ev->local_port, sizeof(ev->local_port), &sk->__sk_common.skc_num);
	bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
	ev->remote_port = bpf_ntohs(dport);
	ev->reason = reason;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	ev->fd = (__s32)fd;
	ev->_pad = 0;
	ev->cgroup_id = sock_cgroup_id_probed(sk);
	bpf_ringbuf_submit(ev, 0);
}

/* The first splice found redirected bytes unread: those can only come out
 * through recv, and the application is waiting on splice. */
static __always_inline void report_stalled_splice(__u64 addr, __u64 fd)
{
	struct accel_stats *st = stats();
	__u32 queued = psock_queued(addr);

	if (!queued || !st)
		return;
	__sync_fetch_and_add(&st->splice_stalled, 1);
	report_use(addr, fd, USE_SPLICE, queued);
}

/* A call that read a socket holding redirected bytes as if they were not
 * there, counted and reported on every such call, not only a socket's
 * first. USE_OOB: tcp_bpf_recvmsg reads the redirect queue whatever the
 * flags, so recv(MSG_OOB) returned the first of those bytes instead of the
 * urgent byte, and that byte is gone from the stream; nothing at syscall
 * entry can stop it. USE_FIONREAD: on kernels whose FIONREAD counts only
 * the TCP receive queue it reported too little, and an application sizing
 * its read or deciding the peer is done by it can stall. */
static __always_inline void report_misread(__u64 addr, __u64 fd, __u32 reason)
{
	struct accel_stats *st = stats();
	__u32 queued = psock_queued(addr);

	if (!queued || !st)
		return;
	if (reason == USE_OOB)
		__sync_fetch_and_add(&st->oob_misread, 1);
	else
		__sync_fetch_and_add(&st->fionread_misread, 1);
	report_use(addr, fd, reason, queued);
}

static __always_inline __u64 mark_use(__u64 fd, __u32 reason)
{
	struct use_gate *gate = use_gate();
	struct use_mark fresh = { .reasons = reason };
	struct use_mark *m;
	__u64 addr;

	if (!gate)
		return 0;
	addr = psock_of_fd(fd);
	if (!addr)
		return 0;
	m = bpf_map_lookup_elem(&sa_use_marks, &addr);
	if (m) {
		if (!m->consumed && !(m->reasons & reason))
			__sync_fetch_and_or(&m->reasons, reason);
		return addr;
	}
	if (bpf_map_update_elem(&sa_use_marks, &addr, &fresh, BPF_NOEXIST) == 0) {
		__sync_fetch_and_add(&gate->marks, 1);
		__sync_fetch_and_add(&gate->unconsumed, 1);
		if (reason == USE_SPLICE)
			report_stalled_splice(addr, fd);
	}
	return addr;
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
