/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Reading what a socket's psock holds for its application: the redirected
 * bytes queued in its ingress list and not read yet. Shared by the datapath
 * (the backlog bound, use detection) and the teardown's backlog reader.
 * Kernel types come from BTF through CO-RE. */
#ifndef SOCKACCEL_PSOCK_H
#define SOCKACCEL_PSOCK_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "core.h"

/* sk_user_data carries flag bits below the psock pointer. */
#define SK_USER_DATA_PTRMASK (~7UL)
#define SK_USER_DATA_PSOCK 4UL

struct list_head {
	struct list_head *next;
} __attribute__((preserve_access_index));
struct sk_msg_sg {
	__u32 size;
} __attribute__((preserve_access_index));
struct sk_msg {
	struct sk_msg_sg sg;
	struct list_head list;
} __attribute__((preserve_access_index));
struct sk_psock {
	/* Kept by newer kernels (6.18 has it, 6.1 does not); older ones
	 * have only the list. */
	__u32 msg_tot_len;
	struct list_head ingress_msg;
	struct list_head link; /* of struct sk_psock_link: the maps holding the socket */
} __attribute__((preserve_access_index));
struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));
struct sk_psock_link {
	struct list_head list;
	struct bpf_map *map;
} __attribute__((preserve_access_index));


/* Messages walked at most on kernels without msg_tot_len. A longer list
 * reads as PSOCK_QUEUED_MANY: more than any bound, so a reader that far
 * behind is never mistaken for one that caught up. */
#define PSOCK_WALK_MAX 64
#define PSOCK_QUEUED_MANY (1U << 30)

/* Unread redirected bytes in psock's ingress list. The kernel keeps the
 * total in msg_tot_len where it has it; elsewhere the list is summed, read
 * with bpf_probe_read_kernel: a list changing under the walk gives a wrong
 * reading at worst, never a fault. */
static __always_inline __u32 psock_msg_bytes(struct sk_psock *psock)
{
	struct list_head *head, *pos = NULL;
	struct sk_msg *msg;
	__u32 queued = 0, size;
	int i;

	if (!psock)
		return 0;
	if (__builtin_preserve_field_info(psock->msg_tot_len, CORE_FIELD_EXISTS)) {
		bpf_probe_read_kernel(&queued, sizeof(queued), &psock->msg_tot_len);
		return queued;
	}
	head = &psock->ingress_msg;
	if (bpf_probe_read_kernel(&pos, sizeof(pos), &head->next))
		return 0;
	for (i = 0; i < PSOCK_WALK_MAX; i++) {
		if (!pos || pos == head)
			return queued;
		msg = CORE_CONTAINER_OF(pos, struct sk_msg, list);
		size = 0;
		if (bpf_probe_read_kernel(&size, sizeof(size), &msg->sg.size) ||
		    bpf_probe_read_kernel(&pos, sizeof(pos), &pos->next))
			return queued;
		queued += size;
	}
	return pos == head ? queued : PSOCK_QUEUED_MANY;
}

#endif
