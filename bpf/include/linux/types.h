/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Minimal stand-in for <linux/types.h> so BPF objects build without the
 * host's asm/ headers: BPF is always LP64 here, so the widths are fixed. */
#ifndef _SOCKACCEL_LINUX_TYPES_H
#define _SOCKACCEL_LINUX_TYPES_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;

typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u16 __le16;
typedef __u32 __le32;
typedef __u64 __le64;
typedef __u32 __wsum;
typedef __u16 __sum16;

#define __bitwise
#define __aligned_u64 __u64 __attribute__((aligned(8)))

#endif
