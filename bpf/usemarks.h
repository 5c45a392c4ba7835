/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Use detection: the marks the tracepoint detectors put on sockets seen
 * using a call the redirect path does not honour, how they are reported
 * to the daemon, consumed by the send path (taking the connection off the
 * fast path) and forgotten at close. Separate because marks are written by
 * the detectors and read by sk_msg and sock_ops: three entry points share
 * one protocol through sa_use_marks and sa_use_gate. */
#ifndef SOCKACCEL_USEMARKS_H
#define SOCKACCEL_USEMARKS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "accel.h"
#include "backlog.h"
#include "kernel.h"
#include "maps.h"
#include "psock.h"

/* A closed socket's address will be reused: its mark must go with it. */
static __always_inline void forget_use_mark(__u64 addr)
{
	struct use_gate *gate = use_gate();
	struct use_mark *m;

	if (!gate || gate->marks <= 0)
		return;
	m = bpf_map_lookup_elem(&sa_use_marks, &addr);
	if (!m)
		return;
	/* Whoever flips consumed settles the unconsumed count. */
	if (__sync_val_compare_and_swap(&m->consumed, 0, 1) == 0)
		__sync_fetch_and_add(&gate->unconsumed, -1);
	if (bpf_map_delete_elem(&sa_use_marks, &addr) == 0)
		__sync_fetch_and_add(&gate->marks, -1);
}

/* Tells the daemon that this connection just left the fast path in both
 * directions for good: its sockets still receive through tcp_bpf_recvmsg,
 * which ends a blocking reader's wait with EAGAIN on wake-ups that TCP
 * sends cause, and serves FIONREAD, SO_RCVLOWAT and urgent data from the
 * redirect queue. Out of the sockhash, they are plain TCP sockets again. */
static __always_inline void announce_retire(struct ct_entry *e)
{
	struct use_event *ev = bpf_ringbuf_reserve(&sa_events, sizeof(*ev), 0);

	if (!ev)
		return; /* the connection stays as it is: on TCP, in the map */
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->cookie = e->cookie[0] ? e->cookie[0] : e->cookie[1];
	ev->reason = USE_RETIRE;
	ev->fd = -1;
	bpf_ringbuf_submit(ev, 0);
}

/* Takes a connection off the fast path for good where one of its ends was
 * seen using a call the redirect path does not honour.
 *
 * Only the direction into that end goes to TCP (its reads, splices and
 * FIONREAD then see a TCP receive queue); its own sends stay redirected.
 * That matters to blocking applications: every socket in a sockhash
 * receives through tcp_bpf_recvmsg, which returns EAGAIN to a blocking
 * reader woken with nothing queued, and a socket sending through TCP wakes
 * its own readers whenever ACKs free send-buffer space. An end that keeps
 * redirecting never sends through TCP. Urgent data goes both ways to TCP
 * (a send with MSG_OOB needs TCP as much as a receive), and a connection
 * off both ways is handed back to TCP completely (announce_retire).
 *
 * Falling back is safe for recvmsg, which drains the redirect queue before
 * the TCP queue. splice reads only the TCP queue, so while the splicing end
 * still has redirected bytes unread, this keeps redirecting: bytes sent
 * through TCP now would be spliced ahead of them. */
static __always_inline void consume_use_marks(struct ct_entry *e, struct accel_stats *st, struct use_gate *gate)
{
	struct use_mark *m;
	__u32 bits, was;
	__u64 addr;
	int i;

	for (i = 0; i < 2; i++) {
		addr = e->sk[i];
		/* A closed end's address may already belong to a new socket,
		 * whose mark is not ours to take. */
		if (!addr || (e->closed & (1U << i)))
			continue;
		m = bpf_map_lookup_elem(&sa_use_marks, &addr);
		if (!m || m->consumed)
			continue;
		if (m->reasons == USE_SPLICE && psock_queued(addr))
			continue;
		if (__sync_val_compare_and_swap(&m->consumed, 0, 1) != 0)
			continue;
		__sync_fetch_and_add(&gate->unconsumed, -1);
		/* Direction d is the one sent by side d: into side i is i ^ 1. */
		bits = (m->reasons & USE_OOB) ? 3 : 1U << (i ^ 1);
		was = __sync_fetch_and_or(&e->off, bits);
		if ((was & bits) == bits)
			continue; /* already off for another reason */
		if ((was | bits) == 3)
			announce_retire(e);
		if (m->reasons & USE_SPLICE)
			__sync_fetch_and_add(&st->off_splice, 1);
		if (m->reasons & USE_WAITALL)
			__sync_fetch_and_add(&st->off_waitall, 1);
		if (m->reasons & USE_OOB)
			__sync_fetch_and_add(&st->off_oob, 1);
		if (m->reasons & USE_FIONREAD)
			__sync_fetch_and_add(&st->off_fionread, 1);
	}
}

/* Maps a psock's link list is walked for at most. */
#define PSOCK_LINKS_MAX 4

/* Whether a psock belongs to our sockhash. The detectors see every socket
 * on the host that has a psock, other sockmap users' (another sockaccel,
 * Cilium) too; a mark on one of theirs would never be cleared by our close
 * callback and could later match one of our sockets allocated at the same
 * address, taking it off the fast path for nothing. */
static __always_inline int psock_in_sockhash(struct sk_psock *psock)
{
	struct accel_config *cfg = config();
	struct list_head *head = &psock->link, *pos = NULL;
	struct sk_psock_link *l;
	struct bpf_map *map;
	__u32 id;
	int i;

	if (!cfg || !cfg->sockhash_id)
		return 1;
	if (bpf_probe_read_kernel(&pos, sizeof(pos), &head->next))
		return 0;
	for (i = 0; i < PSOCK_LINKS_MAX; i++) {
		if (!pos || pos == head)
			return 0;
		l = CORE_CONTAINER_OF(pos, struct sk_psock_link, list);
		map = NULL;
		id = 0;
		if (bpf_probe_read_kernel(&map, sizeof(map), &l->map) || !map ||
		    bpf_probe_read_kernel(&id, sizeof(id), &map->id))
			return 0;
		if (id == cfg->sockhash_id)
			return 1;
		if (bpf_probe_read_kernel(&pos, sizeof(pos), &pos->next))
			return 0;
	}
	return 0;
}

/* The struct sock behind the calling task's fd, if the fd is a socket
 * in some SOCKHASH or SOCKMAP (its sk_user_data is a psock). Read with
 * bpf_probe_read_kernel under the tracepoint's RCU read lock: a racing
 * close() yields no socket or a wrong one at worst, and a wrong mark only
 * ever costs a connection its acceleration. */
static __always_inline __u64 psock_of_fd(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = NULL;
	struct fdtable *fdt = NULL;
	struct file **fds = NULL;
	struct file *file = NULL;
	struct inode *inode = NULL;
	struct socket *sock = NULL;
	struct sock *sk = NULL;
	unsigned long user_data = 0;
	unsigned int max_fds = 0;
	unsigned short mode = 0;
	unsigned char state = 0;

	if (bpf_probe_read_kernel(&files, sizeof(files), &task->files) || !files)
		return 0;
	if (bpf_probe_read_kernel(&fdt, sizeof(fdt), &files->fdt) || !fdt)
		return 0;
	if (bpf_probe_read_kernel(&max_fds, sizeof(max_fds), &fdt->max_fds) || fd >= max_fds)
		return 0;
	if (bpf_probe_read_kernel(&fds, sizeof(fds), &fdt->fd) || !fds)
		return 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if (bpf_probe_read_kernel(&inode, sizeof(inode), &file->f_inode) || !inode)
		return 0;
	if (bpf_probe_read_kernel(&mode, sizeof(mode), &inode->i_mode) || (mode & S_IFMT) != S_IFSOCK)
		return 0;
	if (bpf_probe_read_kernel(&sock, sizeof(sock), &file->private_data) || !sock)
		return 0;
	if (bpf_probe_read_kernel(&sk, sizeof(sk), &sock->sk) || !sk)
		return 0;
	if (bpf_probe_read_kernel(&user_data, sizeof(user_data), &sk->sk_user_data))
		return 0;
	if (!(user_data & SK_USER_DATA_PSOCK))
		return 0;
	if (!psock_in_sockhash((struct sk_psock *)(user_data & SK_USER_DATA_PTRMASK)))
		return 0;
	/* A socket past TCP_CLOSE (reset, or closed with the application
	 * still holding it) has lost its mark with its conntrack entry; a
	 * new one would report it again. */
	if (bpf_probe_read_kernel(&state, sizeof(state), &sk->__sk_common.skc_state) || state == TCP_CLOSE)
		return 0;
	return (__u64)(unsigned long)sk;
}

/* Tells the daemon who used a call the redirect path cannot serve while
 * redirected bytes were queued at the socket (reason USE_SPLICE: splice
 * found them, so that connection stalls; USE_OOB: recv(MSG_OOB) returned
 * the first of them instead of the urgent byte), so it can log it and keep
 * that service off the fast path from then on. */
/* The daemon's own PID namespace, written at load. Reported PIDs are the
 * ones the daemon can open (pidfd_open, to reset a stalled connection):
 * a daemon in a container has a PID namespace of its own, where the host's
 * PIDs mean nothing. 0: report the host's. */
volatile const __u64 daemon_pidns_dev;
volatile const __u64 daemon_pidns_ino;

/* The current process's PID as the daemon sees it, 0 when it lives outside
 * the daemon's PID namespace (the daemon could not reach it by any PID). */
static __always_inline __u32 current_pid_for_daemon(void)
{
	struct bpf_pidns_info ns = {};

	if (!daemon_pidns_ino)
		return bpf_get_current_pid_tgid() >> 32;
	if (bpf_get_ns_current_pid_tgid(daemon_pidns_dev, daemon_pidns_ino, &ns, sizeof(ns)))
		return 0;
	return ns.tgid;
}

static __always_inline void report_use(__u64 addr, __u64 fd, __u32 reason, __u32 queued)
{
	struct sock *sk = (struct sock *)addr;
	struct use_event *ev;
	__u16 dport = 0;

	ev = bpf_ringbuf_reserve(&sa_events, sizeof(*ev), 0);
	if (!ev)
		return;
	ev->cookie = 0;
	bpf_probe_read_kernel(&ev->cookie, sizeof(ev->cookie), &sk->__sk_common.skc_cookie.counter);
	ev->pid = current_pid_for_daemon();
	ev->queued = queued;
	ev->local_port = 0;
	bpf_probe_read_kernel(&ev->local_port, sizeof(ev->local_port), &sk->__sk_common.skc_num);
	bpf_probe_read_kernel(&dport, sizeof(dport), &sk->__sk_common.skc_dport);
	ev->remote_port = bpf_ntohs(dport);
	ev->reason = reason;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	ev->fd = (__s32)fd;
	ev->_pad = 0;
	ev->cgroup_id = sock_cgroup_id_probed(sk);
	bpf_ringbuf_submit(ev, 0);
}

/* The first splice found redirected bytes unread: those can only come out
 * through recv, and the application is waiting on splice. */
static __always_inline void report_stalled_splice(__u64 addr, __u64 fd)
{
	struct accel_stats *st = stats();
	__u32 queued = psock_queued(addr);

	if (!queued || !st)
		return;
	__sync_fetch_and_add(&st->splice_stalled, 1);
	report_use(addr, fd, USE_SPLICE, queued);
}

/* A call that read a socket holding redirected bytes as if they were not
 * there, counted and reported on every such call, not only a socket's
 * first. USE_OOB: tcp_bpf_recvmsg reads the redirect queue whatever the
 * flags, so recv(MSG_OOB) returned the first of those bytes instead of the
 * urgent byte, and that byte is gone from the stream; nothing at syscall
 * entry can stop it. USE_FIONREAD: on kernels whose FIONREAD counts only
 * the TCP receive queue it reported too little, and an application sizing
 * its read or deciding the peer is done by it can stall. */
static __always_inline void report_misread(__u64 addr, __u64 fd, __u32 reason)
{
	struct accel_stats *st = stats();
	__u32 queued = psock_queued(addr);

	if (!queued || !st)
		return;
	if (reason == USE_OOB)
		__sync_fetch_and_add(&st->oob_misread, 1);
	else
		__sync_fetch_and_add(&st->fionread_misread, 1);
	report_use(addr, fd, reason, queued);
}

/* A socket's wait queue, as much of it as is read here: sk->sk_wq points
 * at its socket's socket_wq, whose wait queue holds one entry per sleeper
 * (a blocking recv or send in sk_wait_event: woken_wake_function, with the
 * sleeping task as private; an epoll instance: ep_poll_callback, private
 * NULL; poll/select: pollwake, private its poll table). */
struct wait_queue_head {
	struct list_head head;
} __attribute__((preserve_access_index));
struct socket_wq {
	struct wait_queue_head wait;
} __attribute__((preserve_access_index));
struct wait_queue_entry {
	void *private;
	void *func;
	struct list_head entry;
} __attribute__((preserve_access_index));
struct sock___wq {
	struct socket_wq *sk_wq;
} __attribute__((preserve_access_index));

/* The address of the kernel's woken_wake_function, written at load from
 * /proc/kallsyms; 0 when kptr_restrict hides it, and then any sleeper
 * other than the caller counts (an epoll or poll waiter too: a false
 * positive only keeps a service on TCP). */
volatile const __u64 woken_wake_fn;

/* Sleepers walked at most on one socket's wait queue. */
#define WAITERS_MAX 8

/* Whether a thread other than the caller sleeps on sk's wait queue: what
 * the wake-up of shutdown() (inet_shutdown -> sk_state_change) would end
 * with EAGAIN in tcp_bpf_recvmsg, had it nothing queued. Read with
 * bpf_probe_read_kernel while the queue may change: a wrong answer costs
 * at most a service its acceleration, or one report. */
static __always_inline int other_sleeper(struct sock *sk)
{
	struct sock___wq *s = (struct sock___wq *)sk;
	struct socket_wq *wq = NULL;
	struct list_head *head, *pos = NULL;
	struct wait_queue_entry *w;
	void *self = (void *)bpf_get_current_task();
	void *private, *func;
	int i;

	if (bpf_probe_read_kernel(&wq, sizeof(wq), &s->sk_wq) || !wq)
		return 0;
	head = &wq->wait.head;
	if (bpf_probe_read_kernel(&pos, sizeof(pos), &head->next))
		return 0;
	for (i = 0; i < WAITERS_MAX; i++) {
		if (!pos || pos == head)
			return 0;
		w = CORE_CONTAINER_OF(pos, struct wait_queue_entry, entry);
		private = NULL;
		func = NULL;
		if (bpf_probe_read_kernel(&private, sizeof(private), &w->private) ||
		    bpf_probe_read_kernel(&func, sizeof(func), &w->func))
			return 0;
		if (private != self && (!woken_wake_fn || (__u64)(unsigned long)func == woken_wake_fn))
			return 1;
		if (bpf_probe_read_kernel(&pos, sizeof(pos), &pos->next))
			return 0;
	}
	return 0;
}

/* shutdown(fd, SHUT_WR or SHUT_RDWR) on a blocking socket in our sockhash
 * with another thread asleep on it: a thread-per-direction proxy's writer
 * half-closing while its reader waits in recv. The shutdown's wake-up will
 * end that recv with EAGAIN and nothing here can stop it: counted, and
 * reported so the daemon learns the service. The connection is not taken
 * off the fast path: the wake-up comes within this very call, and sending
 * through TCP would only add wake-ups of the same kind. */
static __always_inline void report_shutdown_wake(__u64 fd)
{
	struct accel_stats *st = stats();
	struct socket *sock = NULL;
	struct file *file = NULL;
	unsigned int f_flags = 0;
	struct sock *sk;
	__u64 addr;

	if (!st)
		return;
	addr = psock_of_fd(fd);
	if (!addr)
		return;
	sk = (struct sock *)addr;
	if (bpf_probe_read_kernel(&sock, sizeof(sock), &sk->sk_socket) || !sock ||
	    bpf_probe_read_kernel(&file, sizeof(file), &sock->file) || !file ||
	    bpf_probe_read_kernel(&f_flags, sizeof(f_flags), &file->f_flags) || (f_flags & O_NONBLOCK))
		return;
	if (!other_sleeper(sk))
		return;
	__sync_fetch_and_add(&st->shutdown_wake, 1);
	report_use(addr, fd, USE_SHUTDOWN, 0);
}

static __always_inline __u64 mark_use(__u64 fd, __u32 reason)
{
	struct use_gate *gate = use_gate();
	struct use_mark fresh = { .reasons = reason };
	struct use_mark *m;
	__u64 addr;

	if (!gate)
		return 0;
	addr = psock_of_fd(fd);
	if (!addr)
		return 0;
	m = bpf_map_lookup_elem(&sa_use_marks, &addr);
	if (m) {
		if (!m->consumed && !(m->reasons & reason))
			__sync_fetch_and_or(&m->reasons, reason);
		return addr;
	}
	if (bpf_map_update_elem(&sa_use_marks, &addr, &fresh, BPF_NOEXIST) == 0) {
		__sync_fetch_and_add(&gate->marks, 1);
		__sync_fetch_and_add(&gate->unconsumed, 1);
		if (reason == USE_SPLICE)
			report_stalled_splice(addr, fd);
	}
	return addr;
}

#endif
