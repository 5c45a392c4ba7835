/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Whether a connection may be accelerated at all: excluded ports,
 * networks and cgroup subtrees (set by the daemon's flags) and the
 * services it learned to keep on TCP. Separate because these are the
 * daemon's policy, read once at establishment, not part of any one
 * socket's state. */
#ifndef SOCKACCEL_SCOPE_H
#define SOCKACCEL_SCOPE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "accel.h"
#include "kernel.h"
#include "maps.h"

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

/* Whether the accepted end of a connection request would be excluded, as
 * track_established will decide once it is established: by its tuple
 * (server's view, sock_key form), its listener's cgroup subtree (an
 * accepted socket keeps its listener's cgroup) and the learned services.
 * Asked as the listener answers the SYN, from the maps as they are then,
 * so a reload between that and establishment is seen by the second
 * check only (drop_lonely_client covers the difference). A listener that
 * cannot be read counts as not excluded, for the same reason. */
static __always_inline int request_excluded(struct bpf_sock_ops *skops, __u32 flags, const struct sock_key *server)
{
	__u16 lport = bpf_ntohs(server->local_port), rport = bpf_ntohs(server->remote_port);
	struct sock *lsk;

	if ((flags & CONFIG_F_EXCL_PORTS) && (port_excluded(lport) || port_excluded(rport)))
		return 1;
	if ((flags & CONFIG_F_EXCL_CIDRS) && (addr_excluded(server->local_ip) || addr_excluded(server->remote_ip)))
		return 1;
	if (!(flags & (CONFIG_F_EXCL_CGROUPS | CONFIG_F_LEARNED)))
		return 0;
	lsk = request_listener(skops);
	if (!lsk)
		return 0;
	if ((flags & CONFIG_F_EXCL_CGROUPS) && cgroup_excluded(lsk))
		return 1;
	return (flags & CONFIG_F_LEARNED) && learned_excluded(sock_cgroup_id_probed(lsk), lport, rport);
}

#endif
