#!/usr/bin/env python3
"""Blocking-socket peers for sockaccel's transition tests.

Written the way many Python, Ruby, PHP and C servers are: one thread per
connection, plain blocking recv/sendall, no timeouts, no O_NONBLOCK. Go's
runtime never sleeps inside recv(2), so only a program like this one can see
what a blocking reader sees when a connection changes path under it.

  blockpeer.py echo ADDR PORT CONNS [waitall] [slow] [sink] [SOCKOPT...]
      Accept CONNS connections; echo each one back until EOF. Prints
      "listening", then one line per connection, "ok BYTES" or
      "error ERRNO-NAME after BYTES". With waitall, every recv asks for
      MSG_WAITALL (a full 64 KiB unless the stream ends); with slow, it
      pauses 2 ms after each recv; with sink, it reads to EOF and answers
      nothing; with tcpbytes, each ok line ends with tcp_acked=N, the bytes
      this end sent through TCP (tcpi_bytes_acked).
  blockpeer.py duplex HOST PORT CONNS BYTES [blocking] [SOCKOPT...]
      Open CONNS connections (with a timeout); on each, one thread sends
      BYTES of a seeded stream and shuts down writing while another reads
      the echo and checks it. Prints one line per connection, "ok BYTES" or
      "error WHAT after BYTES". With blocking, the socket is blocking after
      its connect (reader and writer threads both sleep in the kernel).
  blockpeer.py rr HOST PORT [SOCKOPT...]
      One connection: requests of 1 byte to 64 KiB, each sent with
      sendall by a second thread while the first reads the answer back in
      full and checks it before the next request. Prints "ok REQUESTS BYTES" or "error WHAT after REQUESTS".
  blockpeer.py churn HOST PORT CONNS [SOCKOPT...]
      CONNS connections one after another: connect, close. Prints "ok
      CONNS" or "error WHAT after N".

  blockpeer.py suite HOST PORT CONNS BYTES CHURN [SOCKOPT...]
      duplex (its clients poll: see TestBlockingDuplexClientOwnShutdown),
      rr and churn one after the other, in one process (against one echo
      server taking CONNS + 1 + CHURN connections); norr leaves rr out.

  SOCKOPT: rcvbuf=N and sndbuf=N (SO_RCVBUF/SO_SNDBUF before connect or
  listen), rcvlowat=N (SO_RCVLOWAT, on the listener or the connecting
  socket), nodelay (TCP_NODELAY), cork (each answer, or each request,
  sent between TCP_CORK on and off), fastopen (a listener takes TCP Fast
  Open; a client connects with its first send, MSG_FASTOPEN),
  fastopen-connect (a client sets TCP_FASTOPEN_CONNECT and its connect
  waits for the first send), blocking-connect. A client connects with a
  timeout (a non-blocking connect, which --conservative accelerates)
  unless blocking-connect or fastopen says otherwise, and uses its socket
  blocking from then on (poll: with a timeout, so Python polls). (duplex
  with SOCKOPT words connects this way; without any, as described above.)
  blockpeer.py lonely-server ADDR PORT BYTES
  blockpeer.py lonely-client HOST PORT BYTES
      One connection, accepted, or connected with a timeout (non-blocking
      at establishment, as --conservative accelerates) and then switched to
      blocking mode. One thread sends BYTES of a seeded stream and shuts
      down writing while another sits in blocking recv until EOF: meant for
      a peer that is not accelerated, so that every send goes through TCP.
      Prints "ok SENT SENT_SHA256 GOT GOT_SHA256" or "error WHAT after GOT".

  blockpeer.py halfclose-server ADDR PORT BYTES [peer [pause]]
  blockpeer.py halfclose-client HOST PORT BYTES [peer [pause]]
      One connection, accepted, or connected with a timeout and then
      blocking (what --conservative accelerates), used the way a
      thread-per-direction proxy uses its blocking sockets: one thread
      sits in blocking recv until EOF while another sends BYTES and, once
      the reader is asleep in recv, calls shutdown(SHUT_WR). With peer,
      the other end instead: a polling socket (a timeout) that reads to
      EOF first and only then sends BYTES and closes, so the proxy end's
      reader is always asleep when its writer shuts down; with pause, it
      answers 200 ms after EOF (a backend that takes its time), so that
      reader is still asleep after the shutdown. Prints
      "listening" (server), then "ok SENT GOT" or "error WHAT after GOT".

Exit status 0 only if every connection said ok.
"""

import errno
import hashlib
import socket
import struct
import sys
import threading
import time

CHUNK = 64 << 10


def pattern(seed, size):
    """A deterministic stream, cheap to generate and to check."""
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
    full, rest = divmod(size, CHUNK)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


def err_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else repr(e)


TCP_FASTOPEN_CONNECT = 30


class Opts:
    """The words after a mode's arguments."""

    def __init__(self, words):
        self.words = set(w for w in words if "=" not in w)
        self.values = dict(w.split("=", 1) for w in words if "=" in w)

    def has(self, word):
        return word in self.words

    def before_connect(self, s):
        """Options an application sets on a new socket, before connect or
        listen."""
        for name, opt in (("rcvbuf", socket.SO_RCVBUF), ("sndbuf", socket.SO_SNDBUF), ("rcvlowat", socket.SO_RCVLOWAT)):
            if name in self.values:
                s.setsockopt(socket.SOL_SOCKET, opt, int(self.values[name]))
        if self.has("nodelay"):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def sendall(self, s, data):
        if self.has("cork"):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        s.sendall(data)
        if self.has("cork"):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)

    def connect(self, host, port, first=b""):
        """Connects as the options say and sends first (with the connect,
        under fastopen). Returns the socket."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        self.before_connect(s)
        if self.has("fastopen"):
            # A blocking connect carrying the first bytes in its SYN once
            # the client has a cookie.
            n = s.sendto(first, socket.MSG_FASTOPEN, (host, port))
            first = first[n:]
        else:
            if self.has("fastopen-connect"):
                s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
            if not self.has("blocking-connect"):
                s.settimeout(30)
            s.connect((host, port))
            s.settimeout(600 if self.has("poll") else None)
        if first:
            self.sendall(s, first)
        return s


def listen(addr, port, backlog, opts):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ln = socket.socket(family, socket.SOCK_STREAM)
    ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    opts.before_connect(ln)
    ln.bind((addr, port))
    if opts.has("fastopen"):
        ln.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, backlog)
    # Room for every connection of a churn even when accept lags: with
    # SYN cookies a full accept queue drops the final ACK and the
    # connection is lost without the client knowing (seen here with
    # tcp_syncookies=2 and a backlog of 103).
    ln.listen(max(backlog, 1024))
    return ln


def echo(addr, port, conns, flags=0, pause=0.0, opts=Opts([])):
    ln = listen(addr, port, conns, opts)
    print("listening", flush=True)
    results = []
    lock = threading.Lock()

    def serve(c):
        total = 0
        try:
            while True:
                data = c.recv(CHUNK, flags)
                if not data:
                    break
                if pause:
                    time.sleep(pause)
                if not opts.has("sink"):
                    opts.sendall(c, data)
                total += len(data)
            line = "ok %d" % total
            if opts.has("tcpbytes"):
                # tcpi_bytes_acked: what this end sent through TCP
                # (redirected bytes never enter its sequence space).
                info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
                line += " tcp_acked=%d" % struct.unpack_from("=Q", info, 120)[0]
        except OSError as e:
            line = "error %s after %d" % (err_name(e), total)
        c.close()
        with lock:
            results.append(line)
            print(line, flush=True)

    threads = []
    for _ in range(conns):
        c, _ = ln.accept()
        t = threading.Thread(target=serve, args=(c,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return all(r.startswith("ok") for r in results)


def read_to_eof(s, h):
    """Reads s to EOF into hash h; returns the bytes read, or the OSError
    that ended it, with the bytes read before it as its got."""
    got = 0
    try:
        while True:
            data = s.recv(CHUNK)
            if not data:
                return got
            h.update(data)
            got += len(data)
    except OSError as e:
        e.got = got
        return e


def full_duplex(s, blocks, opts=None, wait_reader=False):
    """Sends blocks on one thread, then shuts down writing, while this one
    reads to EOF in blocking recv; closes s. With wait_reader, the shutdown
    waits until this thread sleeps in recv. Returns an error line or None,
    the bytes read and their sha256."""
    send_err = []
    reader = [threading.get_native_id()]

    def send():
        try:
            for block in blocks:
                if opts is not None:
                    opts.sendall(s, block)
                else:
                    s.sendall(block)
            while wait_reader and len(reader) == 1 and not asleep_in_recv(reader[0]):
                time.sleep(0.001)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append("send %s" % err_name(e))

    w = threading.Thread(target=send)
    w.start()
    h = hashlib.sha256()
    line = None
    got = read_to_eof(s, h)
    if isinstance(got, OSError):
        line = "error recv %s after %d" % (err_name(got), got.got)
        got = got.got
    reader.append("done")
    w.join()
    s.close()
    if line is None and send_err:
        line = "error %s after %d" % (send_err[0], got)
    return line, got, h


def one_connection(server, addr, port, timeout=None):
    """Accepts one connection on addr:port (server; prints "listening"
    first) or connects to it with a timeout, as --conservative
    accelerates; then sets timeout (None: blocking)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if server:
        ln = socket.socket(family, socket.SOCK_STREAM)
        ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ln.bind((addr, port))
        ln.listen(1)
        print("listening", flush=True)
        s, _ = ln.accept()
        ln.close()
    else:
        s = socket.create_connection((addr, port), timeout=30)
    s.settimeout(timeout)
    return s


def lonely(mode, addr, port, size):
    s = one_connection(mode == "lonely-server", addr, port)
    sent = hashlib.sha256()

    def blocks():
        for block in pattern("lonely", size):
            sent.update(block)
            yield block

    line, got, h = full_duplex(s, blocks())
    if line is None:
        line = "ok %d %s %d %s" % (size, sent.hexdigest(), got, h.hexdigest())
    print(line, flush=True)
    return line.startswith("ok")


RECVFROM = {"x86_64": 45, "aarch64": 207}


def asleep_in_recv(tid):
    """Whether thread tid of this process sleeps in recvfrom(2)."""
    import platform
    try:
        with open("/proc/self/task/%d/stat" % tid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/self/task/%d/syscall" % tid) as f:
            nr = f.read().split()[0]
    except OSError:
        return False
    return state == "S" and nr == str(RECVFROM.get(platform.machine(), -1))


def halfclose(mode, addr, port, size, peer, pause=False):
    s = one_connection(mode == "halfclose-server", addr, port, 600 if peer else None)
    mine, theirs = ("peer", "proxy") if peer else ("proxy", "peer")
    want = hashlib.sha256()
    for block in pattern(theirs, size):
        want.update(block)
    if peer:
        h = hashlib.sha256()
        line = None
        got = read_to_eof(s, h)
        try:
            if isinstance(got, OSError):
                raise got
            if pause:
                time.sleep(0.2)
            for block in pattern(mine, size):
                s.sendall(block)
        except OSError as e:
            got = getattr(got, "got", got)
            line = "error %s after %d" % (err_name(e), got)
        s.close()
    else:
        line, got, h = full_duplex(s, pattern(mine, size), wait_reader=True)
    if line is None:
        if got != size:
            line = "error short %d of %d" % (got, size)
        elif h.digest() != want.digest():
            line = "error corrupt %d bytes" % got
        else:
            line = "ok %d %d" % (size, got)
    print(line, flush=True)
    return line.startswith("ok")


def duplex(host, port, conns, size, blocking=False, opts=None):
    results = []
    lock = threading.Lock()

    def run(i):
        blocks = pattern(i, size)
        try:
            if opts is not None:
                s = opts.connect(host, port, next(blocks) if opts.has("fastopen") else b"")
            elif blocking:
                # Connect with a timeout (a non-blocking connect, which
                # --conservative accelerates), then use the socket
                # blocking: what Java's Socket.connect(addr, timeout)
                # followed by stream I/O does.
                s = socket.create_connection((host, port), timeout=30)
                s.settimeout(None)
            else:
                s = socket.create_connection((host, port))
                # A client with a timeout (Python then polls a
                # non-blocking socket).
                s.settimeout(600)
        except OSError as e:
            with lock:
                results.append("error connect %s" % err_name(e))
            return
        line, got, h = full_duplex(s, blocks, opts)
        if line is None:
            want = hashlib.sha256()
            for block in pattern(i, size):
                want.update(block)
            if got != size:
                line = "error short %d of %d" % (got, size)
            elif h.digest() != want.digest():
                line = "error corrupt %d bytes" % got
            else:
                line = "ok %d" % got
        with lock:
            results.append(line)
            print(line, flush=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(results) == conns and all(r.startswith("ok") for r in results)


def request_response(host, port, opts):
    sizes = [1, 2, 3, 100, 1000, 1460, 4096, 16384, 65535, 65536]
    done = 0
    total = 0
    try:
        first = b"\x01"
        s = opts.connect(host, port, first if opts.has("fastopen") else b"")
        for rnd in range(20):
            for size in sizes:
                msg = hashlib.sha256(b"%d %d" % (rnd, size)).digest() * (size // 32 + 1)
                msg = msg[:size]
                sender = None
                if done == 0 and opts.has("fastopen"):
                    msg = first  # the request the connect carried
                else:
                    # Sent while this thread reads the answer: a request
                    # larger than what the buffers of both ends hold
                    # would otherwise deadlock against an echo.
                    sender = threading.Thread(target=opts.sendall, args=(s, msg))
                    sender.start()
                got = b""
                while len(got) < len(msg):
                    data = s.recv(len(msg) - len(got))
                    if not data:
                        raise EOFError("early EOF")
                    got += data
                if sender:
                    sender.join()
                if got != msg:
                    print("error answer differs after %d" % done, flush=True)
                    return False
                done += 1
                total += len(msg)
    except (OSError, EOFError) as e:
        print("error %s after %d" % (err_name(e), done), flush=True)
        return False
    s.close()
    print("ok %d %d" % (done, total), flush=True)
    return True


def churn(host, port, conns, opts):
    done = 0
    try:
        for _ in range(conns):
            s = opts.connect(host, port)
            s.close()
            done += 1
    except OSError as e:
        print("error %s after %d" % (err_name(e), done), flush=True)
        return False
    print("ok %d" % done, flush=True)
    return True


def main():
    mode = sys.argv[1]
    if mode == "echo":
        opts = Opts(sys.argv[5:])
        ok = echo(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                  socket.MSG_WAITALL if opts.has("waitall") else 0, 0.002 if opts.has("slow") else 0.0, opts)
    elif mode in ("lonely-server", "lonely-client"):
        ok = lonely(mode, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode in ("halfclose-server", "halfclose-client"):
        words = sys.argv[5:]
        ok = halfclose(mode, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "peer" in words, "pause" in words)
    elif mode == "duplex":
        words = sys.argv[6:]
        opts = Opts(words) if words not in ([], ["blocking"]) else None  # the original two modes
        ok = duplex(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), words == ["blocking"], opts)
    elif mode == "rr":
        ok = request_response(sys.argv[2], int(sys.argv[3]), Opts(sys.argv[4:]))
    elif mode == "suite":
        host, port, conns, size, churns = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        opts = Opts(sys.argv[7:])
        ok = duplex(host, port, conns, size, opts=Opts(sys.argv[7:] + ["poll"]))
        if not opts.has("norr"):
            ok = request_response(host, port, opts) and ok
        ok = churn(host, port, churns, opts) and ok
    elif mode == "churn":
        ok = churn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Opts(sys.argv[5:]))
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
