//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Behaviour probes: a private SOCKHASH and an sk_msg program that redirects
 * every send of the probe's sending socket into the receiving socket's
 * ingress queue, as the datapath does (bpf_msg_redirect_hash with
 * BPF_F_INGRESS). The daemon loads this object on a fresh start, before
 * sock_ops is attached, inserts one loopback socket pair from user space,
 * and looks at what the receiver then reports (accel/behaviour.go).
 *
 * Nothing here is pinned or attached to a cgroup: the sk_msg program runs
 * only for the two sockets in kp_sockhash, and everything goes away when
 * the daemon closes the object. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

/* Slot of the probe's sending socket; the receiver is KP_RECEIVER. */
#define KP_SENDER 0
#define KP_RECEIVER 1

/* The probe's two sockets, keyed by slot; the value is the socket's fd on
 * update. Not pinned: private to one probe run. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} kp_sockhash SEC(".maps");

/* Bytes redirected into the receiver: the probe checks its send took the
 * redirect path before judging what the receiver reports. */
__u64 kp_redirected_bytes = 0;

/* Every send of a socket in kp_sockhash goes to the receiver's ingress.
 * Only the sender ever sends. */
SEC("sk_msg")
int kp_redirect(struct sk_msg_md *msg)
{
	__u32 peer = KP_RECEIVER;
	__u32 size = msg->size;

	if (bpf_msg_redirect_hash(msg, &kp_sockhash, &peer, BPF_F_INGRESS) != SK_PASS)
		return SK_DROP;
	__sync_fetch_and_add(&kp_redirected_bytes, size);
	return SK_PASS;
}
