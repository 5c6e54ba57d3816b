"""Memory per idle TCP connection: open N connections through a proxy to a
backend that accepts and never speaks, and divide the growth of the proxy's
resident memory (the whole process tree: nginx's master and worker) by N.

Both ends live in the harness process, on its (load) CPU: the backend is a
listening socket created before the proxies start, so their configurations
can name its port, and accepted only during the measurement."""
import errno
import selectors
import socket
import struct
import time

from .procs import rss_kib

# Connects not yet seen by the backend: keeps the proxy's accept queue short
# so no SYN is dropped and retried a second later.
MAX_IN_FLIGHT = 256
_LINGER_RST = struct.pack("ii", 1, 0)


class IdleBackend:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class IdleError(Exception):
    pass


def accept_pending(backend, accepted):
    """Accepts every connection waiting on the backend's socket into `accepted`."""
    while True:
        try:
            s, _ = backend.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        accepted.append(s)


def _settled_rss(pid, timeout=3.0):
    """RSS once two readings 200 ms apart agree (or the last one at timeout)."""
    deadline = time.monotonic() + timeout
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = rss_kib(pid)
        if now is None or now == last:
            return now
        last = now
    return last


def _drop(socks):
    # RST instead of FIN: no TIME_WAIT left to eat the ephemeral port range.
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        s.close()


def measure(backend, proxy_pid, port, n, timeout):
    """Returns {"bytes_per_conn", "rss_before_kib", "rss_after_kib", "conns"}."""
    before = _settled_rss(proxy_pid)
    if before is None:
        raise IdleError("proxy process is gone")
    sel = selectors.DefaultSelector()
    sel.register(backend.sock, selectors.EVENT_READ, None)
    clients, accepted = [], []
    connected = 0
    deadline = time.monotonic() + timeout
    try:
        while connected < n or len(accepted) < n:
            if time.monotonic() > deadline:
                raise IdleError(f"after {timeout:.0f} s: {connected} of {n} connected, "
                                f"{len(accepted)} reached the backend")
            while len(clients) < n and len(clients) - len(accepted) < MAX_IN_FLIGHT:
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.setblocking(False)
                clients.append(c)
                c.connect_ex(("127.0.0.1", port))
                sel.register(c, selectors.EVENT_WRITE, "client")
            for key, _ in sel.select(0.2):
                if key.data is None:
                    accept_pending(backend, accepted)
                else:
                    c = key.fileobj
                    sel.unregister(c)
                    err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise IdleError(f"connect through the proxy failed: {errno.errorcode.get(err, err)}")
                    connected += 1
        after = _settled_rss(proxy_pid)
        if after is None:
            raise IdleError("proxy process is gone")
        return {"bytes_per_conn": (after - before) * 1024.0 / n,
                "rss_before_kib": before, "rss_after_kib": after, "conns": n}
    finally:
        sel.close()
        _drop(clients)
        _drop(accepted)
        # Let the proxy see the resets and free its sessions before the next row.
        time.sleep(0.5)
