#!/usr/bin/env python3
"""System calls per connection, by name, of every proxy on the TLS passthrough
port (lb with `tls = "passthrough"`, lb's plain TCP relay of the same port,
HAProxy `req.ssl_sni`, nginx `ssl_preread`, and three yardsticks from
bench/tools/floor*.c: `floor`, the least relay on edge-triggered epoll;
`floor-uring`, the same on io_uring (needs liburing-dev, installed when
that row is asked for); `floor-sockmap`, whose relay after the first
record is the kernel's (a BPF sockhash; needs root)), side by side. Each
yardstick passes bench/tools/check_floor.py before it is measured.

Not part of bench/run; it reuses its configurations, backends and client
(bench/lib/lbbench): the HTTPS backend (nginx) and `lbtls conn PORT SECONDS
CONNS resume` on the load CPU, each proxy alone on the proxy CPU. For each
proxy: a warm-up second, then one load run under `perf stat` with one
counter per system call (`syscalls:sys_enter_<name>`) and their total
(`raw_syscalls:sys_enter`), in-kernel counters that do not slow the proxy
(strace does, several times, which changes how many events each wake-up
finds); each count is divided by the connections lbtls completed. The
proxy's CPU per connection (schedstat of every thread) is printed too, with
the kernel worker threads' (kworker, ksoftirqd: where floor-sockmap's
relayed bytes are sent, outside the proxy's process and its CPU budget) and
the whole machine's (/proc/stat; client and backend included, noisy).

`--budget PCT` runs each proxy inside the same CPU budget as bench/run's
tls_pass row (lbbench/cpubudget.py): how many events one wake-up finds,
hence epoll_wait and read/write counts, depends on how busy the proxy is.

    python3 bench/syscalls.py --lb build/lb/lb                  # 32 in flight, unbounded
    python3 bench/syscalls.py --lb build/lb/lb --budget 10      # as bench/run's tls_pass row
    python3 bench/syscalls.py --lb build/lb/lb --conns 1 --rows lb,nginx
    python3 bench/syscalls.py --lb build/lb/lb --rows lb,nginx,floor,floor-uring --budget 10 --rounds 7

`--rounds N` runs the rows N times, interleaved, and shows each row's median
run by CPU per connection (single runs move by 10-50 % on a shared machine).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

from lbbench import cpubudget, env, idle, peers, tls  # noqa: E402
from lbbench.procs import Supervisor, cpu_seconds_between, cpu_ticks, cpu_times, descendants  # noqa: E402

SYSCALLS = ("accept4", "getpeername", "getsockname", "epoll_wait", "epoll_pwait", "epoll_ctl", "read", "recvfrom",
            "readv", "write", "writev", "sendto", "sendmsg", "shutdown", "close", "socket", "connect", "setsockopt",
            "getsockopt", "ioctl", "fcntl", "clock_gettime", "timerfd_settime", "io_uring_enter")
ROWS = ("lb", "lb-tcp", "haproxy", "nginx", "floor", "floor-uring", "floor-sockmap")


def kernel_thread_ns():
    """{pid: on-CPU ns} of the kernel's worker threads (kworker, ksoftirqd):
    where floor-sockmap's relayed bytes are sent, outside the proxy's cgroup."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read()
            if not comm.startswith(("kworker", "ksoftirqd")):
                continue
            with open(f"/proc/{pid}/schedstat") as f:
                out[pid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def machine_busy_seconds():
    """Non-idle CPU seconds of the whole machine so far (every CPU's line of
    /proc/stat), which also counts kernel threads: floor-sockmap's relay runs
    in kworkers."""
    return sum(total - idle_ for total, idle_ in cpu_times().values()) / os.sysconf("SC_CLK_TCK")


def parse_perf_stat(text):
    """{syscall name or "total": count} from `perf stat -x ,` output."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\d+),[^,]*,(?:syscalls:sys_enter_(\w+)|raw_syscalls:sys_enter)\b", line)
        if m:
            out[m.group(2) or "total"] = int(m.group(1))
    return out


def measure(sup, proxy, backends, lbtls, args, budget):
    port = proxy.ports["tls_pass"]
    load = ["taskset", "-c", str(args.load_cpu), lbtls, "conn", str(port)]
    subprocess.run(load + ["1", str(args.conns), "resume"], capture_output=True, timeout=30)   # warm-up
    pids = [proxy.proc.pid] + descendants(proxy.proc.pid)
    out_path = os.path.join(sup.run_dir, f"perf-stat-{proxy.name}.txt")
    events = ["-e", "raw_syscalls:sys_enter"]
    for s in SYSCALLS:
        events += ["-e", f"syscalls:sys_enter_{s}"]
    perf = subprocess.Popen(["taskset", "-c", str(args.load_cpu), "perf", "stat", "-x", ",", "-o", out_path]
                            + events + ["-p", ",".join(map(str, pids))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    sup.running[perf.pid] = perf
    try:
        time.sleep(1.0)
        if perf.poll() is not None:
            raise RuntimeError("perf stat: " + perf.stderr.read().decode("utf-8", "replace")[-300:])
        if budget:
            budget.set_pct(args.budget)
            budget.enter(pids)
        t0 = cpu_ticks(proxy.proc.pid)
        m0 = machine_busy_seconds()
        k0 = kernel_thread_ns()
        try:
            r = subprocess.run(load + [str(args.seconds), str(args.conns), "resume"], capture_output=True, text=True,
                               timeout=args.seconds + 30)
        finally:
            cpu_s, _ = cpu_seconds_between(t0, cpu_ticks(proxy.proc.pid))
            machine_s = machine_busy_seconds() - m0
            kernel_s = sum(ns - k0.get(pid, 0) for pid, ns in kernel_thread_ns().items()) / 1e9
            if budget:
                budget.leave()
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    finally:
        sup.running.pop(perf.pid, None)
        if perf.poll() is None:
            perf.kill()
            perf.wait()
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    done = doc["done"]
    with open(out_path) as f:
        counts = parse_perf_stat(f.read())
    return {"done": done, "rate": doc["rate"], "errors": doc.get("errors", 0), "cpu_us": cpu_s * 1e6 / done,
            "machine_us": machine_s * 1e6 / done, "kthreads_us": kernel_s * 1e6 / done,
            "per_conn": {k: v / done for k, v in counts.items()}}


def median_run(runs):
    """The run whose CPU per connection is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["cpu_us"])
    return ordered[(len(ordered) - 1) // 2]


def table(res, rows):
    names = ["total"] + [s for s in SYSCALLS if any(res[r]["per_conn"].get(s, 0) >= 0.005 for r in rows)]
    lines = ["| syscall per connection | " + " | ".join(rows) + " |", "| --- |" + " ---: |" * len(rows)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{res[r]['per_conn'].get(n, 0):.2f}" for r in rows) + " |")
    lines.append("| proxy CPU per connection (µs, with the counters attached) | " + " | ".join(f"{res[r]['cpu_us']:.1f}" for r in rows) + " |")
    lines.append("| kernel threads' CPU per connection (µs: kworker, ksoftirqd, all CPUs) | "
                 + " | ".join(f"{res[r]['kthreads_us']:.1f}" for r in rows) + " |")
    lines.append("| proxy + kernel threads (µs) | "
                 + " | ".join(f"{res[r]['cpu_us'] + res[r]['kthreads_us']:.1f}" for r in rows) + " |")
    lines.append("| machine CPU per connection (µs: client, backend, proxy, kernel threads) | "
                 + " | ".join(f"{res[r]['machine_us']:.1f}" for r in rows) + " |")
    lines.append("| connections/s | " + " | ".join(f"{res[r]['rate']:,.0f}" for r in rows) + " |")
    lines.append("| client errors | " + " | ".join(f"{res[r]['errors']:,}" for r in rows) + " |")
    lines.append("| connections counted | " + " | ".join(f"{res[r]['done']:,}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lb", required=True, help="the lb binary")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"proxies, in order ({','.join(ROWS)})")
    ap.add_argument("--conns", type=int, default=32, help="connections in flight (lbtls; default 32)")
    ap.add_argument("--seconds", type=int, default=4, help="seconds of the counted run (default 4)")
    ap.add_argument("--budget", type=float, default=0, help="%% of one CPU each proxy may use (default: unbounded)")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1,
                    help="rows run this many times, interleaved; the table shows each row's median run (default 1)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    rows = args.rows.split(",")
    if set(rows) - set(ROWS):
        ap.error(f"--rows: choose from {','.join(ROWS)}")
    run_dir = tempfile.mkdtemp(prefix="lb-syscalls-")
    os.chmod(run_dir, 0o755)
    sup = Supervisor(run_dir)
    backend_idle = idle.IdleBackend()
    budget = None
    try:
        if args.budget:
            budget, why = cpubudget.CpuBudget.create()
            if budget is None:
                print(f"== CPU budget unavailable ({why}): running unbounded", file=sys.stderr)
        os.sched_setaffinity(0, {args.load_cpu})
        nofile = env.raise_nofile(65536)
        tls.prepare(run_dir)
        backends = peers.Backends(run_dir, backend_idle)
        backends.start(sup, str(args.load_cpu), {}, nofile)
        if "http" in backends.down:
            raise RuntimeError("the HTTPS backend (nginx) did not start: " + backends.down["http"])
        proxies = {p.name: p for p in peers.make_proxies(run_dir, args.lb, args.proxy_cpu, str(args.proxy_cpu),
                                                         nofile, 1000)}
        # The yardsticks: the least relay on epoll and on io_uring (bench/tools).
        for name, src, libs in (("floor", "floor", []), ("floor-uring", "floor_uring", ["-luring"]),
                                ("floor-sockmap", "floor_sockmap", [])):
            if name in rows:
                if libs:
                    unusable = env.ensure_packages(lambda m: print("==", m, file=sys.stderr),
                                                   {"liburing-dev": "/usr/include/liburing.h"})
                    if unusable:
                        raise RuntimeError(f"{name}: liburing-dev: {unusable['liburing-dev']}")
                path, err = env.build_lbload(run_dir, src, libs)
                if err:
                    raise RuntimeError(f"{src}: {err}")
                # Figures of a yardstick that loses bytes would mean nothing.
                check = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                     "tools", "check_floor.py"), path],
                                       capture_output=True, text=True, timeout=300)
                if check.returncode:
                    raise RuntimeError(f"{src} failed bench/tools/check_floor.py: {check.stdout.strip()}")
                proxies[name] = peers.Proxy(
                    name, f"{name} (bench/tools/{src}.c)", {"tls_pass"}, [], str(args.proxy_cpu),
                    lambda p, be, path=path: [path, str(p.ports["tls_pass"]), str(be.ports["https"])])
        lbtls, err = env.build_lbload(run_dir, "lbtls", ["-lssl", "-lcrypto"])
        if err:
            raise RuntimeError("lbtls: " + err)
        runs = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name in rows:
                p = proxies[name]
                err = p.start(sup, backends)
                if err:
                    raise RuntimeError(err)
                runs[name].append(measure(sup, p, backends, lbtls, args, budget))
                sup.stop(p.proc)
                p.proc = None
                time.sleep(0.5)
        res = {name: median_run(runs[name]) for name in rows}
        print(f"{args.conns} connection(s) in flight, {args.seconds} s, "
              + (f"CPU budget {budget.pct:g} % of CPU {args.proxy_cpu}" if budget else "no CPU budget")
              + (f", median of {args.rounds} interleaved rounds by CPU per connection" if args.rounds > 1 else ""))
        print(table(res, rows))
        if args.rounds > 1:
            print("\nCPU per connection (µs) in each round: "
                  + "; ".join(f"{n} " + " ".join(f"{r['cpu_us']:.0f}" for r in runs[n]) for n in rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"conns": args.conns, "seconds": args.seconds, "budget_pct": budget.pct if budget else None,
                           "rounds": args.rounds, "rows": res, "runs": runs}, f, indent=1)
        return 0
    finally:
        if budget:
            budget.leave()
        sup.stop_all()
        if budget:
            budget.remove()
        backend_idle.close()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
