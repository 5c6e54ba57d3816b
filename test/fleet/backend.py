#!/usr/bin/env python3
"""A tiny TCP backend for the fleet test (Python standard library only).

    backend.py NAME ADDRESS PORT

On every connection it first writes one line, "NAME PEER\n", where PEER is the
address the connection came from: behind lb that is the lb instance's own
address on the backend network, so the client learns both which backend and
which instance carried it. Then it answers lines:

    ping       -> "pong\n"
    sleep MS   -> "sleeping\n" at once, "done\n" MS milliseconds later, then
                  it closes (a request that is in flight while the test acts)

It prints "ready" on stdout once it listens, and runs until killed. Each
connection has its own thread; the test opens at most a few hundred.
"""
import socket
import sys
import threading
import time


def serve(conn: socket.socket, name: str) -> None:
    try:
        peer = conn.getpeername()[0]
        conn.sendall(f"{name} {peer}\n".encode())
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                words = line.decode(errors="replace").split()
                if words == ["ping"]:
                    conn.sendall(b"pong\n")
                elif len(words) == 2 and words[0] == "sleep":
                    conn.sendall(b"sleeping\n")
                    time.sleep(int(words[1]) / 1000.0)
                    conn.sendall(b"done\n")
                    return
                else:
                    conn.sendall(b"error\n")
    except OSError:
        # Health probes connect and close at once, and the test kills
        # connections on purpose: a broken connection is normal here.
        pass
    finally:
        conn.close()


def main() -> int:
    if len(sys.argv) != 4:
        print("usage: backend.py NAME ADDRESS PORT", file=sys.stderr)
        return 2
    name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(512)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, name), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
