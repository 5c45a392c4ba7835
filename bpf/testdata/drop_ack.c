//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Test helper, never shipped in the daemon: a tc egress filter that drops
 * the first pure ACK (no payload, no SYN/FIN/RST) of each connection to one
 * IPv4 TCP port: the handshake's final ACK. On a client's veth it makes the
 * server complete the handshake only when the client's first data segment
 * arrives, so the client is established, in the sockhash and sending before
 * its peer exists. Later ACKs pass. */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define IPPROTO_TCP 6
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

char __license[] SEC("license") = "Dual MIT/GPL";

volatile const __u16 drop_port = 0; /* host byte order; set at load */
__u64 dropped = 0;

/* Client ports whose handshake ACK was already withheld. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u16);
	__type(value, __u8);
} seen SEC(".maps");

struct eth {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
} __attribute__((packed));

struct ipv4 {
	__u8 ihl_version;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

struct tcp {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res; /* data offset in the upper 4 bits */
	__u8 flags;    /* CWR ECE URG ACK PSH RST SYN FIN */
	__be16 window;
	__u16 check;
	__u16 urg_ptr;
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

SEC("tc")
int drop_pure_ack(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct eth *eth = data;
	struct ipv4 *ip;
	struct tcp *tcp;
	__u32 ihl, doff;

	if ((void *)(eth + 1) > end || eth->proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	ihl = (ip->ihl_version & 0x0f) * 4;
	if (ihl < sizeof(*ip))
		return TC_ACT_OK;
	tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > end || tcp->dest != bpf_htons(drop_port))
		return TC_ACT_OK;
	doff = (tcp->doff_res >> 4) * 4;
	if (bpf_ntohs(ip->tot_len) != ihl + doff)
		return TC_ACT_OK; /* carries payload */
	if ((tcp->flags & (TCP_ACK | TCP_SYN | TCP_FIN | TCP_RST)) != TCP_ACK)
		return TC_ACT_OK;
	if (bpf_map_update_elem(&seen, &tcp->source, &(__u8){1}, BPF_NOEXIST))
		return TC_ACT_OK; /* not the first: let it through */
	__sync_fetch_and_add(&dropped, 1);
	return TC_ACT_SHOT;
}
