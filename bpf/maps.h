/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Every map of the datapath object (accel.c) except token.h's key, in one
 * place and in their BTF order, with the lookups of the single-entry ones.
 * Separate so that the entry points read as a connection's life and the
 * maps' definitions, which user space pins and sizes, are found at once.
 * The structs they hold are in accel.h. */
#ifndef SOCKACCEL_MAPS_H
#define SOCKACCEL_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"

/* Both ends of every accelerated connection. Sized at load time from
 * --max-conns; pinned so live connections outlive the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 131072);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_sockhash SEC(".maps");

/* Per-socket pairing state; lives and dies with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_sock_state SEC(".maps");

/* Single entry: runtime switches (struct accel_config). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct accel_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_config SEC(".maps");

/* Ports (host byte order) whose connections are never accelerated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_ports SEC(".maps");

/* cgroup v2 ids whose subtrees are never accelerated (--exclude-cgroups). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_cgroups SEC(".maps");

/* Networks whose connections are never accelerated, IPv4-mapped. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_excl_cidrs SEC(".maps");

/* One entry per tracked connection (struct ct_entry), removed by the close
 * callback when its last local end reaches TCP_CLOSE, or by the daemon's GC
 * for closes the kernel never reported. Sized from --max-conns; pinned so
 * restarts keep the history of live connections. Not preallocated: an entry
 * freed while another CPU still holds a pointer to it stays valid memory
 * until RCU says otherwise. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_conntrack SEC(".maps");

/* Single entry: GC hand-shake with the daemon (struct gc_state). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gc_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_gc SEC(".maps");

/* Wakes the daemon's idle GC when conntrack stops being empty, so an idle
 * daemon needs no timer at all. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_gc_wake SEC(".maps");

/* Connections a listener in scope answered the SYN of, keyed by the
 * client's view of the tuple (ISNs 0), until that client establishes. LRU:
 * a record lost to a SYN flood only leaves that connection on TCP. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sock_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_servers SEC(".maps");

/* Client ends whose server never joined (struct lonely_event), for the
 * daemon to take out of the sockhash. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_lonely SEC(".maps");

/* Sockets seen using a call the redirect path does not honour (struct
 * use_mark), by struct sock address. LRU: a mark is never worth failing
 * for, and one evicted before it was consumed only leaves that connection
 * as it was. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct use_mark);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_use_marks SEC(".maps");

/* Single entry: struct use_gate. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct use_gate);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_use_gate SEC(".maps");

/* Services the daemon learned to keep on TCP (struct learned_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct learned_key);
	__type(value, struct learned_use);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_learned SEC(".maps");

/* Detector events for the daemon's log (struct use_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_events SEC(".maps");

/* Counters (struct accel_stats), one copy per CPU. Updated two ways, by
 * who can interrupt whom on one CPU: sk_msg runs only in a sender's process
 * context, where nothing else writes its four counters, so it adds plainly
 * on the per-message path; every other program (sock_ops, setsockopt, the
 * detectors) can be interrupted by sock_ops in softirq counting the same
 * field, so those add with __sync_fetch_and_add. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct accel_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sa_stats SEC(".maps");

static __always_inline struct accel_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_stats, &zero);
}

static __always_inline struct accel_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_config, &zero);
}

static __always_inline struct use_gate *use_gate(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sa_use_gate, &zero);
}

#endif
