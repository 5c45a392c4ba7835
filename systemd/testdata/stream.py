"""One TCP transfer for make test-systemd, written to FILE as "BYTES SHA256".

stream.py serve ADDR PORT FILE          accept one connection, read to EOF
stream.py send ADDR PORT FILE MIB PACE  send MIB MiB in 256 KiB sends, PACE s apart
stream.py splice ADDR PORT FILE         accept one connection, let 64 KiB arrive, then
                                        splice from it: FILE gets what splice did
stream.py poke ADDR PORT FILE           send 64 KiB, wait for the server's answer:
                                        FILE gets how that wait ended
stream.py sandbox PID NETNS             what resetting a stalled connection needs
                                        (borrowing a socket of process PID), and
                                        what it no longer needs (entering NETNS)

The client socket has a timeout, so it is in non-blocking mode: sockaccel's
default (--conservative) accelerates such connections.
"""
import hashlib
import socket
import sys
import time


def serve(addr, port, out):
    ln = socket.create_server((addr, int(port)))
    conn, _ = ln.accept()
    conn.settimeout(120)
    h, n = hashlib.sha256(), 0
    while True:
        b = conn.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    conn.close()
    with open(out, "w") as f:
        f.write(f"{n} {h.hexdigest()}\n")


def send(addr, port, out, mib, pace):
    s = socket.create_connection((addr, int(port)), timeout=120)
    h, n = hashlib.sha256(), 0
    block = 256 << 10
    for i in range(int(mib) * 4):
        b = (i.to_bytes(4, "big") * (block // 4))
        s.sendall(b)
        h.update(b)
        n += len(b)
        if float(pace):
            time.sleep(float(pace))
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    with open(out, "w") as f:
        f.write(f"{n} {h.hexdigest()}\n")


def splice(addr, port, out):
    # Redirected bytes are invisible to splice: without sockaccel's reset
    # this call would wait forever.
    import os, signal
    ln = socket.create_server((addr, int(port)))
    conn, _ = ln.accept()
    time.sleep(1)
    r, w = os.pipe()

    def timeout(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    record(out, lambda: os.splice(conn.fileno(), w, 65536))


def poke(addr, port, out):
    s = socket.create_connection((addr, int(port)), timeout=60)
    s.sendall(b"x" * 65536)
    record(out, lambda: len(s.recv(1)))


def record(out, call):
    """FILE gets how call() ended ("read N", "stalled" or "error ERRNO") and when."""
    import errno
    start = time.monotonic()
    try:
        res = f"read {call()}"
    except TimeoutError:
        res = "stalled"
    except OSError as e:
        res = f"error {errno.errorcode.get(e.errno, e.errno)}"
    with open(out, "w") as f:
        f.write(f"{res} after {time.monotonic() - start:.1f} s\n")


def sandbox(pid, netns):
    # Run as the unit's ExecStart (same sandbox): pidfd_getfd (CAP_SYS_PTRACE,
    # syscall filter) is needed; setns into a network namespace and a
    # sock_diag socket, what the reset needed before it disconnected the
    # borrowed socket instead, must now be refused (no CAP_SYS_ADMIN,
    # RestrictNamespaces=yes, no AF_NETLINK).
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    res = []

    def step(name, ok):
        res.append(f"{name} " + ("ok" if ok else os.strerror(ctypes.get_errno())))

    pidfd = libc.syscall(434, int(pid), 0)  # pidfd_open
    step("pidfd_open", pidfd >= 0)
    step("pidfd_getfd", pidfd >= 0 and libc.syscall(438, pidfd, 0, 0) >= 0)
    fd = os.open(netns, os.O_RDONLY)
    step("setns", libc.setns(fd, 0x40000000) == 0)  # CLONE_NEWNET
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4).close()  # NETLINK_SOCK_DIAG
        res.append("sock_diag ok")
    except OSError as e:
        res.append(f"sock_diag {e.strerror}")
    print("sandbox: " + ", ".join(res), flush=True)


if __name__ == "__main__":
    {"serve": serve, "send": send, "splice": splice, "poke": poke, "sandbox": sandbox}[sys.argv[1]](*sys.argv[2:])
