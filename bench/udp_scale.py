#!/usr/bin/env python3
"""UDP at scale through lb (issue 17): many sessions, resolver-style DNS, game traffic.

Profiles (each starts its own lb and backends on loopback and stops them):
  sessions   N concurrent sessions (udp_responses = 0, long session_timeout) from
             many 127.x.y.z addresses and ports to B echo backends: every session
             answered, per-backend spread, lb_listener_active, lb's fds, RSS and
             kernel memory per session.
  resolver   DNS through lb to dnsmasq, udp_responses = 1, every query from a new
             (address, port), at --rate queries/s for --seconds: lost queries, fds
             and RSS sampled every second.
  game       S sessions x R datagrams/s for --seconds, one of 4 backends killed at
             half time: loss (per session and per second), p50/p99/p99.9 latency
             through lb and direct, sessions that moved / kept their backend, CPU
             of lb, client and backends. Client and backends are bench/tools/lbload
             (C, sendmmsg/recvmmsg), built with cc unless --lbload is given.

Client endpoints: a few sockets bound to 0.0.0.0, each sending from many loopback
addresses with IP_PKTINFO, so 100,000 endpoints need only a few hundred fds.
Standard library only.  Example:
  python3 bench/udp_scale.py --lb build/lb/lb sessions --sessions 100000 --backends 4
  python3 bench/udp_scale.py --lb build/lb/lb resolver --rate 5000 --seconds 60
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

IP_PKTINFO = 8


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --- backends ---------------------------------------------------------------
def echo_main(name, port, ready):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(("127.0.0.1", port))
    ready.set()
    prefix = name.encode() + b":"
    while True:
        d, a = s.recvfrom(65535)
        s.sendto(prefix + d, a)


def start_echo(name):
    port = free_port()
    ready = mp.Event()
    p = mp.Process(target=echo_main, args=(name, port, ready), daemon=True)
    p.start()
    ready.wait(5)
    return p, port


# --- client endpoints ---------------------------------------------------------
class Swarm:
    """endpoint i = (first + i % per_socket, port of socket i // per_socket)."""

    def __init__(self, n, first="127.64.0.1", per_socket=250):
        self.n, self.per = n, per_socket
        self.first = struct.unpack("!I", socket.inet_aton(first))[0]
        self.socks = []
        for _ in range((n + per_socket - 1) // per_socket):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind(("0.0.0.0", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.cmsg = [struct.pack("I4s4s", 0, struct.pack("!I", self.first + k), b"\0" * 4) for k in range(per_socket)]
        self.fdmap = {s.fileno(): k for k, s in enumerate(self.socks)}
        self.poller = select.epoll()
        for s in self.socks:
            self.poller.register(s.fileno(), select.EPOLLIN)

    def send(self, i, dest, data):
        s = self.socks[i // self.per]
        for _ in range(1000):
            try:
                s.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, self.cmsg[i % self.per])], 0, dest)
                return True
            except BlockingIOError:
                select.select([], [s], [], 0.01)
        return False

    def receive(self, timeout):
        """Yields (endpoint, data) until nothing arrives for `timeout` seconds."""
        while True:
            ev = self.poller.poll(timeout)
            if not ev:
                return
            for fd, _ in ev:
                k = self.fdmap[fd]
                s = self.socks[k]
                while True:
                    try:
                        d, anc, _, _ = s.recvmsg(65535, 64)
                    except BlockingIOError:
                        break
                    for lvl, typ, val in anc:
                        if lvl == socket.IPPROTO_IP and typ == IP_PKTINFO:
                            off = struct.unpack("!I", val[8:12])[0] - self.first
                            yield k * self.per + off, d


# --- lb -----------------------------------------------------------------------
class Lb:
    def __init__(self, binary, listener_extra, backends, workers, pool_extra=""):
        self.port, self.admin = free_port(), free_port(socket.SOCK_STREAM)
        cfg = (f"[global]\nworkers = {workers}\naccess_log = \"off\"\nlog_level = \"warn\"\nmax_connections = 1000000\n"
               f"[admin]\nlisten = \"127.0.0.1:{self.admin}\"\n"
               f"[[listener]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:{self.port}\"\npool = \"p\"\n"
               f"{listener_extra}\n[[pool]]\nname = \"p\"\n{pool_extra}\n")
        for b in backends:
            cfg += f"[[pool.backend]]\naddress = \"{b}\"\n"
        self.dir = tempfile.mkdtemp(prefix="udp_scale.")
        path = os.path.join(self.dir, "lb.toml")
        open(path, "w").write(cfg)
        self.log = open(os.path.join(self.dir, "lb.log"), "w+")
        self.proc = subprocess.Popen([binary, "--config", path], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("lb did not start: " + open(os.path.join(self.dir, "lb.log")).read())

    def metrics(self):
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def metric_sum(self, prefix):
        try:
            return sum(v for k, v in self.metrics().items() if k.startswith(prefix))
        except OSError as e:   # e.g. lb out of file descriptors cannot accept
            return f"admin failed: {e}"

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def warnings(self):
        self.log.flush()
        return open(self.log.name).read()

    def trace(self):
        """Starts counting lb's syscalls (strace -c -f)."""
        self.tracer = subprocess.Popen(["strace", "-c", "-f", "-q", "-p", str(self.proc.pid), "-o",
                                        os.path.join(self.dir, "strace")])
        time.sleep(1.0)

    def trace_result(self, per):
        """Syscalls per `per` units (queries) since trace()."""
        self.tracer.send_signal(signal.SIGINT)
        self.tracer.wait(10)
        calls = {}
        for line in open(os.path.join(self.dir, "strace")):
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                calls[f[-1]] = int(f[3])
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
        return round(sum(calls.values()) / per, 3), {k: round(v / per, 3) for k, v in top}

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def udp_drops(pid):
    """Datagrams the kernel dropped on `pid`'s UDP sockets (full receive buffers)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    drops = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        for line in open(name).readlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                drops += int(f[-1])
    return drops


def lb_socket_memory(pid):
    """Kernel bytes held by `pid`'s UDP sockets: per socket one object of each
    slab cache a socket uses (UDP, inode, file, dentry, epoll item; sizes from
    /proc/slabinfo), plus what sits in their queues (/proc/net/udp). Unlike a
    system-wide delta this is not disturbed by other processes."""
    sizes = {}
    for line in open("/proc/slabinfo"):
        f = line.split()
        if f and f[0] in ("UDP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi"):
            sizes[f[0]] = int(f[3])
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = queued = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        for line in open(name).readlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                count += 1
                tx, rx = f[4].split(":")
                queued += int(tx, 16) + int(rx, 16)
    return count * sum(sizes.values()) + queued


def kernel_udp_memory():
    """Bytes: UDP buffer pages (/proc/net/sockstat) + the slab caches sockets live in."""
    pages = 0
    for line in open("/proc/net/sockstat"):
        if line.startswith("UDP:"):
            f = line.split()
            pages = int(f[f.index("mem") + 1])
    slab = 0
    try:
        for line in open("/proc/slabinfo"):
            f = line.split()
            if f and f[0] in ("UDP", "UDPv6", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq"):
                slab += int(f[1]) * int(f[3])   # active objects x object size
    except OSError:
        pass
    return pages * 4096 + slab


# --- profiles -----------------------------------------------------------------
def ask(swarm, dest, endpoints, payload, tries=6, window=2000):
    got = {}
    endpoints = list(endpoints)
    for start in range(0, len(endpoints), window):
        part = endpoints[start:start + window]
        for _ in range(tries):
            missing = [i for i in part if i not in got]
            if not missing:
                break
            for i in missing:
                swarm.send(i, dest, payload(i))
            for i, d in swarm.receive(2.0 if len(missing) > 50 else 0.5):
                got.setdefault(i, d)
                if all(j in got for j in missing[-1:]) and len(got) >= start + len(part):
                    break
    return got


def profile_sessions(a):
    procs, addrs = [], []
    for b in range(a.backends):
        p, port = start_echo(f"b{b}")
        procs.append(p)
        addrs.append(f"127.0.0.1:{port}")
    extra = f"session_timeout = \"600s\"\n" + (f"udp_source = [\"{a.source}\"]\n" if a.source else "")
    lb = Lb(a.lb, extra, addrs, a.workers,
            "[pool.health_check]\ntype = \"udp\"\nudp_send = \"ping\"\nudp_expect = \"ping\"\ninterval = \"500ms\"\n")
    try:
        time.sleep(0.5)
        fds0, rss0, kmem0, lbk0 = lb.fds(), lb.rss(), kernel_udp_memory(), lb_socket_memory(lb.proc.pid)
        swarm = Swarm(a.sessions, "127.64.0.1", 250)
        t0 = time.time()
        got = ask(swarm, ("127.0.0.1", lb.port), range(a.sessions), lambda i: str(i).encode())
        took = time.time() - t0
        spread = {}
        ok = 0
        for i, d in got.items():
            name, _, rest = d.partition(b":")
            if rest == str(i).encode():
                ok += 1
                spread[name.decode()] = spread.get(name.decode(), 0) + 1
        time.sleep(0.5)
        fds1, rss1, kmem1, lbk1 = lb.fds(), lb.rss(), kernel_udp_memory(), lb_socket_memory(lb.proc.pid)
        active = lb.metric_sum('lb_listener_active{listener="u"')
        # UDP health probes keep passing while the sessions are open.
        def passes():
            return sum(v for k, v in lb.metrics().items()
                       if k.startswith("lb_health_checks_total{") and 'result="pass"' in k)
        passes0 = passes()
        time.sleep(3)
        probes = {"probe_passes_in_3s": passes() - passes0,
                  "backends_up": sum(v for k, v in lb.metrics().items() if k.startswith("lb_backend_up{"))}
        res = {
            "profile": "sessions", "sessions": a.sessions, "backends": a.backends, "workers": a.workers,
            "udp_source": a.source, "answered": ok, "seconds_to_open": round(took, 1), "spread": spread,
            "lb_listener_active": active, "lb_fds_before": fds0, "lb_fds_open": fds1,
            "lb_rss_before": rss0, "lb_rss_open": rss1, "kernel_mem_delta": kmem1 - kmem0,
            "bytes_per_session_rss": round((rss1 - rss0) / max(1, ok)),
            "bytes_per_session_total": round((rss1 - rss0 + kmem1 - kmem0) / max(1, ok)),
            "lb_socket_kernel_bytes": lbk1 - lbk0,
            "bytes_per_session_rss_plus_lb_sockets": round((rss1 - rss0 + lbk1 - lbk0) / max(1, ok)),
            "rejected": lb.metric_sum('lb_listener_rejected_total{listener="u"'), **probes,
        }
        return res
    finally:
        lb.stop()
        for p in procs:
            p.terminate()


def dns_query(qid):
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x07example\x04test\x00\x00\x01\x00\x01"


def profile_resolver(a):
    dns, dport = start_dnsmasq()
    extra = "udp_responses = 1\nsession_timeout = \"30s\"\n" + (f"udp_source = [\"{a.source}\"]\n" if a.source else "")
    lb = Lb(a.lb, extra, [f"127.0.0.1:{dport}"], a.workers)
    try:
        time.sleep(0.5)
        swarm = Swarm(64 * 250, "127.65.0.1", 250)   # 16,000 endpoints, reused round robin
        dest = ("127.0.0.1", lb.port)
        if a.strace:
            lb.trace()
        cpu0 = cpu_seconds(lb.proc.pid)
        sent = answered = 0
        samples = []
        start = time.time()
        next_sample = start + 1
        i = 0
        while time.time() - start < a.seconds:
            target = int((time.time() - start) * a.rate)
            while sent < target:
                swarm.send(i % swarm.n, dest, dns_query(sent & 0xFFFF))
                sent += 1
                i += 1
            for _ in swarm.receive(0):
                answered += 1
            if time.time() >= next_sample:
                samples.append({"t": round(time.time() - start), "sent": sent, "answered": answered,
                                "fds": lb.fds(), "rss": lb.rss()})
                next_sample += 1
        for _ in swarm.receive(1.0):
            answered += 1
        cpu1 = cpu_seconds(lb.proc.pid)
        m = lb.metrics()
        extra = {"lb_cpu_us_per_query": round((cpu1 - cpu0) / max(1, sent) * 1e6, 2),
                 "kernel_drops_lb_sockets": udp_drops(lb.proc.pid), "kernel_drops_dnsmasq": udp_drops(dns.pid)}
        if a.strace:
            extra["syscalls_per_query"], extra["syscalls"] = lb.trace_result(sent)
        return {"profile": "resolver", **extra, "rate": a.rate, "seconds": a.seconds, "sent": sent, "answered": answered,
                "lost": sent - answered,
                "lb_datagrams_in": m.get('lb_udp_datagrams_total{listener="u",direction="in"}'),
                "lb_datagrams_out": m.get('lb_udp_datagrams_total{listener="u",direction="out"}'),
                "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
                "rss_min_max": [min(s["rss"] for s in samples), max(s["rss"] for s in samples)],
                "samples": samples}
    finally:
        lb.stop()
        dns.terminate()


def lbload_tool(a):
    """bench/tools/lbload (the C load tool), built once into a temp dir unless --lbload names one."""
    if a.lbload:
        return a.lbload
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
    from lbbench import env
    path, err = env.build_lbload(tempfile.mkdtemp(prefix="udp_scale.lbload."))
    if err:
        raise SystemExit("cannot build lbload: " + err)
    return path


def start_c_echo(tool, name, lifetime):
    """`lbload echo` (batched, C) on 127.0.0.1: (Popen, port)."""
    p = subprocess.Popen([tool, "echo", "0", name, str(lifetime)], stdout=subprocess.PIPE, text=True)
    return p, json.loads(p.stdout.readline())["port"]


def cpu_split(pid):
    """(user, system) CPU seconds of a process so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def machine_busy():
    """(busy, total) jiffies of the whole machine, all CPUs."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def perf_top(pid, seconds, out_dir):
    """lb's top symbols by CPU over `seconds` (perf record -e cpu-clock), or an error string."""
    data = os.path.join(out_dir, "perf.data")
    r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid), "-o", data,
                        "--", "sleep", str(seconds)], capture_output=True, text=True)
    if r.returncode != 0:
        return "perf record failed: " + r.stderr[-300:]
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym", "-g", "none",
                          "--percent-limit", "1.5"], capture_output=True, text=True).stdout
    return [line.strip() for line in rep.splitlines() if line.strip() and not line.startswith("#")][:20]


def profile_game(a):
    """The client and the 4 echo backends are bench/tools/lbload (C, batched):
    the Python client topped out at some 20,000 datagrams/s."""
    tool = lbload_tool(a)
    lifetime = 2 * a.seconds + 120
    backends = [start_c_echo(tool, f"b{b}", lifetime) for b in range(4)]
    addrs = [f"127.0.0.1:{port}" for _, port in backends]
    lb = Lb(a.lb, "session_timeout = \"60s\"\n", addrs, a.workers,
            "[pool.health_check]\ntype = \"udp\"\nudp_send = \"ping\"\nudp_expect = \"ping\"\ninterval = \"500ms\"\n"
            "timeout = \"500ms\"\nfall = 2\n")

    def run(ports, kill_at=None, perf=False):
        pids = {"lb": lb.proc.pid, **{f"b{b}": p.pid for b, (p, _) in enumerate(backends) if p.poll() is None}}
        before = {k: cpu_split(v) for k, v in pids.items()}
        busy0 = machine_busy()
        drops0 = udp_drops(lb.proc.pid)
        client = subprocess.Popen([tool, "game", ",".join(map(str, ports)), str(a.pps), str(a.seconds),
                                   str(a.sessions), str(a.size)], stdout=subprocess.PIPE, text=True)
        t0 = time.time()
        top = None
        if perf:
            time.sleep(min(2.0, a.seconds / 4))
            top = perf_top(lb.proc.pid, max(1, int(a.seconds / 4)), lb.dir)
        if kill_at is not None:
            time.sleep(max(0.0, t0 + kill_at - time.time()))
            backends[0][0].kill()
            backends[0][0].wait()
        client_cpu = None
        while client.poll() is None:
            try:
                client_cpu = cpu_split(client.pid)
            except OSError:
                pass
            time.sleep(0.2)
        busy1 = machine_busy()
        res = json.loads(client.stdout.read())
        cpu = {}
        for k, v in pids.items():
            try:
                u1, s1 = cpu_split(v)
            except OSError:   # the killed backend
                continue
            cpu[k] = {"user_s": round(u1 - before[k][0], 2), "sys_s": round(s1 - before[k][1], 2)}
        if client_cpu:
            cpu["client"] = {"user_s": round(client_cpu[0], 2), "sys_s": round(client_cpu[1], 2)}
        res["cpu_seconds"] = cpu
        if "lb" in cpu and res["received"]:
            # lb's CPU per datagram answered (in, to the backend, back, out)
            res["lb_cpu_us_per_datagram"] = round((cpu["lb"]["user_s"] + cpu["lb"]["sys_s"]) / res["received"] * 1e6, 2)
        res["machine_busy_pct"] = round(100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)
        res["kernel_drops_lb_sockets"] = udp_drops(lb.proc.pid) - drops0
        if top is not None:
            res["lb_perf_top"] = top
        return res

    try:
        time.sleep(1.0)
        through = run([lb.port], kill_at=a.seconds / 2, perf=a.perf)
        m = lb.metrics()
        through["lb_listener_rejected"] = lb.metric_sum('lb_listener_rejected_total{listener="u"')
        names = {f'backend="{addr}"': f"b{b}" for b, addr in enumerate(addrs)}

        def by_backend(prefix, also=""):
            """{b0: value, ...} of the series starting with `prefix` (and containing `also`)."""
            return {name: v for k, v in m.items() if k.startswith(prefix) and also in k
                    for lbl, name in names.items() if lbl in k}
        through["lb_backend_up"] = by_backend("lb_backend_up{")
        through["probe_failures"] = by_backend("lb_health_checks_total{", 'result="fail"')
        bk = through.get("backends", {})
        through["only_dead_backends_sessions_moved"] = (
            bk.get("b0", {}).get("moved") == bk.get("b0", {}).get("sessions")
            and all(v["moved"] == 0 for k, v in bk.items() if k != "b0"))
        # Direct: a fresh b0, the same sessions spread over the 4 backends by
        # the client itself (session i -> backend i mod 4), no kill.
        backends[0] = start_c_echo(tool, "b0", lifetime)
        direct = run([port for _, port in backends])
        return {"profile": "game", "sessions": a.sessions, "pps": a.pps, "seconds": a.seconds, "size": a.size,
                "workers": a.workers, "through_lb": through, "direct": direct}
    finally:
        lb.stop()
        for p, _ in backends:
            if p.poll() is None:
                p.terminate()
                p.wait()


def start_dnsmasq():
    dport = free_port()
    dns = subprocess.Popen(["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", f"--port={dport}",
                            "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                            "--pid-file=", "--user=root", "--address=/example.test/192.0.2.1", "--log-facility=-",
                            "--dns-forward-max=10000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return dns, dport


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def profile_cost(a):
    """lb's CPU and syscalls per query for a fixed dnsperf run (udp_responses = 1)."""
    dns, dport = start_dnsmasq()
    lb = Lb(a.lb, "udp_responses = 1\nsession_timeout = \"30s\"\n", [f"127.0.0.1:{dport}"], 1)
    qfile = os.path.join(lb.dir, "queries")
    open(qfile, "w").write("example.test A\n")
    try:
        time.sleep(0.3)
        if a.strace:
            lb.trace()
        cpu0 = cpu_seconds(lb.proc.pid)
        out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(lb.port), "-d", qfile, "-n", str(a.queries),
                              "-c", str(a.clients), "-q", "200", "-t", "2"], capture_output=True, text=True).stdout
        cpu1 = cpu_seconds(lb.proc.pid)
        res = {"profile": "cost", "lb": a.lb, "queries": a.queries, "clients": a.clients,
               "lb_cpu_us_per_query": round((cpu1 - cpu0) / a.queries * 1e6, 2)}
        for key in ("Queries completed", "Queries lost", "Queries per second"):
            m = re.search(key + r":\s+([\d.]+)", out)
            res[key] = float(m.group(1)) if m else None
        if a.strace:
            res["syscalls_per_query"], res["syscalls"] = lb.trace_result(a.queries)
        return res
    finally:
        lb.stop()
        dns.terminate()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lb", default="build/lb/lb")
    ap.add_argument("--workers", type=int, default=2)
    sub = ap.add_subparsers(dest="profile", required=True)
    s = sub.add_parser("sessions")
    s.add_argument("--sessions", type=int, default=100000)
    s.add_argument("--backends", type=int, default=4)
    s.add_argument("--source", default="127.0.2.0/26", help="udp_source for lb ('' = none)")
    r = sub.add_parser("resolver")
    r.add_argument("--rate", type=int, default=5000)
    r.add_argument("--seconds", type=int, default=60)
    r.add_argument("--strace", action="store_true", help="count lb's syscalls (slows it down)")
    r.add_argument("--source", default="127.0.2.0/26", help="udp_source for lb ('' = none)")
    g = sub.add_parser("game")
    g.add_argument("--sessions", type=int, default=10000)
    g.add_argument("--pps", type=int, default=30, help="datagrams per second per session")
    g.add_argument("--seconds", type=int, default=60)
    g.add_argument("--size", type=int, default=64, help="datagram bytes")
    g.add_argument("--lbload", default="", help="a built bench/tools/lbload (default: build one)")
    g.add_argument("--perf", action="store_true", help="lb's top symbols (perf record) for a quarter of the run")
    c = sub.add_parser("cost")
    c.add_argument("--queries", type=int, default=100000)
    c.add_argument("--clients", type=int, default=4, help="dnsperf sockets")
    c.add_argument("--strace", action="store_true", help="count lb's syscalls (slows it down)")
    a = ap.parse_args()
    res = {"sessions": profile_sessions, "resolver": profile_resolver, "game": profile_game,
           "cost": profile_cost}[a.profile](a)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
