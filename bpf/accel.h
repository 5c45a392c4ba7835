/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Types shared by the BPF programs and, through bpf2go, the Go loader.
 * Every struct is laid out without implicit padding so the Go mirror and the
 * map key bytes are identical on both sides. */
#ifndef SOCKACCEL_ACCEL_H
#define SOCKACCEL_ACCEL_H

#include <linux/types.h>

/* Identifies one end of one TCP connection, host-wide.
 *
 * The 4-tuple alone is not unique on a host: two network namespaces can hold
 * sockets with identical addresses and ports at the same time. What both ends
 * of one connection agree on, and nobody else does, is the pair of initial
 * sequence numbers exchanged in the handshake. The kernel derives each ISN
 * from a keyed hash of the tuple plus a 64 ns clock, so two connections with
 * the same tuple get the same pair only if both SYNs and both SYN-ACKs are
 * generated within the same 64 ns; a colliding insert is refused (NOEXIST),
 * counted, and that connection simply stays on the TCP path.
 *
 * Neither can a local process choose: both ISN fields also carry the
 * connection's 64-bit pairing token, XORed in (bpf/token.h), which only the
 * two ends of the handshake know. Keys of connections established before
 * the token (an older version's, adopted across a restart) have none and
 * keep their pairing until they close.
 *
 * IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d) so that an AF_INET
 * client pairs with a dual-stack AF_INET6 server socket. */
struct sock_key {
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_isn;
	__u32 remote_isn;
	__u16 local_port;  /* network byte order */
	__u16 remote_port; /* network byte order */
};

/* Per-socket state in socket-local storage: found from the socket itself in
 * O(1) on every sendmsg, freed by the kernel with the socket. */
struct sock_state {
	struct sock_key peer;   /* key of the other end, precomputed at establish */
	struct sock_key ct_key; /* this connection's conntrack key */
	__u32 flags;            /* SOCK_F_* */
	__u32 side;             /* CT_SIDE_ACTIVE (client) or CT_SIDE_PASSIVE */
};

enum ct_side {
	CT_SIDE_ACTIVE = 0,  /* the end that called connect() */
	CT_SIDE_PASSIVE = 1, /* the end accept() returned */
};

/* One accelerated connection. Keyed by the active (client) end's sock_key,
 * which both ends can compute. Index [side] is per end; for the counters,
 * [CT_SIDE_ACTIVE] is client->server and [CT_SIDE_PASSIVE] server->client. */
struct ct_entry {
	__u64 cookie[2];    /* socket cookie of each local end, 0 if not local */
	__u64 cgroup_id[2]; /* cgroup of each local end */
	__u64 established_ns; /* CLOCK_MONOTONIC when the first end established */
	__u64 msgs[2];      /* messages redirected, per direction */
	__u64 bytes[2];     /* bytes redirected, per direction */
	/* Kernel address of each local end's struct sock, for reading its
	 * psock backlog through BTF. Only ever dereferenced with
	 * bpf_probe_read_kernel: a stale address after close yields a wrong
	 * reading at worst, and the redirect itself goes by key. */
	__u64 sk[2];
	/* Per direction: up to which value of bytes[dir] the receiver's
	 * backlog is known to stay within the bound (see backlog_exceeded). */
	__u64 backlog_clear[2];
	/* Per direction, the bound's autotuning (see backlog_bound): when the
	 * receiver's consumption was last sampled, what it had consumed then,
	 * and the bound that sample gave. */
	__u64 tune_ns[2];
	__u64 tune_consumed[2];
	__u32 bound[2];
	__u32 closed;       /* bit per side that reached TCP_CLOSE */
	__u32 off;          /* bit per direction taken off the fast path for good */
};

/* Shared between the programs and the daemon's GC. */
struct gc_state {
	/* 1 while the daemon's GC is running; the first new conntrack entry
	 * while it is 0 sends one wake-up through sa_gc_wake. */
	__u32 armed;
	__u32 _pad;
	__u64 closed_gc; /* written by the daemon only */
	__u64 gc_runs;   /* written by the daemon only */
	__u64 retired;   /* written by the daemon only: connections whose
			  * sockets it took out of the sockhash once they
			  * were off the fast path for good */
	__u64 lonely;    /* written by the daemon only: client ends it took
			  * out of the sockhash because their server never
			  * joined (see struct lonely_event) */
};

/* A client end in the sockhash whose server never will be (sa_lonely): its
 * data was acknowledged while the conntrack entry still had no server end,
 * and a local server in scope joins before it acknowledges any data. All
 * its sends go through TCP, whose write-space wake-ups end a blocking
 * reader's wait in tcp_bpf_recvmsg with EAGAIN; nothing was ever
 * redirected into it, so the daemon removes it from the sockhash. */
struct lonely_event {
	struct sock_key key; /* the client end's key (its conntrack key) */
	__u32 _pad;
	__u64 cookie;        /* its socket cookie */
};

enum sock_flags {
	/* This socket has sent bytes through the TCP stack. Redirected bytes
	 * must never overtake them in the peer's receive order, and the
	 * receiver reads its redirect queue before its TCP queue, so this
	 * direction stays on TCP until the receiving application has read
	 * every one of them. */
	SOCK_F_TCP_PATH = 1 << 0,
	/* At least one message of this socket was redirected. */
	SOCK_F_REDIRECTED = 1 << 1,
	/* This end is recorded in a conntrack entry (ct_key, side). */
	SOCK_F_TRACKED = 1 << 2,
	/* Nothing may be redirected into this socket (set by setsockopt or
	 * receive-side detection, possibly before it is established). */
	SOCK_F_NO_INGRESS = 1 << 3,
	/* Never accelerate this socket at all (e.g. a ULP is installed). */
	SOCK_F_NO_ACCEL = 1 << 4,
	/* TCP_REPAIR was set on this socket: never paired. */
	SOCK_F_REPAIR = 1 << 5,
	/* This end was reported to the daemon as lonely (sa_lonely). */
	SOCK_F_LONELY = 1 << 6,
	/* A connect()ing socket before establishment: ct_key.local_isn and
	 * ct_key.remote_isn hold its pairing token (bpf/token.h), not a key;
	 * its SYN carries it. Cleared at establishment, where the token goes
	 * into the key. */
	SOCK_F_TOKEN = 1 << 7,
	/* Its SYN had no room for the token option: it is not paired. */
	SOCK_F_TOKEN_NO_ROOM = 1 << 8,
	/* A client of a listener from before sockaccel attached (which keeps
	 * no SYN and echoes nothing): paired, its handshake's final ACK
	 * carries the token to the server. */
	SOCK_F_TOKEN_ACK = 1 << 9,
};

/* Runtime switches the daemon flips without reloading programs. */
struct accel_config {
	__u32 flags; /* CONFIG_F_* */
	/* Bound on redirected-but-unread bytes per direction. 0 means
	 * autotuned like TCP's receive buffer: what the receiver consumes in
	 * BACKLOG_TUNE_WINDOW_NS at the fastest pace seen, at least its
	 * receive buffer, at most its namespace's net.ipv4.tcp_rmem[2]. */
	__u32 backlog_bytes;
	/* net.ipv4.tcp_rmem[2] of the daemon's namespace, written by the
	 * daemon: the ceiling when the receiver's own cannot be read. */
	__u32 rcvbuf_max;
	/* The id of this daemon's sockhash: the detectors act only on its
	 * sockets (0: any socket with a psock). */
	__u32 sockhash_id;
};

enum config_flags {
	/* Stop putting new connections in the sockhash (teardown, step one). */
	CONFIG_F_NO_NEW = 1 << 0,
	/* Stop redirecting: every send takes the TCP path from now on. */
	CONFIG_F_NO_REDIRECT = 1 << 1,
	/* Do not track connections (--conntrack=false). */
	CONFIG_F_NO_CONNTRACK = 1 << 2,
	/* Conservative mode: leave connect()ing sockets in blocking mode on
	 * TCP (a blocking recv on the redirect path can fail with EAGAIN). */
	CONFIG_F_CONSERVATIVE = 1 << 3,
	/* sa_excl_ports / sa_excl_cidrs hold entries: without them the
	 * per-connection lookups are skipped. */
	CONFIG_F_EXCL_PORTS = 1 << 4,
	CONFIG_F_EXCL_CIDRS = 1 << 5,
	CONFIG_F_EXCL_CGROUPS = 1 << 6,
	/* sa_learned holds entries (see struct learned_key). */
	CONFIG_F_LEARNED = 1 << 7,
};

/* Key of the excluded-CIDR LPM trie: prefix length over the IPv4-mapped
 * 128-bit address (an IPv4 /8 is stored as /104). */
struct cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Counters, one copy per CPU, summed by user space. Append only: the order is
 * the pinned map's layout. */
struct accel_stats {
	__u64 established;      /* established sockets seen in scope */
	__u64 inserted;         /* sockets put in the sockhash */
	__u64 map_full;         /* not accelerated: sockhash at capacity */
	__u64 insert_errors;    /* not accelerated: other insert failures */
	__u64 excluded_port;    /* not accelerated: excluded port */
	__u64 excluded_cidr;    /* not accelerated: excluded CIDR */
	__u64 early_data;       /* not accelerated: sent data before establish (TFO) */
	__u64 storage_errors;   /* not accelerated: no socket storage */
	__u64 disabled;         /* not accelerated: daemon stopped new entries */
	__u64 blocking;         /* not accelerated: blocking socket, conservative mode */
	__u64 redirected_msgs;  /* sendmsg calls redirected to the peer */
	__u64 redirected_bytes;
	/* sendmsg verdicts left on the TCP path. After a TCP push fails (e.g.
	 * EAGAIN) the kernel reuses the PASS verdict for the next send without
	 * running the program, so these can under-count. */
	__u64 passed_msgs;
	__u64 passed_bytes;
	__u64 redirect_errors;  /* peer vanished from the sockhash after pairing */
	__u64 ct_created;       /* conntrack entries created */
	__u64 ct_full;          /* conntrack at capacity: connection not tracked */
	__u64 closed_direct;    /* conntrack entries removed by the close callback */
	/* Sends handed to TCP because the receiver fell behind by more than
	 * the bound (the direction returns once it caught up). */
	__u64 off_backlog;
	/* Directions taken off the fast path for good: SO_RCVLOWAT, TCP_ULP
	 * or SO_ZEROCOPY set on the socket. */
	__u64 off_setsockopt;
	/* Directions back on the fast path after the receiver read every
	 * byte that went through TCP. */
	__u64 resumed;
	/* Connections taken off the fast path for good when an application
	 * first used a call the redirect path does not honour (see
	 * sa_det_*): splice from the socket, recv with MSG_WAITALL,
	 * send or recv with MSG_OOB. */
	__u64 off_splice;
	__u64 off_waitall;
	__u64 off_oob;
	/* Sockets whose application spliced from them while bytes redirected
	 * into them were unread: splice cannot return those bytes, so that
	 * connection stalls unless the application also reads with recv. */
	__u64 splice_stalled;
	__u64 excluded_cgroup;  /* not accelerated: in an excluded cgroup subtree */
	/* SO_RCVLOWAT set on a socket that had bytes redirected into it:
	 * applied as 1 (see lower_rcvlowat). */
	__u64 rcvlowat_lowered;
	/* A recv(MSG_OOB) on a socket holding redirected bytes: it returned
	 * the first of them instead of the urgent byte. */
	__u64 oob_misread;
	/* not accelerated: the socket has a ULP (MPTCP subflows, kTLS), which
	 * the kernel refuses in a sockhash */
	__u64 ulp;
	/* not accelerated: a learned exclusion (sa_learned) matched */
	__u64 excluded_learned;
	/* not accelerated: the socket was in TCP_REPAIR mode, whose chosen
	 * sequence numbers could claim another connection's key */
	__u64 repair;
	/* ioctl(FIONREAD) on a socket holding redirected bytes, on a kernel
	 * whose FIONREAD leaves them out: it under-reported */
	__u64 fionread_misread;
	/* Connections taken off the fast path for good when one end first
	 * asked FIONREAD (only on kernels where it is wrong) */
	__u64 off_fionread;
	/* not accelerated: the other end is not a local socket in scope (on
	 * another host, outside the target cgroup; for an accepted socket
	 * also a client that was excluded, refused or left out as blocking).
	 * It would be a lonely end. */
	__u64 no_peer;
	/* not accelerated: a client whose SYN had no room left for the
	 * pairing token option (TCP-MD5, a Fast Open cookie, other options) */
	__u64 token_no_room;
	/* not accelerated: a client whose server is a listener in scope but
	 * whose SYN-ACK did not echo its pairing token (the option stripped
	 * on the way, a SYN cookie, a listener from before sockaccel
	 * attached, no room in the SYN-ACK) */
	__u64 token_unconfirmed;
	/* Client ends sock_ops took out of the sockhash (and conntrack)
	 * again before any byte could reach them, because their accepted end
	 * was refused (see drop_lonely_client) or conntrack was full. */
	__u64 lonely_direct;
	/* shutdown(SHUT_WR or SHUT_RDWR) on a blocking socket in the
	 * sockhash while another thread slept on it (a thread-per-direction
	 * proxy's writer half-closing while its reader waits in recv): the
	 * shutdown wakes that reader, and tcp_bpf_recvmsg ends its wait with
	 * EAGAIN when nothing is queued. */
	__u64 shutdown_wake;
};

/* What the detector tells the daemon about a stalled splice (sa_events). */
struct use_event {
	__u64 cookie;      /* socket cookie, as in the conntrack entry */
	__u32 pid;
	__u32 queued;      /* redirected bytes unread at the first splice */
	__u16 local_port;  /* host byte order */
	__u16 remote_port; /* host byte order */
	__u32 reason;      /* USE_* */
	char comm[16];
	__s32 fd;          /* the socket's descriptor in that process */
	__u32 _pad;
	__u64 cgroup_id;   /* the socket's cgroup v2 id */
};

/* Calls on an accelerated socket whose semantics the redirect path breaks,
 * seen at syscall entry by the sa_det_* programs. */
enum use_reason {
	USE_SPLICE = 1 << 0,  /* splice(2) reads only the TCP receive queue */
	USE_WAITALL = 1 << 1, /* tcp_bpf_recvmsg ignores MSG_WAITALL */
	USE_OOB = 1 << 2,     /* urgent data would arrive in-band */
	/* Not a call: the connection just left the fast path both ways for
	 * good, so the daemon can take its sockets out of the sockhash once
	 * nothing redirected is left unread (see retireConn). */
	USE_RETIRE = 1 << 3,
	/* ioctl(FIONREAD/SIOCINQ), on kernels whose FIONREAD leaves redirected
	 * bytes out (the daemon's kernel probe decides) */
	USE_FIONREAD = 1 << 4,
	/* shutdown(SHUT_WR/SHUT_RDWR) of a blocking socket while another
	 * thread slept on it: that sleeper is woken into EAGAIN. Not a mark:
	 * the wake-up is immediate, so nothing on the send path can help this
	 * connection; only its service is learned. */
	USE_SHUTDOWN = 1 << 5,
};

/* A service whose use of the fast path went wrong once (a stalled splice,
 * a misread urgent byte or FIONREAD): its sockets stay on TCP from then on.
 * A service is the port its clients connect to, seen from one end, and the
 * cgroup of the sockets at that end, so that one tenant's proxy never takes
 * another tenant's service on the same port number off the fast path.
 * Written by the daemon only; pinned, so it outlives daemon restarts. */
struct learned_key {
	__u64 cgroup_id; /* the using end's cgroup v2 id; 0 matches any */
	__u16 port;      /* the server's port, host byte order */
	__u8 end;        /* LEARNED_SERVER or LEARNED_CLIENT */
	__u8 _pad[5];
};

enum learned_end {
	/* sockets whose local port is the service port (the server's end) */
	LEARNED_SERVER = 0,
	/* sockets whose remote port is the service port (a client's end) */
	LEARNED_CLIENT = 1,
};

struct learned_use {
	__u32 reasons;   /* USE_* seen */
	__u32 pid;       /* the process that used it, when first learned */
	__u64 unix_time; /* when it was first learned, seconds */
	char comm[16];
};

/* A socket seen using one of those calls, keyed by its struct sock address,
 * until the sender side of its connection takes the connection off the fast
 * path (consumed) and the socket closes. */
struct use_mark {
	__u32 reasons;  /* USE_* */
	__u32 consumed; /* 1 once its connection is off the fast path */
};

/* Lets sk_msg skip the mark lookups while no mark waits to be consumed, and
 * the close callback skip its delete while there are no marks at all. */
struct use_gate {
	__s64 unconsumed;
	__s64 marks;
};

#endif
