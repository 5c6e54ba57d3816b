#!/usr/bin/python3
"""Traffic for the bad-network test (test/badnet/run.sh); standard library only.

  traffic.py serve NAME HOST:PORT...     TCP backends (asyncio, one process)
  traffic.py transfers HOST:PORT N MIN_MB MAX_MB SEED TIMEOUT
                                         N concurrent verified transfers; JSON
  traffic.py dns HOST:PORT N RATE        N DNS queries at RATE/s; JSON
  traffic.py hold HOST:PORT N TIMEOUT    N idle connections: who served each,
                                         and when each ended; JSON
  traffic.py stall HOST:PORT N SIZE PAUSE TIMEOUT
                                         N verified uploads to backends that
                                         read nothing for PAUSE s; JSON
  traffic.py abandon HOST:PORT N SEED    N transfers given up half-way (closed
                                         or reset); JSON

The protocol: the client sends one line "OP SIZE SEED\\n", then
  up    the client sends SIZE bytes and half-closes; the backend answers
        "COUNT SHA256\\n" of what it read, and closes
  down  the backend sends SIZE bytes and closes; the client half-closes right
        after its line ("down-hc") or only at the end ("down")
  echo  the backend echoes until EOF, then closes; the client sends SIZE
        bytes while reading the echo, and half-closes when it has sent all
  hold  the backend answers "NAME\\n" and then echoes
  stall as "up", but the backend reads nothing for the first SEED % 1000
        seconds after the line (a backend that stops reading, then resumes)
The bytes are a seeded pseudo-random stream that both ends can generate, so
every byte is checked (SHA-256 on both ends) without storing it.
"""
import asyncio
import hashlib
import json
import random
import socket
import struct
import sys
import time

CHUNK = 65536


def stream(seed, size):
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def digest(seed, size):
    h = hashlib.sha256()
    for c in stream(seed, size):
        h.update(c)
    return h.hexdigest()


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


async def read_to_eof(reader):
    """Reads to EOF: (byte count, SHA-256 hex digest)."""
    h, count = hashlib.sha256(), 0
    while True:
        d = await reader.read(CHUNK)
        if not d:
            return count, h.hexdigest()
        h.update(d)
        count += len(d)


# --- backends -------------------------------------------------------------------

async def serve_conn(name, reader, writer):
    try:
        line = await reader.readline()
        op, size, seed = line.decode().split()
        size, seed = int(size), int(seed)
        if op in ("up", "stall"):
            if op == "stall":
                await asyncio.sleep(seed % 1000)
            count, h = await read_to_eof(reader)
            writer.write(f"{count} {h}\n".encode())
        elif op in ("down", "down-hc"):
            for c in stream(seed, size):
                writer.write(c)
                await writer.drain()
        elif op in ("echo", "hold"):
            if op == "hold":
                writer.write(f"{name}\n".encode())
            while True:
                d = await reader.read(CHUNK)
                if not d:
                    break
                writer.write(d)
                await writer.drain()
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, ValueError, OSError):
        writer.transport.abort()


async def serve(names_addrs):
    servers = []
    for name, a in names_addrs:
        host, port = addr(a)
        servers.append(await asyncio.start_server(
            lambda r, w, n=name: serve_conn(n, r, w), host, port, backlog=4096, reuse_address=True))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


# --- clients --------------------------------------------------------------------

async def transfer(target, op, size, seed):
    host, port = target
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{op} {size} {seed}\n".encode())
    if op == "up":
        for c in stream(seed, size):
            writer.write(c)
            await writer.drain()
        writer.write_eof()
        reply = (await reader.read()).decode().split()
        want = [str(size), digest(seed, size)]
        if reply != want:
            return f"backend read {reply[:1]} bytes, digest {'ok' if reply[1:] == want[1:] else 'differs'}"
    elif op in ("down", "down-hc"):
        if op == "down-hc":
            writer.write_eof()
        count, h = await read_to_eof(reader)
        if count != size or h != digest(seed, size):
            return f"read {count} of {size} bytes, digest {'ok' if h == digest(seed, size) else 'differs'}"
    elif op == "echo":
        async def send():
            for c in stream(seed, size):
                writer.write(c)
                await writer.drain()
            writer.write_eof()
        sender = asyncio.ensure_future(send())
        count, h = await read_to_eof(reader)
        await sender
        if count != size or h != digest(seed, size):
            return f"echoed {count} of {size} bytes"
    writer.close()
    return None


async def transfers(target, n, min_mb, max_mb, seed, timeout):
    rng = random.Random(seed)
    ops = ["up", "down-hc", "down", "echo"]
    jobs = []
    for i in range(n):
        size = rng.randint(int(min_mb * 1048576), int(max_mb * 1048576))
        jobs.append((ops[i % len(ops)], size, seed * 100000 + i))

    results = []

    async def one(op, size, s):
        t0 = time.monotonic()
        try:
            err = await asyncio.wait_for(transfer(target, op, size, s), timeout)
        except asyncio.TimeoutError:
            err = f"stalled: not done after {timeout} s"
        except (ConnectionError, OSError) as e:
            err = f"{type(e).__name__}: {e}"
        results.append({"op": op, "size": size, "seconds": round(time.monotonic() - t0, 2), "error": err})

    t0 = time.monotonic()
    await asyncio.gather(*(one(*j) for j in jobs))
    failed = [r for r in results if r["error"]]
    secs = sorted(r["seconds"] for r in results)
    total = sum(r["size"] * (2 if r["op"] == "echo" else 1) for r in results)
    print(json.dumps({"transfers": n, "failed": len(failed), "failures": failed[:10],
                      "bytes": total, "seconds": round(time.monotonic() - t0, 1),
                      "slowest": secs[-1] if secs else 0, "median": secs[len(secs) // 2] if secs else 0}))


async def stall(target, n, size, pause, timeout):
    """N concurrent uploads of SIZE bytes each to backends that read nothing
    for PAUSE seconds. How far each client got shows whether lb pushed back:
    the bytes each had handed to its socket halfway through the pause
    ("half" on stderr) and one second before its end ("late"), when lb's
    RSS is sampled; then every upload must arrive whole once the backends
    read again."""
    host, port = target
    sent = [0] * n
    marks = {}

    async def one(i):
        seed = (i + 1) * 1000 + int(pause)  # the backend's pause: seed % 1000
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"stall {size} {seed}\n".encode())
        for c in stream(seed, size):
            writer.write(c)
            await writer.drain()
            sent[i] += len(c)
        writer.write_eof()
        reply = (await reader.read()).decode().split()
        writer.close()
        want = [str(size), digest(seed, size)]
        if reply != want:
            return f"backend read {reply[:1]} bytes of {size}, digest {'ok' if reply[1:] == want[1:] else 'differs'}"
        return None

    async def guarded(i):
        try:
            return await asyncio.wait_for(one(i), timeout)
        except asyncio.TimeoutError:
            return f"stalled: not done after {timeout} s"
        except (ConnectionError, OSError) as e:
            return f"{type(e).__name__}: {e}"

    async def watch():
        for name, at in (("half", pause / 2), ("late", pause - 1)):
            await asyncio.sleep(at - (time.monotonic() - t0))
            marks[name] = list(sent)
            print(name, flush=True, file=sys.stderr)

    t0 = time.monotonic()
    watcher = asyncio.ensure_future(watch())
    errors = await asyncio.gather(*(guarded(i) for i in range(n)))
    await watcher
    print(json.dumps({"transfers": n, "size": size, "failed": sum(1 for e in errors if e),
                      "failures": [e for e in errors if e][:10], "half": marks["half"], "late": marks["late"],
                      "seconds": round(time.monotonic() - t0, 1)}))


async def abandon(target, n, seed):
    """N transfers given up half-way: downloads closed with unread bytes or
    reset (SO_LINGER 0) after reading part, uploads closed or reset after
    sending part. lb must free what each held; the caller checks."""
    host, port = target
    rng = random.Random(seed)
    kinds = []

    async def one(i):
        op = ("down", "up", "echo")[i % 3]
        reset = rng.random() < 0.5
        size = 8 << 20
        # An echo client reads nothing back: it must not send more than the
        # path holds in both directions, or it would wait for ever.
        keep = rng.randint(64 << 10, (2 << 20) if op != "echo" else (512 << 10))
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"{op} {size} {seed * 1000 + i}\n".encode())
        got = 0
        if op == "down":
            while got < keep:
                d = await reader.read(CHUNK)
                if not d:
                    break
                got += len(d)
        else:
            for c in stream(seed * 1000 + i, keep):
                writer.write(c)
                await writer.drain()
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
        kinds.append(f"{op}-{'reset' if reset else 'close'}")

    results = await asyncio.gather(*(asyncio.wait_for(one(i), 120) for i in range(n)), return_exceptions=True)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    print(json.dumps({"abandoned": len(kinds), "kinds": sorted(set(kinds)), "errors": errors[:10]}))


def dns_query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def dns(target, n, rate):
    """Sends N queries at RATE per second, then waits 2 s for stragglers;
    counts distinct IDs answered with NOERROR."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    answered = set()
    t0 = time.monotonic()
    sent = 0
    end = None
    while True:
        now = time.monotonic()
        if sent < n and now >= t0 + sent / rate:
            s.sendto(dns_query(sent, "test.lb"), target)
            sent += 1
            continue
        if sent == n and end is None:
            end = now + 2.0
        if end is not None and now >= end:
            break
        try:
            d = s.recv(512)
            qid, flags = struct.unpack(">HH", d[:4])
            if flags & 0x8000 and flags & 0xF == 0:
                answered.add(qid)
        except BlockingIOError:
            time.sleep(0.001)
    print(json.dumps({"sent": n, "answered": len(answered), "lost_pct": round(100.0 * (n - len(answered)) / n, 2)}))


async def hold(target, n, timeout):
    """N idle connections (a greeting each, then nothing): which backend took
    each, and how long after the greeting each was closed (null: still open
    at TIMEOUT)."""
    host, port = target
    out = []

    async def one():
        t0 = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            # Keepalive here too: lb may end a connection with a reset, and a
            # lost reset is not sent again; an idle client learns of it from
            # the reset that answers its next probe. Probes are no data: they
            # do not keep lb's idle_timeout from running.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 3)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 20)
            writer.write(b"hold 0 0\n")
            name = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
        except (OSError, asyncio.TimeoutError) as e:
            out.append({"backend": None, "error": f"{type(e).__name__}: {e}"})
            return
        connect_s = round(time.monotonic() - t0, 2)
        print(f"open {name}", file=sys.stderr, flush=True)
        t1 = time.monotonic()
        ended = None
        try:
            d = await asyncio.wait_for(reader.read(1), timeout)
            ended = "eof" if not d else "data"
        except asyncio.TimeoutError:
            pass
        except OSError as e:
            ended = type(e).__name__
        out.append({"backend": name, "connect_s": connect_s, "ended": ended,
                    "closed_after_s": round(time.monotonic() - t1, 2) if ended else None})
        writer.transport.abort()

    await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps(out))


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "serve":
        name = a[0]
        asyncio.run(serve([(f"{name}{i + 1}", x) for i, x in enumerate(a[1:])]))
    elif cmd == "transfers":
        asyncio.run(transfers(addr(a[0]), int(a[1]), float(a[2]), float(a[3]), int(a[4]), float(a[5])))
    elif cmd == "dns":
        dns(addr(a[0]), int(a[1]), float(a[2]))
    elif cmd == "hold":
        asyncio.run(hold(addr(a[0]), int(a[1]), float(a[2])))
    elif cmd == "stall":
        asyncio.run(stall(addr(a[0]), int(a[1]), int(a[2]), float(a[3]), float(a[4])))
    elif cmd == "abandon":
        asyncio.run(abandon(addr(a[0]), int(a[1]), int(a[2])))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
