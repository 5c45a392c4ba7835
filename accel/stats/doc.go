//go:build linux

package stats

// KeyDoc is one row of README's table of status --json keys: the keys it
// explains and what they mean, in README's words. TestREADMEKeyTable keeps
// README's table equal to these rows, and every key of Status in exactly
// one of them.
type KeyDoc struct {
	Keys    []string
	Meaning string
	// Also are keys the meaning names without listing them.
	Also []string
}

// KeyDocs is README's key table, in its order.
var KeyDocs = []KeyDoc{
	{Keys: []string{"pin_dir"}, Meaning: "the pin dir read (the daemon's own when the answer came from its API socket)"},
	{Keys: []string{"attached"}, Meaning: "the sock_ops link is attached to a cgroup"},
	{Keys: []string{"cgroup", "cgroup_id"}, Meaning: "where it is attached"},
	{Keys: []string{"sockhash_entries", "max_conns"}, Meaning: "sockets in the map now, connection capacity"},
	{Keys: []string{"redirected_msgs", "redirected_bytes"}, Meaning: "sends moved straight to the peer"},
	{Keys: []string{"passed_msgs", "passed_bytes"}, Meaning: "sends left on TCP (may under-count: after a failed TCP push the kernel reuses the verdict without running the program)"},
	{Keys: []string{"redirect_errors"}, Meaning: "the peer vanished from the map while this socket was redirecting to it (it closed)"},
	{Keys: []string{"established", "inserted"}, Meaning: "sockets seen established in scope, sockets put in the map"},
	{Keys: []string{"map_full", "excluded_port", "excluded_cidr", "excluded_cgroup", "excluded_learned", "early_data", "insert_errors", "storage_errors", "disabled", "blocking", "ulp", "repair", "no_peer"}, Meaning: "sockets not accelerated, by reason (`ulp`: the socket has a ULP, such as every MPTCP subflow, which the kernel refuses in a sockhash; these used to show up as `insert_errors`. `excluded_learned`: a learned exclusion matched. `repair`: the socket was in `TCP_REPAIR` mode, see Security; `no_peer`: the other end is not a local socket in scope, see [Lonely ends](#lonely-ends), which for an accepted end includes a SYN without a pairing token)"},
	{Keys: []string{"token_no_room", "token_unconfirmed"}, Meaning: "clients not accelerated because the pairing token did not make the round trip although a listener in scope answered them: no room for the option in the SYN (TCP-MD5, a Fast Open cookie), or a SYN-ACK without its echo (option stripped on the way, SYN cookie); see [Finding the true peer](#finding-the-true-peer)"},
	{Keys: []string{"off_backlog"}, Meaning: "sends handed to TCP because the receiver was further behind than the bound"},
	{Keys: []string{"off_setsockopt"}, Meaning: "directions taken off the fast path for good (SO_RCVLOWAT, TCP_ULP, SO_ZEROCOPY)"},
	{Keys: []string{"resumed"}, Meaning: "directions back on the fast path after the receiver read every byte that went through TCP"},
	{Keys: []string{"off_splice", "off_waitall", "off_oob", "off_fionread"}, Meaning: "connections taken off the fast path for good when one end first used splice, `recv(MSG_WAITALL)`, `MSG_OOB` or (where the kernel gets it wrong) FIONREAD: the direction into that end, both for `MSG_OOB`"},
	{Keys: []string{"splice_stalled"}, Meaning: "sockets spliced from while redirected bytes were unread: those connections stall (see Compatibility)"},
	{Keys: []string{"oob_misread"}, Meaning: "`recv(MSG_OOB)` calls on sockets holding redirected bytes: they returned an ordinary byte instead of the urgent one"},
	{Keys: []string{"fionread_misread"}, Meaning: "`ioctl(FIONREAD)` calls on sockets holding redirected bytes, on a kernel whose FIONREAD leaves those out (the probe decides; 0 elsewhere): they reported too little"},
	{Keys: []string{"shutdown_wake"}, Meaning: "`shutdown(SHUT_WR)` or `SHUT_RDWR` calls on blocking accelerated sockets while another thread slept on them (a thread-per-direction proxy half-closing while its reader waits): that reader's `recv` is woken into `EAGAIN` if nothing is queued; the service is learned (see Compatibility)"},
	{Keys: []string{"rcvlowat_lowered"}, Meaning: "SO_RCVLOWAT calls on sockets that had bytes redirected into them, applied as 1"},
	{Keys: []string{"kernel_probes"}, Meaning: "what the behaviour probes found on this kernel (see [Behaviour probes](#behaviour-probes)): `name`, `result`, `as_tcp`, `detail`, `policy`; `kernel_probes_kernel`, `kernel_probes_at`: the release probed and when", Also: []string{"kernel_probes_kernel", "kernel_probes_at"}},
	{Keys: []string{"learned_exclusions"}, Meaning: "services kept on TCP after a stalled splice, a misread urgent byte, FIONREAD or a shutdown that woke a blocking reader: `port` (the server's), `end` (`server`: the service's own sockets; `client`: sockets connecting to it), `cgroup_id` and `cgroup` (of the sockets at that end; 0 = any, from an older version), `reasons`, `comm`, `pid`, `learned_at` (pinned; kept across restarts until cleanup)"},
	{Keys: []string{"learned_exclusions_count"}, Meaning: "how many there are (the only thing about them the TCP `/status` shows)"},
	{Keys: []string{"conntrack_enabled", "conntrack_entries", "conntrack_capacity", "conntrack_load"}, Meaning: "tracked connections now, capacity (`--max-conns`), entries/capacity"},
	{Keys: []string{"conntrack_created", "conntrack_full"}, Meaning: "entries created; connections not tracked because the map was full (they are not accelerated either: nothing would bound their backlog)"},
	{Keys: []string{"closed_direct", "closed_gc", "gc_runs"}, Meaning: "entries removed by the close callback, by the fallback GC; GC passes"},
	{Keys: []string{"retired"}, Meaning: "connections off the fast path both ways for good whose sockets the daemon took out of the sockhash once nothing redirected was unread: plain TCP sockets again"},
	{Keys: []string{"lonely"}, Meaning: "client ends the daemon took out of the sockhash because their server never joined although a listener in scope answered them (see [Lonely ends](#lonely-ends)): plain TCP sockets again"},
	{Keys: []string{"lonely_direct"}, Meaning: "client ends sock_ops took out of the sockhash (and conntrack) as their accepted end was refused (a full map, an insert error, an exclusion that changed since the SYN, ...) or because conntrack was full, before any byte could reach them (see [Lonely ends](#lonely-ends)): plain TCP sockets again"},
}
