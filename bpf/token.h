/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* Pairing token: a secret per connection, carried in a TCP header option
 * during the handshake, folded into both ends' keys.
 *
 * The tuple and ISNs alone can be matched by a local process: it controls
 * its own namespace and addresses, a Linux ISN is a hash of the tuple under
 * one host-wide secret plus a 64 ns clock (so a same-tuple connection made
 * in another namespace at about the same time predicts it), and SYN cookies
 * make the server's ISN a function of the client's. A socket holding the
 * mirror key of a victim end would receive its bytes. The token is what
 * nobody but the two ends can know: the connecting end draws 64 bits at
 * connect() and sends them in its SYN (experimental option 254, RFC 6994
 * ExID), the listener echoes them in its SYN-ACK, and both ends XOR them
 * into the ISN fields of their keys. An end pairs only with the token:
 *
 *   - a client only if its SYN-ACK echoed its own token, i.e. a listener in
 *     scope running this program read it (a remote or out-of-scope server,
 *     a middlebox stripping the option either way, a SYN cookie, a SYN-ACK
 *     with no room: no echo, plain TCP);
 *   - an accepted end only if its SYN carried one, read back at
 *     establishment from the SYN its listener saved (TCP_SAVE_SYN, set when
 *     the listener in scope called listen()).
 *
 * A listener that called listen() before this program was attached keeps
 * no SYN and writes no SYN-ACK option (sock_ops can set neither on a
 * socket it sees no callback for). Every listener's answer records the
 * client's tuple in sa_servers as from such a listener, and a listener of
 * ours overwrites that as it writes its SYN-ACK; a client whose SYN-ACK has
 * no echo and whose record says so pairs without the echo and
 * sends the token once more in the handshake's final ACK, and the accepted
 * end reads it from that ACK. If that ACK is lost the accepted end is
 * established by the client's first data, without a token, and stays
 * plain TCP: its client is then a lonely end (see report_lonely).
 *
 * Nothing here ever fails a handshake: no room for the option, no saved
 * SYN, no key: that connection is simply not paired.
 *
 * The draw is SipHash-2-4 of the socket cookie and prandom draws under a key the
 * daemon writes from the kernel's CSPRNG at every start: bpf_get_prandom_u32
 * is a linear generator shared by every BPF program on the CPU, and a
 * process that reads its own connections' tokens off its own SYNs could
 * reconstruct its state and predict the next ones. */
#ifndef SOCKACCEL_TOKEN_H
#define SOCKACCEL_TOKEN_H

#define TCPOPT_EXP 254
/* RFC 6994 experiment id ("SA"), not IANA-registered: a receiver that does
 * not know it ignores the option. */
#define TOKEN_EXID 0x5341
#define TOKEN_OPT_LEN 12 /* kind, length, ExID, 64-bit token */
#define ENOENT 2
#define ENOMSG 42
#define SOL_TCP 6
#define TCP_SAVE_SYN 27
#define TCPHDR_SYN 0x02
#define TCPHDR_ACK 0x10

struct token_opt {
	__u8 kind;
	__u8 len;
	__u16 exid; /* network byte order */
	__u32 tok[2];
} __attribute__((packed));

struct token_key {
	__u64 k[2];
};

/* What a listener answering a SYN is, as sa_servers records it for the
 * client. */
enum token_server {
	TOKEN_SERVER_ECHO = 1,   /* keeps SYNs, echoes the token */
	TOKEN_SERVER_LEGACY = 2, /* listen() came before us: token in the ACK */
};

/* Why token_fold found no token. */
enum token_miss {
	TOKEN_NO_ROOM = 1,  /* our SYN had no room for the option */
	TOKEN_UNCONFIRMED,  /* our SYN-ACK did not echo our token */
	TOKEN_ABSENT,       /* the accepted end's SYN carried none */
};

/* Single entry: the SipHash key, written by the daemon before sock_ops is
 * attached. Not pinned: each start draws a new one, and no pin ever holds
 * it. All zero: no token is drawn (and nothing is paired). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct token_key);
} sa_token_key SEC(".maps");

#define SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIP_ROUND(v0, v1, v2, v3)                                                           \
	do {                                                                                \
		v0 += v1; v1 = SIP_ROTL(v1, 13); v1 ^= v0; v0 = SIP_ROTL(v0, 32);           \
		v2 += v3; v3 = SIP_ROTL(v3, 16); v3 ^= v2;                                  \
		v0 += v3; v3 = SIP_ROTL(v3, 21); v3 ^= v0;                                  \
		v2 += v1; v1 = SIP_ROTL(v1, 17); v1 ^= v2; v2 = SIP_ROTL(v2, 32);           \
	} while (0)

/* SipHash-2-4 of the 16-byte message (m0, m1). */
static __always_inline __u64 siphash16(const struct token_key *key, __u64 m0, __u64 m1)
{
	__u64 v0 = key->k[0] ^ 0x736f6d6570736575ULL;
	__u64 v1 = key->k[1] ^ 0x646f72616e646f6dULL;
	__u64 v2 = key->k[0] ^ 0x6c7967656e657261ULL;
	__u64 v3 = key->k[1] ^ 0x7465646279746573ULL;
	__u64 b = 16ULL << 56;

	v3 ^= m0;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= m0;
	v3 ^= m1;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= m1;
	v3 ^= b;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	SIP_ROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* The write-header callbacks cost a program run per segment: on only for a
 * client's SYN (and its final ACK to a listener from before us) and a
 * listener's SYN-ACKs, off again at establishment. */
static __always_inline void token_cb_off(struct bpf_sock_ops *skops, struct sock_state *keep)
{
	__u32 cb = skops->bpf_sock_ops_cb_flags;

	if (keep && (keep->flags & SOCK_F_TOKEN_ACK))
		return;
	if (cb & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG)
		bpf_sock_ops_cb_flags_set(skops, cb & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* At establishment, after track_established: callbacks off, unless the
 * final ACK still has to carry the token. A tracked end had them turned off
 * already, with the state callback turned on (ct_track: one call). */
static __always_inline void token_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;

	if (!(skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG))
		return;
	sk = skops->sk;
	token_cb_off(skops, sk ? bpf_sk_storage_get(&sa_sock_state, sk, 0, 0) : NULL);
}

/* After establishment, once the final ACK went out (or could not carry
 * the token): no more options from this socket. */
static __always_inline void token_ack_done(struct bpf_sock_ops *skops, struct sock_state *state)
{
	state->flags &= ~SOCK_F_TOKEN_ACK;
	token_cb_off(skops, NULL);
}

/* A listener of ours answers a SYN: its client's record (note_server, just
 * before) says it echoes. Written in place: an update of an LRU map takes a
 * fresh element and frees the old one, for one changed word. */
static __always_inline void token_mark_echo(struct bpf_sock_ops *skops)
{
	struct sock_key server = {}, client = {};
	__u32 family = skops->family;
	__u32 *kind;

	if (family != AF_INET && family != AF_INET6)
		return;
	skops_tuple(skops, family, &server);
	key_mirror(&client, &server);
	kind = bpf_map_lookup_elem(&sa_servers, &client);
	if (kind && *kind != TOKEN_SERVER_ECHO)
		*kind = TOKEN_SERVER_ECHO;
}

/* connect(): draw this connection's token and keep it in the socket's state
 * until establishment (see SOCK_F_TOKEN), then have the SYN carry it. */
static __always_inline void token_on_connect(struct bpf_sock_ops *skops)
{
	struct accel_config *cfg = config();
	struct token_key *key;
	struct bpf_sock *sk = skops->sk;
	struct sock_state *state;
	__u32 zero = 0;
	__u64 tok;

	if (!cfg || (cfg->flags & CONFIG_F_NO_NEW) || !sk)
		return;
	key = bpf_map_lookup_elem(&sa_token_key, &zero);
	if (!key || !(key->k[0] | key->k[1]))
		return;
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state)
		return;
	/* The cookie makes every input distinct; the prandom draws are only
	 * there so that equal cookies across reboots (the key changes anyway)
	 * still differ. (Not the clock: a read of kvm-clock costs more than
	 * the whole SipHash.) */
	tok = siphash16(key, bpf_get_socket_cookie(skops),
			((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32());
	state->ct_key.local_isn = (__u32)tok;
	state->ct_key.remote_isn = (__u32)(tok >> 32);
	state->flags = (state->flags & ~SOCK_F_TOKEN_NO_ROOM) | SOCK_F_TOKEN;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* listen(): keep each SYN (to read the token at establishment) and call us
 * for each SYN-ACK (to echo it). Accepted sockets inherit both; the
 * callback is turned off for them at establishment. */
static __always_inline void token_on_listen(struct bpf_sock_ops *skops)
{
	int one = 1;

	bpf_setsockopt(skops, SOL_TCP, TCP_SAVE_SYN, &one, sizeof(one));
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* Finds our option in the current segment, or with BPF_LOAD_HDR_OPT_TCP_SYN
 * in the SYN that started this connection; 0 if found. */
static __always_inline int token_load(struct bpf_sock_ops *skops, struct token_opt *opt, __u64 flags)
{
	long n;

	opt->kind = TCPOPT_EXP;
	opt->len = 4; /* search by kind and ExID */
	opt->exid = bpf_htons(TOKEN_EXID);
	opt->tok[0] = 0;
	opt->tok[1] = 0;
	n = bpf_load_hdr_opt(skops, opt, sizeof(*opt), flags);
	if (n != TOKEN_OPT_LEN || opt->len != TOKEN_OPT_LEN)
		return n < 0 ? (int)n : -ENOMSG;
	return 0;
}

/* What a segment of ours carries: the client's drawn token in its SYN (and
 * in its final ACK to a listener from before us), or the token of the SYN a
 * listener answers. 0 if this segment carries none (a SYN-ACK in SYN cookie
 * mode neither: the cookie keeps no SYN to read the token from at
 * establishment, so the client must not pair). *client is the client's
 * state, *final_ack whether this is that ACK. */
static __always_inline int token_outgoing(struct bpf_sock_ops *skops, struct token_opt *opt,
					  struct sock_state **client, int *final_ack)
{
	__u32 tcp_flags = skops->skb_tcp_flags;
	struct bpf_sock *sk;
	struct sock_state *state;

	*client = NULL;
	*final_ack = 0;
	if (!(tcp_flags & TCPHDR_SYN)) {
		if (!(tcp_flags & TCPHDR_ACK))
			return -ENOMSG;
		sk = skops->sk;
		if (!sk)
			return -ENOMSG;
		state = bpf_sk_storage_get(&sa_sock_state, sk, 0, 0);
		if (!state || !(state->flags & SOCK_F_TOKEN_ACK))
			return -ENOMSG;
		/* The key is the ISNs XOR the token: take the ISNs back out. */
		opt->kind = TCPOPT_EXP;
		opt->len = TOKEN_OPT_LEN;
		opt->exid = bpf_htons(TOKEN_EXID);
		opt->tok[0] = state->ct_key.local_isn ^ (skops->snd_una - (__u32)skops->bytes_acked);
		opt->tok[1] = state->ct_key.remote_isn ^ (skops->rcv_nxt - (__u32)skops->bytes_received - 1);
		*client = state;
		*final_ack = 1;
		return 0;
	}
	if (tcp_flags & TCPHDR_ACK) {
		if (skops->op == BPF_SOCK_OPS_HDR_OPT_LEN_CB)
			token_mark_echo(skops);
		if (skops->args[0] == BPF_WRITE_HDR_TCP_SYNACK_COOKIE)
			return -ENOMSG;
		return token_load(skops, opt, BPF_LOAD_HDR_OPT_TCP_SYN);
	}
	sk = skops->sk;
	if (!sk)
		return -ENOMSG;
	state = bpf_sk_storage_get(&sa_sock_state, sk, 0, 0);
	if (!state || !(state->flags & SOCK_F_TOKEN))
		return -ENOMSG;
	opt->kind = TCPOPT_EXP;
	opt->len = TOKEN_OPT_LEN;
	opt->exid = bpf_htons(TOKEN_EXID);
	opt->tok[0] = state->ct_key.local_isn;
	opt->tok[1] = state->ct_key.remote_isn;
	*client = state;
	return 0;
}

static __always_inline void token_hdr_len(struct bpf_sock_ops *skops)
{
	struct sock_state *client;
	struct token_opt opt;
	int final_ack;

	if (token_outgoing(skops, &opt, &client, &final_ack))
		return;
	if (final_ack) {
		/* Only a pure ACK: a data segment was sized without the
		 * option. Then the server gets no token (see above). */
		if (skops->skb_len || bpf_reserve_hdr_opt(skops, TOKEN_OPT_LEN, 0))
			token_ack_done(skops, client);
		return;
	}
	/* No room (TCP-MD5, MPTCP, other programs' options): this
	 * connection goes without a token, and so unpaired. */
	if (bpf_reserve_hdr_opt(skops, TOKEN_OPT_LEN, 0) && client)
		client->flags = (client->flags & ~SOCK_F_TOKEN) | SOCK_F_TOKEN_NO_ROOM;
}

static __always_inline void token_hdr_write(struct bpf_sock_ops *skops)
{
	struct sock_state *client;
	struct token_opt opt;
	int final_ack;
	long err;

	if (token_outgoing(skops, &opt, &client, &final_ack))
		return;
	/* A failure leaves the reserved bytes as NOPs: no echo, or no token
	 * in the SYN, and the connection is not paired. */
	err = bpf_store_hdr_opt(skops, &opt, sizeof(opt), 0);
	if (final_ack)
		token_ack_done(skops, client);
	else if (err && client)
		client->flags = (client->flags & ~SOCK_F_TOKEN) | SOCK_F_TOKEN_NO_ROOM;
}

/* At establishment: XORs this connection's token into key's ISN fields (the
 * client's ISN with its low half, the server's with its high half, so both
 * ends' keys stay mirror images), or says why there is none. 0 when folded;
 * otherwise the stats field to count. Clears the client's stash. */
static __always_inline int token_fold(struct bpf_sock_ops *skops, struct sock_state *state, struct sock_key *key)
{
	struct token_opt opt;
	__u32 had = state->flags;
	int err;

	state->flags &= ~(SOCK_F_TOKEN | SOCK_F_TOKEN_NO_ROOM);
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		__u32 t0 = state->ct_key.local_isn, t1 = state->ct_key.remote_isn;

		if (!(had & SOCK_F_TOKEN))
			return (had & SOCK_F_TOKEN_NO_ROOM) ? TOKEN_NO_ROOM : TOKEN_UNCONFIRMED;
		/* The SYN-ACK must echo exactly what we sent, unless it came
		 * from a listener from before us, which echoes nothing: the
		 * final ACK then takes the token to it. */
		err = token_load(skops, &opt, 0);
		if (err == -ENOMSG) {
			struct sock_key tuple = *key;
			__u32 *kind;

			tuple.local_isn = 0;
			tuple.remote_isn = 0;
			kind = bpf_map_lookup_elem(&sa_servers, &tuple);
			if (!kind || *kind != TOKEN_SERVER_LEGACY)
				return TOKEN_UNCONFIRMED;
			state->flags |= SOCK_F_TOKEN_ACK;
		} else if (err || opt.tok[0] != t0 || opt.tok[1] != t1) {
			return TOKEN_UNCONFIRMED;
		}
		key->local_isn ^= t0;
		key->remote_isn ^= t1;
		return 0;
	}
	/* No saved SYN (a listener from before we attached: the final ACK
	 * has it; a SYN cookie) or no option in it (a client elsewhere, or
	 * stripped on the way). */
	err = token_load(skops, &opt, BPF_LOAD_HDR_OPT_TCP_SYN);
	if (err == -ENOENT)
		err = token_load(skops, &opt, 0);
	if (err)
		return TOKEN_ABSENT;
	key->local_isn ^= opt.tok[1];
	key->remote_isn ^= opt.tok[0];
	return 0;
}

#endif
