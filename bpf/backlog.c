//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Iterator over the SOCKHASH reporting, for each socket, the redirected bytes
 * queued for its application and not read yet (psock->msg_tot_len).
 *
 * Teardown needs it: when a socket leaves the SOCKHASH the kernel drops its
 * psock and frees everything still queued in it (sk_psock_drop ->
 * sk_psock_stop -> purge of ingress_msg), so sockaccel only removes sockets
 * once this reads zero. Kernel types come from BTF through CO-RE. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct sock {
	void *sk_user_data;
} __attribute__((preserve_access_index));

struct sk_psock {
	__u32 msg_tot_len;
} __attribute__((preserve_access_index));

struct bpf_iter__sockmap {
	struct bpf_iter_meta *meta;
	void *key;
	struct sock *sk;
} __attribute__((preserve_access_index));

/* sk_user_data carries flag bits below the psock pointer. */
#define SK_USER_DATA_PTRMASK (~7UL)

SEC("iter/sockmap")
int sockhash_backlog(struct bpf_iter__sockmap *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct sock *sk = ctx->sk;
	struct sk_psock *psock;
	__u32 queued = 0;

	if (!sk)
		return 0;
	psock = (struct sk_psock *)((unsigned long)sk->sk_user_data & SK_USER_DATA_PTRMASK);
	if (!psock)
		return 0;
	if (bpf_probe_read_kernel(&queued, sizeof(queued), &psock->msg_tot_len))
		return 0;
	if (queued)
		bpf_seq_write(seq, &queued, sizeof(queued));
	return 0;
}
