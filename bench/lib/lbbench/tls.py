"""The TLS rows (issue 18): full and resumed handshakes per second, bulk over
TLS, SNI passthrough connection rate, memory per idle terminated connection.

lb, HAProxy 2.6 (`bind … ssl crt`, `req.ssl_sni`) and nginx 1.22 stream
(`ssl`, `ssl_preread`) all link Debian's libssl3, and every client offers
the same: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, server name bench.test.
The certificates are made at run time (openssl CLI) in the run directory.
The load is bench/tools/lbtls.c (OpenSSL, epoll) and, for idle connections,
Python's ssl module."""
import json
import os
import resource
import selectors
import socket
import ssl
import subprocess
import time

from . import idle, loads
from .report import _ratio

TLS_CONNECTIONS = 32          # lbtls conn: connections in flight
BIG_FILE_MIB = 64             # the bulk row's GET body
MAX_IN_FLIGHT = 64            # idle: handshakes done but not yet accepted by the backend

# The CPU budget of every proxy row in the rate workloads (cpubudget.py), %
# of one CPU: small enough that the client, which does the other half of
# each handshake on the load CPU, stays well below 100 % at the rate the
# budget allows (from the CPU per unit of the unbounded rows: an ECDSA
# handshake costs the proxy ~375 µs and the load side ~640 µs; RSA ~720 and
# ~740; resumed ~270 and ~270; a passthrough connection ~105 and ~540).
BUDGET_PCT = {"tls_hs_ecdsa": 35, "tls_hs_rsa": 50, "tls_hs_resumed": 50, "tls_pass": 10}

US_HS, US_CONN, S_PER_GB = ("µs/handshake", 1e6), ("µs/conn", 1e6), ("CPU-s/GB", 1e9)


def _openssl(argv):
    r = subprocess.run(["openssl"] + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("openssl " + " ".join(argv[:2]) + ": " + r.stdout.decode("utf-8", "replace")[-300:])


def prepare(run_dir):
    """Self-signed ECDSA P-256 and RSA-2048 certificates for bench.test
    (DIR/ec.pem, ec.key, rsa.pem, rsa.key; HAProxy's DIR/*.haproxy.pem hold
    certificate and key) and the bulk row's file, DIR/www/big.bin."""
    for name, key in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                      ("rsa", ["-newkey", "rsa:2048"])):
        pem, keyf = os.path.join(run_dir, f"{name}.pem"), os.path.join(run_dir, f"{name}.key")
        _openssl(["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=bench.test",
                  "-addext", "subjectAltName=DNS:bench.test", "-keyout", keyf, "-out", pem] + key)
        with open(os.path.join(run_dir, f"{name}.haproxy.pem"), "w") as out:
            for f in (pem, keyf):
                with open(f) as src:
                    out.write(src.read())
        os.chmod(keyf, 0o644)   # nginx's worker (user nobody) does not read it, its master does
    www = os.path.join(run_dir, "www")
    os.makedirs(www, exist_ok=True)
    block = bytes(range(256)) * 4096
    with open(os.path.join(www, "big.bin"), "wb") as f:
        for _ in range(BIG_FILE_MIB):
            f.write(block)


def lbtls_conn(sup, tool, port, duration, cpus, resume):
    argv = [tool, "conn", str(port), str(duration), str(TLS_CONNECTIONS)] + (["resume"] if resume else [])
    doc = _run_json(sup, argv, duration, cpus)
    if doc.get("done", 0) == 0:
        raise loads.SampleError(f"lbtls: no connection completed: {doc}")
    doc["units"] = doc["done"]
    doc["resumed_pct"] = 100.0 * doc["resumed"] / doc["done"]
    return doc


def lbtls_bulk(sup, tool, port, duration, cpus):
    doc = _run_json(sup, [tool, "bulk", str(port), str(duration)], duration, cpus)
    if not doc.get("bytes") or doc.get("failed"):
        raise loads.SampleError(f"lbtls bulk: {doc}")
    if doc.get("cipher") != "TLS_AES_128_GCM_SHA256":
        raise loads.SampleError(f"lbtls bulk: negotiated {doc.get('cipher')}, not AES-128-GCM")
    doc["units"] = doc["bytes"]
    return doc


def _children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run_json(sup, argv, duration, cpus):
    """lbtls's JSON, with client_cpu_pct: its own CPU time over its run, in %
    of one CPU (from the rusage of the waited-for child; taskset execs it)."""
    c0, t0 = _children_cpu_s(), time.monotonic()
    rc, out, timed_out = sup.run(argv, timeout=duration + loads.SLACK_S, cpus=cpus)
    c1, t1 = _children_cpu_s(), time.monotonic()
    if timed_out:
        raise loads.SampleError(f"lbtls killed after {duration + loads.SLACK_S} s")
    try:
        doc = json.loads(out[out.index("{"):])
    except ValueError:
        raise loads.SampleError("lbtls: " + loads._tail(out))
    if t1 > t0:
        doc["client_cpu_pct"] = 100.0 * (c1 - c0) / (t1 - t0)
    return doc


def idle_measure(backend, proxy_pid, port, n, timeout):
    """Like idle.measure, with a completed TLS 1.3 handshake (Python's ssl,
    one at a time) on every connection before it goes silent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    before = idle._settled_rss(proxy_pid)
    if before is None:
        raise idle.IdleError("proxy process is gone")
    sel = selectors.DefaultSelector()
    sel.register(backend.sock, selectors.EVENT_READ, None)
    clients, accepted = [], []
    deadline = time.monotonic() + timeout

    def accept(wait):
        if sel.select(wait):
            idle.accept_pending(backend, accepted)

    try:
        while len(clients) < n:
            if time.monotonic() > deadline:
                raise idle.IdleError(f"after {timeout:.0f} s: {len(clients)} of {n} handshakes")
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                clients.append(ctx.wrap_socket(raw, server_hostname="bench.test"))
            except (OSError, ssl.SSLError) as e:
                raw.close()
                raise idle.IdleError(f"TLS handshake through the proxy failed: {e}")
            accept(0 if len(clients) - len(accepted) < MAX_IN_FLIGHT else 1.0)
        while len(accepted) < n:
            if time.monotonic() > deadline:
                raise idle.IdleError(f"after {timeout:.0f} s: {len(accepted)} of {n} reached the backend")
            accept(0.2)
        after = idle._settled_rss(proxy_pid)
        if after is None:
            raise idle.IdleError("proxy process is gone")
        return {"bytes_per_conn": (after - before) * 1024.0 / n,
                "rss_before_kib": before, "rss_after_kib": after, "conns": n}
    finally:
        sel.close()
        idle._drop(clients)
        idle._drop(accepted)
        time.sleep(0.5)


def workloads(Workload, args, sup, backend_idle, load_cpus, lbtls_path):
    """The TLS workloads; the memory one first (run it early, on fresh proxies)."""
    rows = ["lb", "haproxy", "nginx"]
    conns = TLS_CONNECTIONS

    def idle_run(proxy, port, duration):
        try:
            return idle_measure(backend_idle, proxy.proc.pid, port, args.idle_tls_conns, timeout=120)
        except idle.IdleError as e:
            raise loads.SampleError(str(e))

    def conn(resume):
        return lambda p, port, d: lbtls_conn(sup, lbtls_path, port, d, load_cpus, resume)

    hs_extras = ["resumed_pct", "errors"]
    b = BUDGET_PCT
    return [
        Workload("tls_idle_mem", f"memory per idle terminated TLS connection ({args.idle_tls_conns:,} conns)",
                 "B/conn", "bytes_per_conn", False, "tls_idle", rows, idle_run, rounds=1, cpu=False),
        Workload("tls_hs_ecdsa", f"TLS 1.3 full handshakes, ECDSA P-256 (lbtls, {conns} conns)", "handshakes/s",
                 "rate", True, "tls_ec", rows, conn(False), extras=hs_extras, cost=US_HS, needs=("lbtls",),
                 budget=b["tls_hs_ecdsa"]),
        Workload("tls_hs_rsa", f"TLS 1.3 full handshakes, RSA-2048 (lbtls, {conns} conns)", "handshakes/s",
                 "rate", True, "tls_rsa", rows, conn(False), extras=hs_extras, cost=US_HS, needs=("lbtls",),
                 budget=b["tls_hs_rsa"]),
        Workload("tls_hs_resumed", f"TLS 1.3 resumed handshakes, session tickets (lbtls, {conns} conns)",
                 "handshakes/s", "rate", True, "tls_ec", rows, conn(True), extras=hs_extras, cost=US_HS,
                 needs=("lbtls",), budget=b["tls_hs_resumed"]),
        Workload("tls_bulk", f"bulk over TLS 1.3 AES-128-GCM, 1 stream ({BIG_FILE_MIB} MiB GETs, lbtls)", "Gbps",
                 "gbps", True, "tls_ec", rows, lambda p, port, d: lbtls_bulk(sup, lbtls_path, port, d, load_cpus),
                 cost=S_PER_GB, needs=("lbtls",)),
        Workload("tls_pass", f"TLS passthrough by SNI, connection rate (lbtls resumed, {conns} conns)", "conn/s",
                 "rate", True, "tls_pass", ["direct", "lb", "lb-tcp", "haproxy", "nginx"], conn(True),
                 extras=hs_extras, cost=US_CONN, needs=("lbtls",), budget=b["tls_pass"]),
    ]


WORKLOAD_KEYS = ("tls_idle_mem", "tls_hs_ecdsa", "tls_hs_rsa", "tls_hs_resumed", "tls_bulk", "tls_pass")


def _best_peer_ratio(results, wl, key="median", lower=False):
    w = results["workloads"].get(wl)
    if not w:
        return None, None
    vals = {n: r.get(key) for n, r in w["rows"].items() if n in ("haproxy", "nginx") and r.get(key) is not None}
    lb = w["rows"].get("lb", {}).get(key)
    if not vals or lb is None:
        return None, None
    best = (min if lower else max)(vals, key=vals.get)
    return lb / vals[best], best


def targets(results):
    """Issue 18's targets, as ratios in this run (appended to results["targets"])."""
    out = []

    def add(name, wl, checks):
        if wl not in results["workloads"]:
            return
        parts, verdicts = [], []
        for text, measured, ok in checks:
            verdicts.append(None if measured is None else ok(measured))
            parts.append(f"{text}: " + ("n/a" if measured is None else
                                        f"{measured:.2f}{'' if ok(measured) else ' (miss)'}"))
        result = ("MISS" if False in verdicts else "n/a") if None in verdicts else (
            "PASS" if all(verdicts) else "MISS")
        out.append({"target": name, "measured": "; ".join(parts), "result": result})

    for wl, title in (("tls_hs_ecdsa", "TLS full handshakes, ECDSA"), ("tls_hs_rsa", "TLS full handshakes, RSA"),
                      ("tls_hs_resumed", "TLS resumed handshakes")):
        r, best = _best_peer_ratio(results, wl)
        add(f"{title}: ≥ 1.0 × best peer", wl, [(f"× best peer ({best})", r, lambda x: x >= 1.0)])
    add("bulk over TLS: ≥ 1.0 × HAProxy", "tls_bulk",
        [("× HAProxy", _ratio(results, "tls_bulk", "lb", "haproxy"), lambda x: x >= 1.0)])
    r, best = _best_peer_ratio(results, "tls_pass")
    add("TLS passthrough connection rate: ≥ 0.95 × lb plain TCP, ≥ 1.1 × best peer", "tls_pass",
        [("× lb plain TCP", _ratio(results, "tls_pass", "lb", "lb-tcp"), lambda x: x >= 0.95),
         (f"× best peer ({best})", r, lambda x: x >= 1.1)])
    add("memory per idle terminated TLS connection: ≤ 0.8 × HAProxy", "tls_idle_mem",
        [("× HAProxy", _ratio(results, "tls_idle_mem", "lb", "haproxy"), lambda x: x <= 0.8)])
    results.setdefault("targets", []).extend(out)
    # The CPU per unit side by side (issue 20), informative: no target of its own.
    for wl in WORKLOAD_KEYS[1:]:
        r, best = _best_peer_ratio(results, wl, "median_cost", lower=True)
        if r is not None:
            results.setdefault("cost_targets", []).append(
                {"target": f"{wl}: proxy CPU per unit × cheapest peer (no target; shown)", "workload": wl,
                 "measured": f"× {best}: {r:.2f}", "result": "—"})
