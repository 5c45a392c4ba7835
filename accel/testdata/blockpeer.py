#!/usr/bin/env python3
"""Blocking-socket peers for sockaccel's transition tests.

Written the way many Python, Ruby, PHP and C servers are: one thread per
connection, plain blocking recv/sendall, no timeouts, no O_NONBLOCK. Go's
runtime never sleeps inside recv(2), so only a program like this one can see
what a blocking reader sees when a connection changes path under it.

  blockpeer.py echo ADDR PORT CONNS [waitall] [slow]
      Accept CONNS connections; echo each one back until EOF. Prints
      "listening", then one line per connection, "ok BYTES" or
      "error ERRNO-NAME after BYTES". With waitall, every recv asks for
      MSG_WAITALL (a full 64 KiB unless the stream ends); with slow, it
      pauses 2 ms after each recv.
  blockpeer.py duplex HOST PORT CONNS BYTES [blocking]
      Open CONNS connections (with a timeout); on each, one thread sends
      BYTES of a seeded stream and shuts down writing while another reads
      the echo and checks it. Prints one line per connection, "ok BYTES" or
      "error WHAT after BYTES". With blocking, the socket is blocking after
      its connect (reader and writer threads both sleep in the kernel).
  blockpeer.py lonely-server ADDR PORT BYTES
  blockpeer.py lonely-client HOST PORT BYTES
      One connection, accepted, or connected with a timeout (non-blocking
      at establishment, as --conservative accelerates) and then switched to
      blocking mode. One thread sends BYTES of a seeded stream and shuts
      down writing while another sits in blocking recv until EOF: meant for
      a peer that is not accelerated, so that every send goes through TCP.
      Prints "ok SENT SENT_SHA256 GOT GOT_SHA256" or "error WHAT after GOT".

Exit status 0 only if every connection said ok.
"""

import errno
import hashlib
import socket
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


def echo(addr, port, conns, flags=0, pause=0.0):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ln = socket.socket(family, socket.SOCK_STREAM)
    ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ln.bind((addr, port))
    ln.listen(conns)
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
                c.sendall(data)
                total += len(data)
            line = "ok %d" % total
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


def full_duplex(s, blocks):
    """Sends blocks on one thread, then shuts down writing, while this one
    reads to EOF in blocking recv; closes s. Returns an error line or None,
    the bytes read and their sha256."""
    send_err = []

    def send():
        try:
            for block in blocks:
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append("send %s" % err_name(e))

    w = threading.Thread(target=send)
    w.start()
    h = hashlib.sha256()
    got = 0
    line = None
    try:
        while True:
            data = s.recv(CHUNK)
            if not data:
                break
            h.update(data)
            got += len(data)
    except OSError as e:
        line = "error recv %s after %d" % (err_name(e), got)
    w.join()
    s.close()
    if line is None and send_err:
        line = "error %s after %d" % (send_err[0], got)
    return line, got, h


def lonely(mode, addr, port, size):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if mode == "lonely-server":
        ln = socket.socket(family, socket.SOCK_STREAM)
        ln.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ln.bind((addr, port))
        ln.listen(1)
        print("listening", flush=True)
        s, _ = ln.accept()
        ln.close()
    else:
        s = socket.create_connection((addr, port), timeout=30)
        s.settimeout(None)  # blocking from here on
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


def duplex(host, port, conns, size, blocking=False):
    results = []
    lock = threading.Lock()

    def run(i):
        try:
            if blocking:
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
        line, got, h = full_duplex(s, pattern(i, size))
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


def main():
    mode = sys.argv[1]
    if mode == "echo":
        opts = sys.argv[5:]
        ok = echo(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                  socket.MSG_WAITALL if "waitall" in opts else 0, 0.002 if "slow" in opts else 0.0)
    elif mode in ("lonely-server", "lonely-client"):
        ok = lonely(mode, sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "duplex":
        ok = duplex(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:] == ["blocking"])
    else:
        sys.exit("unknown mode " + mode)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
