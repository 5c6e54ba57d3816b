#!/usr/bin/env python3
"""The client side of the fleet test (Python standard library only).

Runs inside the client namespace as a long-lived agent: run.sh writes one
command per line on stdin; the agent prints what it measured and ends every
answer with a line "OK" or "FAIL <why>". It keeps what earlier commands saw,
so later commands can compare placements before and after an event.

    client.py --vip IP --port N --sources FIRST_IP COUNT --instance ADDR=NAME...

Every connection is made from one of COUNT source addresses (consecutive from
FIRST_IP, all local to the client namespace) to the service address. The
backend's first line, "BACKEND PEER", names the backend and, through PEER
(the lb instance's address on the backend network), the instance that
carried the connection.

Commands:
  probe NAME PER_SOURCE [instances=i1,i2] [min_share=F] [min_crossed=F]
        PER_SOURCE short connections from every source. Fails on any error,
        on a source that reached two different backends, on a flow carried
        by an instance not listed, on an instance carrying less than
        min_share of the flows, or when fewer than min_crossed of the
        sources were carried by two or more instances.
  compare OLD NEW [min_kept=F] [dead=BACKEND max_moved_others=F max_moved_total=F]
        How many sources kept their backend between two probes.
  hold-open SET COUNT [traffic=MS]
        COUNT long-lived connections (sources taken in turn), kept open as
        the set SET. With traffic=MS, a "ping" goes over each one every MS
        milliseconds (a connection that fails meanwhile counts as cut);
        without it they stay silent until hold-check.
  hold-check SET [dead_instance=NAME] [max_cut=N] [reconnect=1] [patience=S]
        Stops SET's traffic, sends "ping" on each connection and reports,
        per instance, how many still answer within S seconds (2; more when
        TCP may be retransmitting after an outage); then closes them. Fails when
        more than max_cut connections of instances other than dead_instance
        were cut. With reconnect=1, every cut connection is opened again
        from its source, which must reach the backend it had.
  drain-start MS [rate=R]
        Opens one request per source that the backend answers only after MS
        milliseconds (confirmed received before this command returns), and
        starts a stream of short requests at about R per second (a short
        request reset before its first byte is retried once: see
        short_request).
  mark
        Records "now" (run.sh sends it right after SIGTERM).
  count-after-mark NAME
        Prints how many short requests started since the mark went through
        instance NAME.
  drain-finish instance=NAME [min_after=N]
        Stops the short requests, waits for every long request, and fails if
        any request, long or short, did not get its complete answer, or if
        fewer than N short requests started after the mark reached NAME.
"""
import argparse
import collections
import ipaddress
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

CONNECT_TIMEOUT = 3.0
PARALLEL = 16


class Fail(Exception):
    pass


class ResetBeforeData(Exception):
    """The connection was reset before its first byte arrived."""


def read_line(sock: socket.socket, deadline: float) -> str:
    """Reads one line; raises OSError/Fail when the connection ends first."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Fail("timed out waiting for a line")
        sock.settimeout(left)
        try:
            data = sock.recv(256)
        except ConnectionResetError:
            if buf:
                raise
            raise ResetBeforeData("reset before the first byte") from None
        if not data:
            raise Fail("connection closed before a full line")
        buf += data
    line, rest = buf.split(b"\n", 1)
    if rest:
        raise Fail(f"unexpected bytes after a line: {rest!r}")
    return line.decode()


class Held:
    """A set of held connections; with a period, a thread sends "ping" on
    each of them every period and reads the "pong"s (non-blocking, so one
    stalled connection delays none of the others)."""

    def __init__(self, conns, period):
        self.conns = conns          # [(socket, backend, instance, source)]
        self.failed = [None] * len(conns)
        self.waiting = [0] * len(conns)   # pings sent, pong not yet read
        self.stop = threading.Event()
        self.thread = None
        if period:
            self.thread = threading.Thread(target=self.traffic, args=(period,), daemon=True)
            self.thread.start()

    def traffic(self, period):
        sel = selectors.DefaultSelector()
        bufs = [b""] * len(self.conns)
        for i, c in enumerate(self.conns):
            c[0].setblocking(False)
            sel.register(c[0], selectors.EVENT_READ, i)

        def broken(i, why):
            self.failed[i] = why
            sel.unregister(self.conns[i][0])

        while not self.stop.is_set():
            next_round = time.monotonic() + period
            for i, c in enumerate(self.conns):
                if self.failed[i] is None and not self.waiting[i]:
                    try:
                        c[0].send(b"ping\n")
                        self.waiting[i] += 1
                    except OSError as e:
                        broken(i, f"send: {e}")
            while (left := next_round - time.monotonic()) > 0 and not self.stop.is_set():
                for key, _ in sel.select(min(left, 0.1)):
                    i = key.data
                    try:
                        data = key.fileobj.recv(256)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        broken(i, f"recv: {e}")
                        continue
                    if not data:
                        broken(i, "closed")
                        continue
                    bufs[i] += data
                    while b"\n" in bufs[i]:
                        line, bufs[i] = bufs[i].split(b"\n", 1)
                        if line != b"pong":
                            broken(i, f"unexpected {line!r}")
                            break
                        self.waiting[i] -= 1
        sel.close()
        for c in self.conns:
            c[0].setblocking(True)

    def check(self, patience):
        """Stops the traffic; (answers, why not) for each connection, asking
        for an answer within `patience` seconds."""
        self.stop.set()
        if self.thread:
            self.thread.join()

        def ping(i):
            """(True, None) when connection i answers, else (False, why)."""
            sock = self.conns[i][0]
            if self.failed[i] is not None:
                return False, self.failed[i]
            try:
                sock.sendall(b"ping\n")
                want, buf = self.waiting[i] + 1, b""
                deadline = time.monotonic() + patience
                while buf.count(b"\n") < want:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False, "no answer"
                    sock.settimeout(left)
                    data = sock.recv(256)
                    if not data:
                        return False, "closed"
                    buf += data
                return (True, None) if buf == b"pong\n" * want else (False, f"unexpected {buf!r}")
            except OSError as e:
                return False, type(e).__name__

        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(ping, range(len(self.conns))))
        self.close()
        return results

    def close(self):
        self.stop.set()
        if self.thread and self.thread is not threading.current_thread():
            self.thread.join()
        for c in self.conns:
            c[0].close()


class Agent:
    def __init__(self, args):
        self.vip = args.vip
        self.port = args.port
        first = ipaddress.IPv4Address(args.sources[0])
        self.sources = [str(first + i) for i in range(int(args.sources[1]))]
        self.instance_of = dict(pair.split("=", 1) for pair in args.instance)
        self.probes = {}   # probe name -> {source: [(backend, instance), ...]}
        self.held = {}     # set name -> Held
        self.drain = None

    # -- helpers -----------------------------------------------------------
    def connect(self, source: str):
        """Connects from `source`; returns (socket, backend, instance)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((self.vip, self.port))
            words = read_line(sock, time.monotonic() + CONNECT_TIMEOUT).split()
            if len(words) != 2:
                raise Fail(f"bad greeting {words!r}")
            instance = self.instance_of.get(words[1], "?" + words[1])
            return sock, words[0], instance
        except BaseException:
            sock.close()
            raise

    def one_shot(self, source: str):
        try:
            sock, backend, instance = self.connect(source)
            sock.close()
            return backend, instance, None
        except (OSError, Fail, ResetBeforeData) as e:
            return None, None, f"{source}: {e}"

    def short_request(self, source: str):
        """one_shot, retried once after a reset before the first byte.

        When the router drops a next hop while a connection's handshake is
        under way (its SYN went to the old instance, its ACK goes to another
        one, which has no such connection and answers RST), the connection
        dies before any byte: lb never completed the handshake, let alone
        received a request, and a client retries such a reset. It happens in
        a window of microseconds per route change. A refused connection, or
        any failure after the first byte, is not retried: that is what lb
        closing its listener or connections too early would look like.
        Returns (backend, instance, error, retried)."""
        try:
            sock, backend, instance = self.connect(source)
            sock.close()
            return backend, instance, None, False
        except ResetBeforeData:
            pass
        except (OSError, Fail) as e:
            return None, None, f"{source}: {e}", False
        backend, instance, err = self.one_shot(source)
        return backend, instance, err, True

    @staticmethod
    def opts(words):
        return dict(w.split("=", 1) for w in words)

    @staticmethod
    def pct(n, d):
        return f"{n}/{d} ({100.0 * n / d:.1f}%)" if d else f"{n}/0"

    # -- commands -----------------------------------------------------------
    def cmd_probe(self, name, per_source, *rest):
        o = self.opts(rest)
        per_source = int(per_source)
        jobs = [s for s in self.sources for _ in range(per_source)]
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(self.one_shot, jobs))
        errors = [e for _, _, e in results if e]
        placement = collections.defaultdict(list)
        for source, (backend, instance, err) in zip(jobs, results):
            if not err:
                placement[source].append((backend, instance))
        self.probes[name] = placement
        flows = collections.Counter(i for p in placement.values() for _, i in p)
        total = sum(flows.values())
        print(f"{name}: {total} connections from {len(self.sources)} sources; flows per instance: "
              + ", ".join(f"{i} {self.pct(n, total)}" for i, n in sorted(flows.items())))
        by_backend = collections.Counter(p[0][0] for p in placement.values() if p)
        print(f"{name}: sources per backend: "
              + ", ".join(f"{b} {n}" for b, n in sorted(by_backend.items())))
        split = [s for s, p in placement.items() if len({b for b, _ in p}) > 1]
        crossed = sum(1 for p in placement.values() if len({i for _, i in p}) > 1)
        print(f"{name}: sources carried by 2+ instances: {self.pct(crossed, len(self.sources))}; "
              f"sources that reached more than one backend: {len(split)}")
        if errors:
            raise Fail(f"{len(errors)} connections failed, e.g. {errors[0]}")
        if split:
            s = split[0]
            raise Fail(f"source {s} reached different backends: {placement[s]}")
        if "instances" in o:
            allowed = set(o["instances"].split(","))
            stray = set(flows) - allowed
            if stray:
                raise Fail(f"flows carried by {sorted(stray)}, expected only {sorted(allowed)}")
            for i in allowed:
                share = flows.get(i, 0) / total
                if share < float(o.get("min_share", "0")):
                    raise Fail(f"instance {i} carried only {share:.1%} of the flows")
        if crossed < float(o.get("min_crossed", "0")) * len(self.sources):
            raise Fail("too few sources were carried by more than one instance")

    def cmd_compare(self, old, new, *rest):
        o = self.opts(rest)
        a, b = self.probes[old], self.probes[new]
        kept = sum(1 for s in self.sources if a[s][0][0] == b[s][0][0])
        n = len(self.sources)
        print(f"{old} -> {new}: clients keeping their backend: {self.pct(kept, n)}")
        if kept < float(o.get("min_kept", "0")) * n:
            raise Fail(f"only {kept}/{n} clients kept their backend")
        dead = o.get("dead")
        if dead:
            on_dead = [s for s in self.sources if a[s][0][0] == dead]
            others = [s for s in self.sources if a[s][0][0] != dead]
            moved_others = sum(1 for s in others if b[s][0][0] != a[s][0][0])
            still_dead = sum(1 for s in on_dead if b[s][0][0] == dead)
            moved = n - kept
            print(f"{old} -> {new}: clients of {dead}: {len(on_dead)} ({len(on_dead) / n:.1%}), "
                  f"{still_dead} still sent to it; clients of other backends moved: "
                  f"{self.pct(moved_others, len(others))}; all clients moved: {self.pct(moved, n)}")
            if still_dead:
                raise Fail(f"{still_dead} clients still reached the dead backend {dead}")
            if moved_others > float(o["max_moved_others"]) * len(others):
                raise Fail("too many clients of live backends moved")
            if moved > float(o["max_moved_total"]) * n:
                raise Fail("too many clients moved")

    def cmd_hold_open(self, name, count, *rest):
        o = self.opts(rest)
        if name in self.held:
            raise Fail(f"set {name} is open already")
        sources = [self.sources[i % len(self.sources)] for i in range(int(count))]
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(self.try_connect, sources))
        errors = [r for r in results if isinstance(r, str)]
        conns = [(r[0], r[1], r[2], s) for s, r in zip(sources, results) if not isinstance(r, str)]
        held = self.held[name] = Held(conns, float(o["traffic"]) / 1000.0 if "traffic" in o else None)
        per = collections.Counter(c[2] for c in conns)
        print(f"{name}: held connections per instance: "
              + ", ".join(f"{i} {n}" for i, n in sorted(per.items()))
              + (f"; a ping on each every {o['traffic']} ms" if "traffic" in o else "; silent"))
        if errors:
            held.close()
            del self.held[name]
            raise Fail(f"{len(errors)} connections failed, e.g. {errors[0]}")

    def try_connect(self, source):
        try:
            return self.connect(source)
        except (OSError, Fail, ResetBeforeData) as e:
            return f"{source}: {e}"

    def cmd_hold_check(self, name, *rest):
        o = self.opts(rest)
        held = self.held.pop(name)
        results = held.check(float(o.get("patience", "2")))
        alive = [ok for ok, _ in results]
        dead = o.get("dead_instance")
        per, ok = collections.Counter(), collections.Counter()
        for (_, _, instance, _), fine in zip(held.conns, alive):
            per[instance] += 1
            ok[instance] += fine
        for i in sorted(per):
            note = " (the killed instance)" if i == dead else ""
            print(f"{name}: established connections via {i}{note} still answering: {self.pct(ok[i], per[i])}")
        survivors = [i for i in per if i != dead]
        cut = sum(per[i] - ok[i] for i in survivors)
        print(f"{name}: established connections of surviving instances cut: "
              f"{self.pct(cut, sum(per[i] for i in survivors))}")
        why = collections.Counter(w for (_, _, i, _), (_, w) in zip(held.conns, results) if w and i != dead)
        if why:
            print(f"{name}: how the survivors' connections failed: "
                  + ", ".join(f"{w} {n}" for w, n in why.most_common()))
        if "max_cut" in o and cut > int(o["max_cut"]):
            raise Fail(f"{cut} established connections of surviving instances were cut")
        if o.get("reconnect") == "1":
            broken = [c for c, fine in zip(held.conns, alive) if not fine]
            with ThreadPoolExecutor(PARALLEL) as pool:
                again = list(pool.map(self.try_connect, [c[3] for c in broken]))
            same = 0
            for (_, backend, _, source), r in zip(broken, again):
                if isinstance(r, str):
                    raise Fail(f"reconnecting failed: {r}")
                r[0].close()
                if r[1] != backend:
                    raise Fail(f"{source} reached {r[1]} after reconnecting, {backend} before")
                same += 1
            print(f"{name}: cut connections reconnected to the same backend: {self.pct(same, len(broken))}")

    def cmd_drain_start(self, ms, *rest):
        o = self.opts(rest)
        rate = float(o.get("rate", "30"))
        d = self.drain = {
            "long": {},              # socket -> [source, instance, state]
            "short": [],             # (time, instance or None, error or None)
            "mark": None,
            "stop": threading.Event(),
        }

        def open_long(source):
            try:
                sock, _, instance = self.connect(source)
            except (OSError, Fail, ResetBeforeData) as e:
                return f"{source}: {e}"
            try:
                sock.sendall(f"sleep {int(ms)}\n".encode())
                if read_line(sock, time.monotonic() + CONNECT_TIMEOUT) != "sleeping":
                    raise Fail("no 'sleeping'")
                # The ACK for "sleeping" may be delayed; send it now, while
                # the route still points at this connection's instance.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                return sock, source, instance
            except (OSError, Fail, ResetBeforeData) as e:
                sock.close()
                return f"{source}: {e}"

        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(open_long, self.sources))
        errors = [r for r in results if isinstance(r, str)]
        for r in results:
            if not isinstance(r, str):
                d["long"][r[0]] = [r[1], r[2], "waiting"]
        if errors:
            raise Fail(f"{len(errors)} long requests could not start, e.g. {errors[0]}")
        d["waiter"] = threading.Thread(target=self.wait_long, args=(int(ms),), daemon=True)
        d["waiter"].start()

        def short_stream(offset, step, period):
            i = offset
            while not d["stop"].is_set():
                started = time.monotonic()
                source = self.sources[i % len(self.sources)]
                i += step
                backend, instance, err, retried = self.short_request(source)
                d["short"].append((started, instance, err, retried))
                d["stop"].wait(max(0.0, period - (time.monotonic() - started)))

        streams = 2
        d["streams"] = [threading.Thread(target=short_stream, args=(k, streams, streams / rate),
                                         daemon=True) for k in range(streams)]
        for t in d["streams"]:
            t.start()
        per = collections.Counter(v[1] for v in d["long"].values())
        print(f"long requests ({ms} ms) in flight: "
              + ", ".join(f"{i} {n}" for i, n in sorted(per.items())))

    def wait_long(self, ms):
        d = self.drain
        sel = selectors.DefaultSelector()
        bufs = {}
        for sock in d["long"]:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            bufs[sock] = b""
        deadline = time.monotonic() + ms / 1000.0 + 20.0
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                try:
                    data = sock.recv(256)
                except OSError as e:
                    data, err = b"", e
                else:
                    err = None
                if data:
                    bufs[sock] += data
                    if bufs[sock] == b"done\n":
                        d["long"][sock][2] = "done"
                    elif not b"done\n".startswith(bufs[sock]):
                        d["long"][sock][2] = f"unexpected {bufs[sock]!r}"
                    else:
                        continue
                else:
                    d["long"][sock][2] = f"ended early ({err or 'EOF'})"
                sel.unregister(sock)
                sock.close()
        for sock in list(sel.get_map().values()):
            d["long"][sock.fileobj][2] = "timed out"
            sock.fileobj.close()
        sel.close()

    def cmd_mark(self):
        self.drain["mark"] = time.monotonic()

    def cmd_count_after_mark(self, instance):
        d = self.drain
        print(sum(1 for s in list(d["short"]) if s[0] >= d["mark"] and s[1] == instance))

    def cmd_drain_finish(self, *rest):
        o = self.opts(rest)
        drained = o["instance"]
        d = self.drain
        d["stop"].set()
        for t in d["streams"]:
            t.join()
        d["waiter"].join()
        results = list(d["long"].values())
        lost = [r for r in results if r[2] != "done"]
        on_drained = [r for r in results if r[1] == drained]
        lost_drained = [r for r in on_drained if r[2] != "done"]
        print(f"long requests via the drained instance {drained} completed: "
              f"{len(on_drained) - len(lost_drained)}/{len(on_drained)}; "
              f"via the others: {len(results) - len(on_drained) - (len(lost) - len(lost_drained))}"
              f"/{len(results) - len(on_drained)}")
        short = d["short"]
        after = [s for s in short if d["mark"] is not None and s[0] >= d["mark"]]
        on_drained_after = sum(1 for s in after if s[1] == drained)
        short_lost = [s for s in short if s[2]]
        retried = sum(1 for s in short if s[3])
        print(f"short requests: {len(short)}, of them {len(after)} after SIGTERM, "
              f"{on_drained_after} of those carried by the draining {drained}; failed: {len(short_lost)}; "
              f"cut during the handshake by the route change and retried: {retried}")
        print(f"drain: in-flight requests lost: {len(lost) + len(short_lost)}")
        if not on_drained:
            raise Fail(f"no long request went through {drained}")
        if lost:
            raise Fail(f"{len(lost)} long requests lost, e.g. {lost[0]}")
        if short_lost:
            raise Fail(f"{len(short_lost)} short requests failed, e.g. {short_lost[0][2]}")
        if on_drained_after < int(o.get("min_after", "0")):
            raise Fail(f"only {on_drained_after} new connections reached {drained} after SIGTERM")

    def run(self):
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            handler = getattr(self, "cmd_" + words[0].replace("-", "_"), None)
            try:
                if handler is None:
                    raise Fail(f"unknown command {words[0]}")
                handler(*words[1:])
                print("OK", flush=True)
            except Fail as e:
                print(f"FAIL {e}", flush=True)
            except Exception as e:  # a bug in the agent: report, keep serving
                print(f"FAIL {type(e).__name__}: {e}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sources", nargs=2, required=True, metavar=("FIRST_IP", "COUNT"))
    p.add_argument("--instance", action="append", default=[], metavar="ADDR=NAME")
    Agent(p.parse_args()).run()


if __name__ == "__main__":
    main()
