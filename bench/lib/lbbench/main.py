"""bench/run: lb side by side with HAProxy, nginx (stream) and dnsdist, and a
direct connection, on loopback, in interleaved rounds.

CPU layout (two CPUs, "proxy" and "load"): every proxy runs with one
worker/thread pinned to the proxy CPU; the harness pins itself to the load
CPU, so the backends and load generators it starts run there too. The one
exception is the "lb, 2 workers" row, which may use both CPUs.

Each workload runs its rows in rounds (A B C D, A B C D, ...) so slow drift
from other work on the machine spreads over every row; the tables show the
median per row and ratios of medians.
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import cpubudget, env, idle, loads, peers, profile, report, tls
from .procs import Supervisor, cpu_seconds_between, cpu_ticks, cpu_times, descendants

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, os.pardir))


class Workload:
    def __init__(self, key, title, unit, metric, higher_is_better, service, rows, run, extras=(), rounds=None,
                 cpu=True, cost=None, needs=(), traced_run=None, budget=None):
        self.key = key
        self.title = title
        self.unit = unit
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.service = service
        self.rows = rows
        self.run = run            # (proxy, port, duration) -> metrics dict
        self.extras = list(extras)
        self.rounds = rounds      # fixed round count, else the run's
        # Busy share of the proxy's CPU and of the load CPU over each sample:
        # which side of the machine limited it.
        self.cpu = cpu
        if cpu:
            self.extras += ["cpu_proxy_pct", "cpu_load_pct"]
        # (unit, scale): the proxy's own CPU time per unit of work, from
        # /proc/PID/stat over the sample, = cpu_s * scale / units.
        self.cost = cost
        if cost:
            self.extras += ["proxy_cpu_s", "units", "cost"]
        self.needs = needs        # tools it runs besides the ones in env.PACKAGES
        # The same load at a rate a proxy slowed by tracing sustains (--profile).
        self.traced_run = traced_run
        # % of one CPU every proxy row may use (cpubudget.py), so the proxy,
        # not the client, is the limit; None: unbounded.
        self.budget = budget
        # Each sample names the side that limited it (also when --cpu-budget 0).
        self.limit = bool(budget)
        if budget:
            self.extras += ["budget_pct", "proxy_pct", "throttled_pct", "client_cpu_pct", "backend_cpu_pct",
                            "load_side_pct"]


US_CONN, US_REQ, US_RT, US_QUERY = ("µs/conn", 1e6), ("µs/req", 1e6), ("µs/round trip", 1e6), ("µs/query", 1e6)
S_PER_GB = ("CPU-s/GB", 1e9)


def workloads(args, sup, backend_idle, query_file, load_cpus, lbload_path, lbtls_path):
    tcp_rows = ["direct", "lb", "haproxy", "haproxy-splice", "nginx"]
    scaled_rows = ["direct", "lb", "lb-2w", "haproxy", "haproxy-splice", "nginx"]
    dns_rows = ["direct", "lb", "nginx", "dnsdist"]

    def idle_run(proxy, port, duration):
        try:
            return idle.measure(backend_idle, proxy.proc.pid, port, args.idle_conns, timeout=60)
        except idle.IdleError as e:
            raise loads.SampleError(str(e))

    def fixed(mode, rate, **kw):
        return lambda p, port, d: loads.lbload(sup, lbload_path, mode, port, d, rate, load_cpus, **kw)

    def dns_at(rate):
        return lambda p, port, d: loads.dnsperf(sup, port, d, rate, query_file, load_cpus)

    def tenth(rate):
        return max(100, rate // 10)

    tls_wls = tls.workloads(Workload, args, sup, backend_idle, load_cpus, lbtls_path)
    return [
        # Memory first, while every proxy is fresh: later workloads would
        # leave freed memory in the allocators that idle connections reuse.
        Workload("idle_mem", f"memory per idle TCP connection ({args.idle_conns:,} conns)", "B/conn",
                 "bytes_per_conn", False, "idle", ["lb", "haproxy", "nginx"], idle_run, rounds=1,
                 cpu=False),
        tls_wls[0],
        Workload("bulk1", "bulk TCP, 1 stream (iperf3)", "Gbps", "gbps", True, "bulk", scaled_rows,
                 lambda p, port, d: loads.iperf3(sup, port, d, 1, load_cpus), cost=S_PER_GB),
        Workload("bulk8", "bulk TCP, 8 streams (iperf3 -P 8)", "Gbps", "gbps", True, "bulk", scaled_rows,
                 lambda p, port, d: loads.iperf3(sup, port, d, 8, load_cpus), cost=S_PER_GB),
        Workload("connrate", f"connection rate, max (wrk, Connection: close, {loads.WRK_CONNECTIONS} conns)", "conn/s",
                 "rps", True, "http", scaled_rows,
                 lambda p, port, d: loads.wrk(sup, port, d, True, load_cpus), extras=["errors"], cost=US_CONN),
        Workload("connrate_fixed", f"connection rate at {args.conn_rate:,}/s (lbload close)", "conn/s",
                 "rate", True, "http", scaled_rows, fixed("http", args.conn_rate, conns=256, close=True),
                 extras=["p50_us", "p99_us", "p999_us", "lost"], cost=US_CONN, needs=("lbload",),
                 traced_run=fixed("http", tenth(args.conn_rate), conns=256, close=True)),
        Workload("keepalive", f"keep-alive requests, max (wrk --latency, {loads.WRK_CONNECTIONS} conns)", "req/s",
                 "rps", True, "http", tcp_rows,
                 lambda p, port, d: loads.wrk(sup, port, d, False, load_cpus), extras=["p50_us", "p99_us", "errors"],
                 cost=US_REQ),
        Workload("keepalive_fixed", f"keep-alive requests at {args.req_rate:,}/s (lbload, {loads.WRK_CONNECTIONS} conns)",
                 "req/s", "rate", True, "http", tcp_rows,
                 fixed("http", args.req_rate, conns=loads.WRK_CONNECTIONS),
                 extras=["p50_us", "p99_us", "p999_us", "lost"], cost=US_REQ, needs=("lbload",),
                 traced_run=fixed("http", tenth(args.req_rate), conns=loads.WRK_CONNECTIONS)),
        Workload("pingpong", f"ping-pong {loads.SOCKPERF_MSG} B (sockperf, 1 conn)", "round trips/s",
                 "rate", True, "sock", tcp_rows,
                 lambda p, port, d: loads.sockperf(sup, port, d, load_cpus), extras=["p50_us", "p99_us", "errors"],
                 cost=US_RT),
        Workload("dns_fixed", f"DNS over UDP at {args.dns_rate:,} qps (dnsperf)", "qps", "qps", True, "dns", dns_rows,
                 dns_at(args.dns_rate), extras=["loss_pct", "lost", "p50_us", "p99_us", "p999_us"], cost=US_QUERY,
                 traced_run=dns_at(tenth(args.dns_rate))),
        Workload("dns_fixed_high", f"DNS over UDP at {args.dns_high_rate:,} qps (dnsperf)", "qps", "qps", True, "dns",
                 dns_rows, dns_at(args.dns_high_rate), extras=["loss_pct", "lost", "p50_us", "p99_us", "p999_us"],
                 cost=US_QUERY, traced_run=dns_at(tenth(args.dns_high_rate))),
        Workload("dns_resolver", f"DNS over UDP, resolver-style: new source port per query, {args.resolver_rate:,} qps "
                 "(lbload)", "qps", "rate", True, "dns", dns_rows, fixed("dns", args.resolver_rate),
                 extras=["loss_pct", "lost", "p50_us", "p99_us", "p999_us"], cost=US_QUERY, needs=("lbload",),
                 traced_run=fixed("dns", tenth(args.resolver_rate))),
        Workload("dns_max", "DNS over UDP, max rate (dnsperf)", "qps", "qps", True, "dns", dns_rows,
                 dns_at(None), extras=["loss_pct", "lost"], cost=US_QUERY),
    ] + tls_wls[1:]


WORKLOAD_KEYS = ("idle_mem", "bulk1", "bulk8", "connrate", "connrate_fixed", "keepalive", "keepalive_fixed",
                 "pingpong", "dns_fixed", "dns_fixed_high", "dns_resolver", "dns_max") + tls.WORKLOAD_KEYS
ROW_NAMES = ("direct", "lb", "lb-2w", "lb-tcp", "haproxy", "haproxy-splice", "nginx", "dnsdist")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 2 s per sample")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per sample (default 3; --quick 2)")
    ap.add_argument("--only", help=f"comma-separated workloads to run ({','.join(WORKLOAD_KEYS)})")
    ap.add_argument("--rows", help=f"comma-separated rows to run ({','.join(ROW_NAMES)})")
    ap.add_argument("--lb", help="use this lb binary instead of building one")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build-bench"),
                    help="where lb is built (Release) when --lb is not given (default: build-bench)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--idle-conns", type=int, default=10000, help="idle connections for the memory workload")
    ap.add_argument("--idle-tls-conns", type=int, help="idle TLS connections for the TLS memory workload "
                                                          "(default 4,000; --quick 1,000)")
    ap.add_argument("--dns-rate", type=int, default=10000, help="queries/s of the first fixed-rate DNS workload")
    ap.add_argument("--dns-high-rate", type=int, default=30000, help="queries/s of the second fixed-rate DNS workload")
    ap.add_argument("--resolver-rate", type=int, default=10000,
                    help="queries/s of the resolver-style DNS workload (a new socket per query)")
    ap.add_argument("--conn-rate", type=int, default=2000, help="connections/s of the fixed connection rate")
    ap.add_argument("--req-rate", type=int, default=10000, help="requests/s of the fixed keep-alive rate")
    ap.add_argument("--profile", action="store_true",
                    help="after each workload, profile lb (perf cpu-clock, flame graph) and count its syscalls "
                         "(perf stat, perf trace -s) in extra samples; written to the output directory")
    ap.add_argument("--cpu-budget", type=float, metavar="PCT",
                    help="%% of one CPU each proxy may use in the TLS rate rows, one figure for all of them "
                         "(default: per workload, see bench/README.md; 0: no budget, the old unbounded rows)")
    ap.add_argument("--proxy-cpu", type=int, help="CPU for the proxies (default: the first usable)")
    ap.add_argument("--load-cpu", type=int, help="CPU for backends and load generators (default: the second)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"), help="where results are written")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configurations, logs)")
    args = ap.parse_args(argv)
    for opt, known in (("only", WORKLOAD_KEYS), ("rows", ROW_NAMES)):
        given = getattr(args, opt)
        unknown = set(given.split(",")) - set(known) if given else set()
        if unknown:
            ap.error(f"--{opt}: unknown {', '.join(sorted(unknown))} (choose from {','.join(known)})")
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 3)
    args.idle_tls_conns = args.idle_tls_conns or (1000 if args.quick else 4000)
    if args.cpu_budget is not None and not 0 <= args.cpu_budget <= 100:
        ap.error("--cpu-budget is a percentage of one CPU, 0 to 100")
    if min(args.rounds, args.duration, args.idle_conns, args.dns_rate, args.dns_high_rate, args.resolver_rate,
           args.conn_rate, args.req_rate) < 1:
        ap.error("--rounds, --duration, --idle-conns and the rates must be positive")
    return args


def say(msg):
    print(f"== {msg}", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("bench/run needs Linux (taskset, /proc)", file=sys.stderr)
        return 1
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        print("bench/run needs two CPUs: one for the proxy, one for load and backends", file=sys.stderr)
        return 1
    proxy_cpu = args.proxy_cpu if args.proxy_cpu is not None else usable[0]
    load_cpu = args.load_cpu if args.load_cpu is not None else next(c for c in usable if c != proxy_cpu)
    if proxy_cpu == load_cpu or proxy_cpu not in usable or load_cpu not in usable:
        print(f"--proxy-cpu and --load-cpu must be two different usable CPUs of {usable}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    t0 = time.monotonic()
    run_dir = tempfile.mkdtemp(prefix="lb-bench-")
    os.chmod(run_dir, 0o755)   # nginx workers (user nobody) read www/ under it
    sup = Supervisor(run_dir)
    backend_idle = None
    budget = None
    keep = args.keep
    try:
        wanted = dict(env.PACKAGES, **(env.PROFILE_PACKAGES if args.profile else {}))
        unusable = {} if args.no_install else env.ensure_packages(say, wanted)
        if args.no_install:
            unusable = {p: "not installed (--no-install)" for p, path in wanted.items()
                        if not os.path.exists(path)}
        if args.profile and unusable.get("linux-perf"):
            say(f"--profile: no perf ({unusable['linux-perf']}): no profiles this run")
            args.profile = False
        for p, why in unusable.items():
            say(f"SKIP rows needing {p}: {why}")

        lb_path, lb_err = args.lb, None
        if lb_path is None:
            lb_path, lb_err = env.build_lb(REPO, args.build_dir, os.path.join(run_dir, "build.log"), say)
            if lb_path and env.cmake_build_type(args.build_dir) != "Release":
                say(f"WARNING: {args.build_dir} is configured as {env.cmake_build_type(args.build_dir)!r}, "
                    "not Release; lb numbers may be low")
        elif not os.access(lb_path, os.X_OK):
            lb_path, lb_err = None, f"{args.lb} is not executable"
        if lb_err:
            say(f"SKIP lb rows: {lb_err}")
            keep = True

        # Both ends of every idle connection are in this process; the proxies
        # hold two descriptors per connection.
        nofile = env.raise_nofile(max(65536, 4 * args.idle_conns + 4096))
        if nofile < 2 * args.idle_conns + 400:
            args.idle_conns = max(100, (nofile - 400) // 2)
            say(f"open files limit is {nofile} and cannot be raised here: "
                f"the memory workload uses {args.idle_conns:,} connections")
        machine = env.describe_machine(lb_path, REPO)
        os.sched_setaffinity(0, {load_cpu})
        load_cpus = str(load_cpu)

        say(f"{machine['cpu_model']}, {machine['cpus_online']} CPUs, Linux {machine['kernel']}, "
            f"load average {machine['loadavg_at_start'][0]:.2f}")
        say(f"proxies on CPU {proxy_cpu}; backends and load generators on CPU {load_cpu}; "
            f"{args.rounds} round(s) of {args.duration} s samples")

        backend_idle = idle.IdleBackend()
        tls.prepare(run_dir)
        query_file = os.path.join(run_dir, "queries.txt")
        loads.write_dns_queries(query_file)
        backends = peers.Backends(run_dir, backend_idle)
        backends.start(sup, load_cpus, unusable, nofile)
        for service, why in backends.down.items():
            say(f"SKIP workloads on {service}: backend unavailable: {why}")

        all_cpus = ",".join(str(c) for c in usable)
        proxies = peers.make_proxies(run_dir, lb_path, proxy_cpu, all_cpus, nofile, args.idle_conns)
        wanted_rows = set(args.rows.split(",")) if args.rows else None
        for p in proxies:
            if wanted_rows is not None and p.name not in wanted_rows:
                p.unavailable = "not selected (--rows)"
                continue
            missing = [n for n in p.needs if n in unusable]
            if missing:
                p.unavailable = f"{', '.join(missing)}: {unusable[missing[0]]}"
            elif p.name.startswith("lb") and not lb_path:
                p.unavailable = lb_err
        lbload_path, lbload_err = env.build_lbload(run_dir)
        if lbload_err:
            say(f"SKIP workloads needing lbload: {lbload_err}")
        lbtls_path, lbtls_err = env.build_lbload(run_dir, "lbtls", ["-lssl", "-lcrypto"])
        if lbtls_err:
            say(f"SKIP workloads needing lbtls: {lbtls_err}")
        wls = workloads(args, sup, backend_idle, query_file, load_cpus, lbload_path, lbtls_path)
        if args.only:
            names = set(args.only.split(","))
            wls = [w for w in wls if w.key in names]
        if lbload_err:
            wls = [w for w in wls if "lbload" not in w.needs]
        if lbtls_err:
            wls = [w for w in wls if "lbtls" not in w.needs]
        if wanted_rows is not None:
            for w in wls:
                w.rows = [r for r in w.rows if r in wanted_rows]
        if args.cpu_budget is not None:
            for w in wls:
                if w.budget:
                    w.budget = args.cpu_budget or None
        budget_note = None
        if any(w.budget for w in wls):
            budget, why = cpubudget.CpuBudget.create()
            if budget is None:
                budget_note = f"unavailable: {why}"
                say(f"CPU budget {budget_note}: the rows meant to have one run unbounded, and the client "
                    "may be their limit (see each row's 'limit')")
            else:
                budget_note = f"{budget.kind} {budget.path}, period {cpubudget.PERIOD_US} µs"
                say("CPU budget: " + budget_note + "; " + ", ".join(
                    f"{w.key} {w.budget:g} %" for w in wls if w.budget) + " of the proxy CPU for every proxy row")
        needed = {r for w in wls for r in w.rows}
        for p in proxies:
            if p.unavailable or p.name not in needed or p.argv_fn is None:
                continue
            err = p.start(sup, backends)
            if err:
                p.unavailable = err
                keep = True
            if p.unavailable:
                say(f"SKIP {p.label}: {p.unavailable}")
        by_name = {p.name: p for p in proxies}

        started = datetime.datetime.now(datetime.timezone.utc)
        results = {
            "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(["bench/run"] + argv),
            "quick": args.quick,
            "profile": args.profile,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "machine": machine,
            "setup": {
                "proxy_cpu": proxy_cpu, "load_cpu": load_cpu,
                "buffer_bytes": peers.BUFSIZE,
                "rows": {p.name: p.note for p in proxies},
                "wrk_connections": loads.WRK_CONNECTIONS,
                "dnsperf_clients": loads.DNSPERF_CLIENTS, "dnsperf_outstanding": loads.DNSPERF_OUTSTANDING,
                "dns_fixed_rate_qps": args.dns_rate, "dns_fixed_high_rate_qps": args.dns_high_rate,
                "dns_resolver_rate_qps": args.resolver_rate, "conn_fixed_rate": args.conn_rate,
                "keepalive_fixed_rate": args.req_rate, "idle_connections": args.idle_conns,
                "sockperf_message_bytes": loads.SOCKPERF_MSG,
                "open_files_limit": nofile,
                "cpu_budget": {"method": budget_note,
                               "pct": {w.key: (w.budget if budget else None) for w in wls if w.budget}},
            },
            "skipped": {p: why for p, why in unusable.items()},
            "events": [],
            "workloads": {},
        }
        stem = started.strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
        os.makedirs(args.out_dir, exist_ok=True)
        run_all(args, wls, by_name, backends, sup, results, stem, load_cpus, budget)
        report.summarize(results)
        report.evaluate_targets(results)
        tls.targets(results)
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        for p in proxies:
            if p.name.startswith("lb") and p.proc is not None:
                tail = p.proc.log_tail(50)
                if tail:
                    results.setdefault("logs", {})[p.name] = tail.splitlines()
        table = report.markdown(results)
        results["table_markdown"] = table
        print()
        print(table)
        print()
        json_path = os.path.join(args.out_dir, stem + ".json")
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, ensure_ascii=False)
            f.write("\n")
        with open(os.path.join(args.out_dir, stem + ".md"), "w") as f:
            f.write(f"Run of {results['date']} ({results['command']}) on {machine['cpu_model']}, "
                    f"{machine['cpus_online']} CPUs, Linux {machine['kernel']}.\n\n{table}\n")
        say(f"results: {json_path} ({(time.monotonic() - t0) / 60:.1f} min)")
        if results["events"]:
            keep = True
            say(f"{len(results['events'])} proxy crash(es)/restart(s), see 'events' in the JSON")
        return 0
    except KeyboardInterrupt:
        print("\n== interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)   # finish the cleanup even on a second Ctrl-C
        if budget is not None:
            budget.leave()
        sup.stop_all()
        if budget is not None and not budget.remove():
            print(f"== could not remove the cgroup {budget.path}: rmdir it by hand", file=sys.stderr)
        if backend_idle:
            backend_idle.close()
        if keep:
            print(f"== configurations and logs kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _ensure_up(p, backends, sup, results, wl):
    """Restarts a proxy that died (recording the crash); False when it is gone for good."""
    if p.alive():
        return True
    if p.proc is not None:
        event = {"row": p.name, "workload": wl.key, "exit_status": p.proc.returncode(),
                 "log_tail": p.proc.log_tail(30).splitlines()}
        results["events"].append(event)
        say(f"{p.label} exited with status {event['exit_status']} during {wl.key}; log {p.proc.log_path}")
        sup.stop(p.proc)
        p.proc = None
    if p.restarts >= 3:
        p.unavailable = "crashed too often"
        return False
    p.restarts += 1
    err = p.start(sup, backends)
    if err:
        p.unavailable = err
        return False
    return True


def _busy_pct(before, after, cpu):
    if cpu not in before or cpu not in after:
        return None
    total = after[cpu][0] - before[cpu][0]
    idle_ = after[cpu][1] - before[cpu][1]
    return 100.0 * (total - idle_) / total if total > 0 else None


def _sample_in_budget(wl, p, budget, run):
    """Runs one sample, with the proxy's process tree inside the CPU budget
    when the workload has one; adds the budget's figures to the metrics."""
    if budget is None or not wl.budget or p.proc is None:
        t0 = time.monotonic()
        m = run()
        m["wall_s"] = time.monotonic() - t0
        return m
    pid = p.proc.pid
    try:
        try:
            budget.set_pct(wl.budget)
            budget.enter([pid] + descendants(pid))
        except OSError as e:
            raise loads.SampleError(f"cannot put {p.name} into the CPU budget {budget.path}: {e}")
        s0, t0 = budget.stat(), time.monotonic()
        m = run()
        m["wall_s"], s1 = time.monotonic() - t0, budget.stat()
    finally:
        budget.leave()
    m["budget_pct"] = budget.pct
    periods = s1.get("periods", 0) - s0.get("periods", 0)
    if periods > 0:
        m["throttled_pct"] = 100.0 * (s1.get("throttled", 0) - s0.get("throttled", 0)) / periods
    return m


def run_all(args, wls, by_name, backends, sup, results, stem, load_cpus, budget=None):
    proxy_cpu, load_cpu = results["setup"]["proxy_cpu"], results["setup"]["load_cpu"]
    for i, wl in enumerate(wls, 1):
        entry = {"title": wl.title, "unit": wl.unit, "metric": wl.metric,
                 "higher_is_better": wl.higher_is_better, "extras": wl.extras, "rows": {},
                 "cost_unit": wl.cost[0] if wl.cost else None}
        results["workloads"][wl.key] = entry
        rows = []
        for name in wl.rows:
            p = by_name[name]
            row = {"label": p.label, "samples": [], "errors": []}
            if wl.service in backends.down:
                row["skipped"] = f"no {wl.service} backend"
            elif p.unavailable:
                row["skipped"] = p.unavailable
            elif wl.service not in p.services:
                continue
            else:
                rows.append(p)
            entry["rows"][name] = row
        if wl.service in backends.down:
            say(f"[{wl.key}] SKIP: backend unavailable")
            continue
        rounds = wl.rounds or args.rounds
        say(f"[{i}/{len(wls)}] {wl.title}: {len(rows)} rows × {rounds} round(s)")
        for r in range(rounds):
            parts = []
            for p in rows:
                row = entry["rows"][p.name]
                if p.unavailable or not _ensure_up(p, backends, sup, results, wl):
                    row["errors"].append(f"round {r + 1}: not running: {p.unavailable}")
                    parts.append(f"{p.name} down")
                    continue
                try:
                    pid = p.proc.pid if p.proc is not None else None
                    ticks0 = cpu_ticks(pid) if pid else None
                    be = backends.proc_for(wl.service) if wl.limit else None
                    be_ticks0 = cpu_ticks(be.pid) if be else None
                    before = cpu_times()
                    m = _sample_in_budget(wl, p, budget,
                                          lambda: wl.run(p, p.port(wl.service, backends), args.duration))
                    after = cpu_times()
                    if wl.cpu:
                        m["cpu_proxy_pct"] = _busy_pct(before, after, proxy_cpu)
                        m["cpu_load_pct"] = _busy_pct(before, after, load_cpu)
                    if wl.cost and pid:
                        # The tool's whole run, start-up and drain included,
                        # against every unit it completed in it.
                        m["proxy_cpu_s"], m["proxy_cpu_s_ticks"] = cpu_seconds_between(ticks0, cpu_ticks(pid))
                        if m.get("units"):
                            m["cost"] = m["proxy_cpu_s"] * wl.cost[1] / m["units"]
                        if m.get("wall_s"):
                            m["proxy_pct"] = 100.0 * m["proxy_cpu_s"] / m["wall_s"]
                    if wl.limit:
                        # The load side: the client's own CPU (tls.py, rusage) plus the backend's.
                        if be_ticks0 is not None and m.get("wall_s"):
                            be_s, _ = cpu_seconds_between(be_ticks0, cpu_ticks(be.pid))
                            m["backend_cpu_pct"] = 100.0 * be_s / m["wall_s"]
                            if m.get("client_cpu_pct") is not None:
                                m["load_side_pct"] = m["client_cpu_pct"] + m["backend_cpu_pct"]
                        m["limit"] = cpubudget.classify(m.get("proxy_pct"), m.get("budget_pct"),
                                                        m.get("load_side_pct", m.get("client_cpu_pct")),
                                                        m.get("cpu_load_pct"))
                    m["round"] = r + 1
                    row["samples"].append(m)
                    parts.append(f"{p.name} {report.fmt_value(m[wl.metric], wl.unit)}")
                except loads.SampleError as e:
                    row["errors"].append(f"round {r + 1}: {e}")
                    parts.append(f"{p.name} ERROR")
                    say(f"   {p.label}: {e}")
                if not p.alive():
                    _ensure_up(p, backends, sup, results, wl)
                # Let sockets of the sample close before the next row starts.
                time.sleep(0.3)
            print(f"   round {r + 1}/{rounds}: " + " · ".join(parts), flush=True)
        lb = by_name.get("lb")
        if args.profile and wl.key in profile.MIN_SYSCALLS and lb in rows and _ensure_up(lb, backends, sup, results, wl):
            run_profile(args, wl, lb, backends, sup, results, stem, load_cpus)


def run_profile(args, wl, lb, backends, sup, results, stem, load_cpus):
    """Two extra samples of lb (not in the tables): perf record, then the syscall count."""
    port = lb.port(wl.service, backends)
    prof = results.setdefault("profiles", {}).setdefault(wl.key, {})
    for what, fn in (("perf", profile.perf_profile), ("syscalls", profile.syscall_count)):
        try:
            res = fn(sup, wl, lb, port, args.duration, load_cpus, args.out_dir, stem)
        except (loads.SampleError, OSError, subprocess.SubprocessError) as e:
            res = {"error": str(e)}
        if "error" in res:
            say(f"   profile {what}: {res['error']}")
            prof[f"{what}_error"] = res.pop("error")
        prof.update({k: v for k, v in res.items() if k != "load"})
        prof[f"{what}_load"] = res.get("load")
        if not lb.alive():
            _ensure_up(lb, backends, sup, results, wl)
        time.sleep(0.3)
    per, mn = prof.get("syscalls_per_unit"), prof.get("min_syscalls_per_unit")
    say(f"   profile lb: {prof.get('svg_file', 'no flame graph')}; syscalls/unit "
        f"{'—' if per is None else f'{per:.2f}'} (minimum {mn}); {profile.format_split(prof.get('cpu_split'))}")
