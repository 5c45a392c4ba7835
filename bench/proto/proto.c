//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The bare prototype the benchmark measures sockaccel against: insert every
 * established IPv4 socket of the cgroup into a SOCKHASH keyed by its 4-tuple,
 * redirect every sendmsg to the socket keyed by the reversed tuple. Nothing
 * else: no ordering rule, no backlog bound, no exclusions, no connection
 * tracking, no use detection, and a 4-tuple key that pairs the wrong sockets
 * when two network namespaces hold the same tuple. A yardstick for the
 * bench (PROTO=1), never something to run on a host. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2

struct proto_key {
	__u32 local_ip;
	__u32 remote_ip;
	__u32 local_port;  /* host order */
	__u32 remote_port; /* host order */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct proto_key);
	__type(value, __u64);
} proto_sockhash SEC(".maps");

SEC("sockops")
int proto_sockops(struct bpf_sock_ops *skops)
{
	struct proto_key key = {};

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	if (skops->family != AF_INET)
		return 1;
	key.local_ip = skops->local_ip4;
	key.remote_ip = skops->remote_ip4;
	key.local_port = skops->local_port;
	key.remote_port = bpf_ntohl(skops->remote_port);
	bpf_sock_hash_update(skops, &proto_sockhash, &key, BPF_NOEXIST);
	return 1;
}

SEC("sk_msg")
int proto_redirect(struct sk_msg_md *msg)
{
	struct proto_key peer = {};

	if (msg->family != AF_INET)
		return SK_PASS;
	peer.local_ip = msg->remote_ip4;
	peer.remote_ip = msg->local_ip4;
	peer.local_port = bpf_ntohl(msg->remote_port);
	peer.remote_port = msg->local_port;
	bpf_msg_redirect_hash(msg, &proto_sockhash, &peer, BPF_F_INGRESS);
	return SK_PASS;
}
