/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* CO-RE relocations beyond plain field reads: the relocation kinds of
 * clang's __builtin_preserve_field_info (as libbpf's bpf_core_read.h names
 * them), a bitfield read, and container_of for kernel list entries. */
#ifndef SOCKACCEL_CORE_H
#define SOCKACCEL_CORE_H

#include <bpf/bpf_helpers.h>

#define CORE_FIELD_BYTE_OFFSET 0
#define CORE_FIELD_BYTE_SIZE 1
#define CORE_FIELD_EXISTS 2
#define CORE_FIELD_LSHIFT_U64 4
#define CORE_FIELD_RSHIFT_U64 5

/* The value of bitfield s->field, relocated against the running kernel. */
#define CORE_READ_BITFIELD(s, field)                                                                  \
	({                                                                                            \
		unsigned long long __v = 0;                                                           \
		bpf_probe_read_kernel(&__v, __builtin_preserve_field_info((s)->field, CORE_FIELD_BYTE_SIZE), \
				      (const void *)(s) +                                             \
					      __builtin_preserve_field_info((s)->field, CORE_FIELD_BYTE_OFFSET)); \
		__v <<= __builtin_preserve_field_info((s)->field, CORE_FIELD_LSHIFT_U64);             \
		__v >>= __builtin_preserve_field_info((s)->field, CORE_FIELD_RSHIFT_U64);             \
		__v;                                                                                  \
	})

/* The struct type holding list entry pos as its member. */
#define CORE_CONTAINER_OF(pos, type, member) \
	((type *)((void *)(pos) - __builtin_preserve_field_info(((type *)0)->member, CORE_FIELD_BYTE_OFFSET)))

#endif
