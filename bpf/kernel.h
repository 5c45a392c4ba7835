/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The kernel's types and constants the datapath reads, declared once, and
 * the small readers built on them (a socket's cgroup id, its file's
 * blocking mode). Just enough of each struct for the fields used; CO-RE
 * relocates the offsets against the running kernel's BTF. Separate so that
 * every other header sees one declaration of each kernel struct. psock.h
 * keeps the psock's own types, shared with backlog.c. */
#ifndef SOCKACCEL_KERNEL_H
#define SOCKACCEL_KERNEL_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "core.h"

#define AF_INET 2
#define AF_INET6 10
#define E2BIG 7
#define EEXIST 17
#define TCP_CLOSE 7

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
	struct sock *skc_listener; /* a request socket's listener (rsk_listener) */
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
	int sk_rcvbuf;
	int sk_rcvlowat;
	void *sk_user_data;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));
/* What a sock_ops program's context really is (the verifier rewrites its
 * field reads into this). Only its socket is read, and only where the
 * context's own sk field is NULL: a request socket (see note_server). */
struct bpf_sock_ops_kern {
	struct sock *sk;
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
#define SHUT_WR 1
#define SHUT_RDWR 2

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

static __always_inline struct sock *kernel_sock(struct bpf_sock *sk)
{
	return (struct sock *)bpf_skc_to_tcp_sock(sk);
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

/* The listener a sock_ops callback on a request socket is about
 * (BPF_SOCK_OPS_RWND_INIT, the SYN-ACK's header callbacks), or NULL. The
 * context hides a request socket (its sk field reads NULL unless the
 * socket is full), but the kernel runs the listener's cgroup programs for
 * it and keeps the request socket in the context, and the request socket
 * names its listener: read both through probe reads (a context pointer may
 * be passed as a plain value only by a program loaded with CAP_PERFMON,
 * which bpf_probe_read_kernel needs anyway). Exact where a record written
 * at listen() would have to guess (SO_REUSEPORT groups, wildcard and
 * dual-stack binds) or be missing (listeners from before the daemon). */
static __always_inline struct sock *request_listener(struct bpf_sock_ops *skops)
{
	struct bpf_sock_ops_kern *kctx = (struct bpf_sock_ops_kern *)skops;
	struct sock_common *req = NULL;
	struct sock *lsk = NULL;

	if (!__builtin_preserve_field_info(kctx->sk, CORE_FIELD_EXISTS) ||
	    !__builtin_preserve_field_info(req->skc_listener, CORE_FIELD_EXISTS))
		return NULL;
	if (bpf_probe_read_kernel(&req, sizeof(req),
				  (void *)skops + __builtin_preserve_field_info(kctx->sk, CORE_FIELD_BYTE_OFFSET)) ||
	    !req)
		return NULL;
	if (bpf_probe_read_kernel(&lsk, sizeof(lsk), &req->skc_listener))
		return NULL;
	return lsk;
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

#endif
