#!/usr/bin/env python3
"""Checks a passthrough yardstick (floor, floor_uring, floor_sockmap) end to
end before its figures are trusted: a TLS-looking first record followed by
0 to 300,000 more bytes and a half-close must come back byte for byte
through an echo backend, with the backend's half-close passed back; plain
HTTP must be closed without reaching the backend; several clients at once
must each get their own bytes.

    python3 bench/tools/check_floor.py PATH_TO_BINARY [...]

Exit status 0 when every binary passes. Each case is bounded (10 s)."""
import os
import socket
import subprocess
import sys
import threading
import time


class Echo:
    """An echo backend on 127.0.0.1 that half-closes after the client's EOF."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c):
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def round_trip(port, extra, out):
    body = os.urandom(200)
    sent = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body + os.urandom(extra)
    got = bytearray()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        out.append(False)
        return
    try:
        c.sendall(sent[:205])
        time.sleep(0.02)   # the hello alone first, as a TLS client sends it

        def reader():
            try:
                while True:
                    b = c.recv(65536)
                    if not b:
                        return
                    got.extend(b)
            except OSError:
                return

        t = threading.Thread(target=reader)
        t.start()
        c.sendall(sent[205:])
        c.shutdown(socket.SHUT_WR)
        t.join(10)
    except OSError:
        pass   # a reset or a timeout: the bytes below will not match
    finally:
        c.close()
    out.append(bytes(got) == sent)


def check(binary):
    echo = Echo()
    port = free_port()
    proc = subprocess.Popen([binary, str(port), str(echo.port)])
    failures = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    return [f"{binary} did not listen"]
                time.sleep(0.05)
        time.sleep(0.2)
        if proc.poll() is not None:
            return [f"{binary} exited ({proc.returncode})"]
        for extra in (0, 1, 1000, 100000, 300000):
            out = []
            round_trip(port, extra, out)
            if not out[0]:
                failures.append(f"{extra} bytes behind the hello did not come back whole")
        before = echo.accepted
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        if c.recv(100) != b"":
            failures.append("plain HTTP got an answer")
        c.close()
        if echo.accepted != before:
            failures.append("plain HTTP reached the backend")
        outs = []
        threads = [threading.Thread(target=round_trip, args=(port, 5000 * i, outs)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        if outs.count(True) != 16:
            failures.append(f"{16 - outs.count(True)} of 16 concurrent clients did not get their bytes back")
    finally:
        proc.terminate()
        proc.wait(10)
    return failures


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for binary in argv:
        failures = check(binary)
        print(f"{binary}: " + ("ok" if not failures else "; ".join(failures)))
        bad += bool(failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
