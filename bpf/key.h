/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Building a sock_key: IPv4 addresses in their IPv4-mapped IPv6 form and
 * the tuple of the socket sock_ops is about. The key both ends agree on
 * (mirroring one end's tuple for the other) is built from these by
 * track_established and token.h. Separate because sock_ops and the token
 * code both build keys and must build them the same way. */
#ifndef SOCKACCEL_KEY_H
#define SOCKACCEL_KEY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "accel.h"
#include "kernel.h"

static __always_inline void ipv4_mapped(__u32 dst[4], __u32 addr)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = addr;
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

/* The key the other end of key's connection builds: addresses, ports and
 * ISNs swapped (with ISNs 0, the tuple as the other end sees it). */
static __always_inline void key_mirror(struct sock_key *out, const struct sock_key *in)
{
	__builtin_memcpy(out->local_ip, in->remote_ip, sizeof(out->local_ip));
	__builtin_memcpy(out->remote_ip, in->local_ip, sizeof(out->remote_ip));
	out->local_isn = in->remote_isn;
	out->remote_isn = in->local_isn;
	out->local_port = in->remote_port;
	out->remote_port = in->local_port;
}

#endif
