"""Self-tests of the benchmark harness: the constant-rate client, the CPU
accounting, the cost ratios and targets, and the profile helpers.

    python3 -m unittest discover -s bench/lib/tests

Everything runs on loopback against servers in this process, bounded in
time; nothing here needs the proxies or the Debian load tools (lbload needs
cc)."""
import collections
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import xml.dom.minidom

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from lbbench import cpubudget, env, procs, profile, report, tls  # noqa: E402


class _Tiny(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b"x" * 63 + b"\n"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class _DnsResponder:
    """Answers each query (sets QR) unless drop(n) says to drop the n-th;
    records every source port."""

    def __init__(self, drop=lambda n: False):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ports, self.drop, self.stop = [], drop, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        n = 0
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            n += 1
            self.ports.append(peer[1])
            if not self.drop(n):
                self.sock.sendto(data[:2] + bytes([data[2] | 0x80]) + data[3:], peer)

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def _time_wait_toward(port):
    """TIME_WAIT sockets on this host whose remote end is 127.0.0.1:port."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "06" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


class LbloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="lbload-test-")
        cls.tool, err = env.build_lbload(cls.dir)
        if err:
            raise RuntimeError(err)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_tool(self, *args):
        r = subprocess.run([self.tool] + [str(a) for a in args], stdout=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 0)
        return json.loads(r.stdout)

    def http_server(self):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tiny)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        self.addCleanup(lambda: (srv.shutdown(), srv.server_close()))
        return srv.server_address[1]

    def test_keepalive_sends_the_rate_on_its_connections(self):
        port = self.http_server()
        doc = self.run_tool("http", port, 200, 1, 4)
        self.assertEqual((doc["sent"], doc["done"], doc["errors"], doc["late"]), (200, 200, 0, 0))
        self.assertGreaterEqual(doc["p99_us"], doc["p50_us"])
        self.assertGreaterEqual(doc["p999_us"], doc["p99_us"])

    def test_close_mode_opens_a_connection_per_request(self):
        port = self.http_server()
        doc = self.run_tool("http", port, 200, 1, 16, "close")
        self.assertEqual((doc["sent"], doc["done"], doc["errors"]), (200, 200, 0))

    def test_close_mode_lets_the_server_close_first(self):
        # The client must not hold the TIME_WAITs: thousands of them per
        # second use up its ephemeral ports and later connects stall.
        port = self.http_server()
        self.run_tool("http", port, 200, 1, 16, "close")
        self.assertEqual(_time_wait_toward(port), 0)

    def test_refused_connections_are_errors_not_answers(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()   # nothing listens there now
        doc = self.run_tool("http", port, 100, 1, 4, "close")
        self.assertEqual(doc["done"], 0)
        self.assertGreater(doc["errors"], 0)

    def test_dns_uses_a_new_source_port_per_query_and_counts_loss(self):
        responder = _DnsResponder(drop=lambda n: n % 4 == 0)
        try:
            doc = self.run_tool("dns", responder.port, 200, 1)
        finally:
            responder.close()
        self.assertEqual(doc["sent"], 200)
        self.assertEqual(doc["done"], 150)
        self.assertEqual(doc["errors"], 50)   # lost after 1 s without an answer
        # Random ephemeral ports: a few of 200 may repeat by chance.
        self.assertGreaterEqual(len(set(responder.ports)), 190)


    def echo(self, name, lifetime):
        p = subprocess.Popen([self.tool, "echo", "0", name, str(lifetime)], stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (p.kill(), p.wait()))
        return p, json.loads(p.stdout.readline())["port"]

    def test_game_sessions_are_answered_and_counted_per_backend(self):
        (_, a), (_, b) = self.echo("a", 30), self.echo("b", 30)
        doc = self.run_tool("game", f"{a},{b}", 20, 1, 300)
        self.assertEqual((doc["sent"], doc["received"], doc["bad"], doc["sessions_with_loss"]), (6000, 6000, 0, 0))
        self.assertEqual(doc["backends"], {"a": {"sessions": 150, "moved": 0, "sessions_with_loss": 0, "lost": 0},
                                           "b": {"sessions": 150, "moved": 0, "sessions_with_loss": 0, "lost": 0}})
        self.assertGreaterEqual(doc["p999_us"], doc["p99_us"])
        self.assertGreaterEqual(doc["p99_us"], doc["p50_us"])

    def test_game_loss_is_charged_to_the_sessions_of_a_backend_that_went_away(self):
        (gone, a), (_, b) = self.echo("a", 30), self.echo("b", 30)
        client = subprocess.Popen([self.tool, "game", f"{a},{b}", "20", "2", "100"], stdout=subprocess.PIPE)
        time.sleep(1.0)
        gone.kill()
        doc = json.loads(client.communicate(timeout=30)[0])
        self.assertEqual(doc["backends"]["a"]["sessions_with_loss"], 50)
        self.assertEqual(doc["backends"]["b"]["sessions_with_loss"], 0)
        self.assertEqual(doc["sessions_with_loss"], 50)
        self.assertEqual(doc["sent"] - doc["received"], doc["backends"]["a"]["lost"])
        self.assertGreater(sum(doc["lost_by_second"][1:]), 0)


class CpuAccountingTest(unittest.TestCase):
    def test_nanoseconds_preferred_ticks_kept(self):
        before = {1: (100, 1_000_000_000), 2: (50, 500_000_000)}
        after = {1: (130, 1_300_000_000), 2: (60, 600_000_000), 3: (5, 50_000_000)}   # 3 started in between
        cpu, ticks = procs.cpu_seconds_between(before, after)
        self.assertAlmostEqual(cpu, 0.45)
        self.assertAlmostEqual(ticks, 45 / procs.CLK_TCK)

    def test_ticks_when_schedstat_is_missing(self):
        cpu, ticks = procs.cpu_seconds_between({1: (100, None)}, {1: (150, None)})
        self.assertAlmostEqual(cpu, 50 / procs.CLK_TCK)
        self.assertEqual(cpu, ticks)

    def test_own_process_tree_is_read(self):
        t = procs.cpu_ticks(os.getpid())
        self.assertIn(os.getpid(), t)


def _row(label, samples):
    return {"label": label, "samples": samples, "errors": []}


class ReportTest(unittest.TestCase):
    def results(self):
        wl = {"title": "DNS", "unit": "qps", "metric": "qps", "higher_is_better": True,
              "extras": ["cost", "lost", "p99_us"], "cost_unit": "µs/query", "rows": {
                  "lb": _row("lb", [{"qps": 10000, "cost": 7.0, "lost": 0, "p99_us": 100},
                                    {"qps": 10000, "cost": 8.0, "lost": 0, "p99_us": 120},
                                    {"qps": 10000, "cost": 9.0, "lost": 0, "p99_us": 110}]),
                  "nginx": _row("nginx", [{"qps": 10000, "cost": 12.0, "lost": 0, "p99_us": 90}]),
                  "dnsdist": _row("dnsdist", [{"qps": 10000, "cost": 10.0, "lost": 0, "p99_us": 95}])}}
        return {"workloads": {"dns_fixed": wl}}

    def test_cost_ratios_use_the_cheapest_peer(self):
        res = self.results()
        report.summarize(res)
        wl = res["workloads"]["dns_fixed"]
        self.assertEqual(wl["best_peer_cost"], "dnsdist")
        self.assertAlmostEqual(wl["rows"]["lb"]["cost_vs_best_peer"], 0.8)
        self.assertAlmostEqual(wl["rows"]["nginx"]["cost_vs_best_peer"], 1.2)

    def test_dns_cost_target_passes_at_0_8_and_fails_on_loss(self):
        res = self.results()
        report.summarize(res)
        report.evaluate_targets(res)
        t = [x for x in res["cost_targets"] if x["workload"] == "dns_fixed"]
        self.assertEqual(t[0]["result"], "PASS")
        res = self.results()
        res["workloads"]["dns_fixed"]["rows"]["lb"]["samples"][1]["lost"] = 3
        report.summarize(res)
        report.evaluate_targets(res)
        t = [x for x in res["cost_targets"] if x["workload"] == "dns_fixed"]
        self.assertEqual(t[0]["result"], "MISS")

    def test_table_has_the_cost_columns(self):
        res = self.results()
        report.summarize(res)
        report.evaluate_targets(res)
        table = report.markdown(res)
        self.assertIn("8.0 µs/query", table)
        self.assertIn("issue 20", table)


class TlsTargetsTest(unittest.TestCase):
    def results(self, lb_pass, lb_tcp):
        def wl(metric, rows, hib=True):
            return {"title": metric, "unit": "u", "metric": metric, "higher_is_better": hib, "extras": [],
                    "rows": {n: _row(n, [{metric: v}]) for n, v in rows.items()}}
        return {"workloads": {
            "tls_pass": wl("rate", {"lb": lb_pass, "lb-tcp": lb_tcp, "haproxy": 1000, "nginx": 1050}),
            "tls_idle_mem": wl("bytes_per_conn", {"lb": 14000, "haproxy": 18000, "nginx": 30000}, hib=False)}}

    def verdicts(self, res):
        report.summarize(res)
        tls.targets(res)
        return {t["target"].split(":")[0]: t["result"] for t in res["targets"]}

    def test_passthrough_needs_both_its_own_tcp_rate_and_the_best_peer(self):
        v = self.verdicts(self.results(1160, 1200))
        self.assertEqual(v["TLS passthrough connection rate"], "PASS")   # 0.97 × tcp, 1.105 × nginx
        self.assertEqual(v["memory per idle terminated TLS connection"], "PASS")   # 0.78 × HAProxy
        v = self.verdicts(self.results(1100, 1110))
        self.assertEqual(v["TLS passthrough connection rate"], "MISS")   # 1.05 × nginx
        v = self.verdicts(self.results(1200, 1300))
        self.assertEqual(v["TLS passthrough connection rate"], "MISS")   # 0.92 × tcp


V1_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
_CG_V1_ROOT = "/sys/fs/cgroup/cpu"


class CpuBudgetTest(unittest.TestCase):
    def test_v1_cpu_hierarchy_is_preferred(self):
        self.assertEqual(cpubudget.find_hierarchy(V1_MOUNTS), ("v1", "/sys/fs/cgroup/cpu"))
        combined = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
        self.assertEqual(cpubudget.find_hierarchy(combined), ("v1", "/sys/fs/cgroup/cpu,cpuacct"))

    def test_v2_needs_the_cpu_controller(self):
        self.assertEqual(cpubudget.find_hierarchy(V2_MOUNTS, lambda m: "cpuset cpu io memory pids\n"),
                         ("v2", "/sys/fs/cgroup"))
        kind, why = cpubudget.find_hierarchy(V2_MOUNTS, lambda m: "memory pids\n")
        self.assertIsNone(kind)
        self.assertIn("cpu controller is not available", why)
        kind, why = cpubudget.find_hierarchy("proc /proc proc rw 0 0\n")
        self.assertIsNone(kind)

    def test_no_hierarchy_means_no_budget_and_a_reason(self):
        with tempfile.NamedTemporaryFile("w", suffix=".mounts") as f:
            f.write("proc /proc proc rw 0 0\n")
            f.flush()
            budget, why = cpubudget.CpuBudget.create(mounts_path=f.name)
        self.assertIsNone(budget)
        self.assertIn("no cgroup hierarchy", why)

    def test_own_cgroup_per_hierarchy(self):
        text = "4:memory:/x\n1:cpu,cpuacct:/user.slice\n0::/init.scope\n"
        self.assertEqual(cpubudget.own_cgroup(text, "v1"), "/user.slice")
        self.assertEqual(cpubudget.own_cgroup(text, "v2"), "/init.scope")

    def test_classify_names_the_side_that_ran_out(self):
        self.assertEqual(cpubudget.classify(34.5, 35, 60, 70), "proxy")
        self.assertEqual(cpubudget.classify(34.5, 35, 60, 100), "proxy")       # others busy the load CPU
        self.assertEqual(cpubudget.classify(20, 35, 99, 100), "client")
        self.assertEqual(cpubudget.classify(34, 35, 95, 99), "proxy and client")
        self.assertEqual(cpubudget.classify(20, 35, 50, 60), "neither")
        self.assertEqual(cpubudget.classify(None, None, 76, 100),
                         "client (load CPU full, shared with other work)")
        self.assertEqual(cpubudget.classify(None, None, 97, 100), "client")     # the direct row
        self.assertEqual(cpubudget.classify(None, None, None, 97), "client")    # load side unknown
        self.assertEqual(cpubudget.classify(95, None, 50, 60), "proxy")         # no budget: its whole CPU

    @unittest.skipUnless(os.geteuid() == 0 and os.access(os.path.join(_CG_V1_ROOT, "cgroup.procs"), os.W_OK)
                         and "cgroup /sys/fs/cgroup/cpu " in open("/proc/mounts").read(),
                         "needs root and cgroup v1's cpu hierarchy at /sys/fs/cgroup/cpu")
    def test_a_process_goes_in_and_back_and_the_cgroup_is_removed(self):
        stale = os.path.join(_CG_V1_ROOT, cpubudget.PREFIX + "4194305")   # above pid_max: never alive
        os.makedirs(stale, exist_ok=True)
        budget, why = cpubudget.CpuBudget.create(name=f"{cpubudget.PREFIX}{os.getpid()}-test")
        self.assertIsNotNone(budget, why)
        child = subprocess.Popen(["sleep", "10"])
        try:
            self.assertFalse(os.path.exists(stale))
            budget.set_pct(10)
            with open(os.path.join(budget.path, "cpu.cfs_quota_us")) as f:
                self.assertEqual(int(f.read()), cpubudget.PERIOD_US // 10)
            budget.enter([child.pid])
            with open(f"/proc/{child.pid}/cgroup") as f:
                self.assertIn(os.path.basename(budget.path), f.read())
            self.assertIn("periods", budget.stat())
            budget.leave()
            with open(f"/proc/{child.pid}/cgroup") as f:
                self.assertNotIn(os.path.basename(budget.path), f.read())
            budget.enter([child.pid])     # removed with a process still inside
        finally:
            self.assertTrue(budget.remove())
            child.kill()
            child.wait()
        self.assertFalse(os.path.exists(budget.path))


class SyscallsToolTest(unittest.TestCase):
    def test_perf_stat_counters_by_name_and_total(self):
        import importlib.util
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "syscalls.py")
        spec = importlib.util.spec_from_file_location("lb_syscalls", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        text = ("# started on Mon Dec  7 12:00:00 2026\n\n"
                "183771,,raw_syscalls:sys_enter,4001234567,100.00,,\n"
                "6000,,syscalls:sys_enter_accept4,4001234567,100.00,,\n"
                "36000,,syscalls:sys_enter_epoll_ctl,4001234567,100.00,,\n"
                "<not counted>,,syscalls:sys_enter_readv,0,0.00,,\n")
        self.assertEqual(mod.parse_perf_stat(text), {"total": 183771, "accept4": 6000, "epoll_ctl": 36000})


PERF_SCRIPT = """lb 100/100  1.0:    1001001 cpu-clock:
\tffffffff81000001 tcp_sendmsg+0x10 ([kernel.kallsyms])
\tffffffff81000002 __sys_sendto+0x20 ([kernel.kallsyms])
\t           1234 __send+0x3 (/usr/lib/libc.so.6)
\t           5678 lb::Session::on_read+0x1f (/usr/bin/lb)

lb 100/100  1.1:    1001001 cpu-clock:
\t           5678 lb::Session::on_read+0x2f (/usr/bin/lb)

lb 100/100  1.2:    1001001 cpu-clock:
\t           9999 [unknown] ([unknown])
"""


WAKE_SCRIPT = """
lb 100/100  1.3:    1001001 cpu-clock:
\tffffffff81000003 finish_task_switch+0x10 ([kernel.kallsyms])
\tffffffff81000004 __schedule+0x20 ([kernel.kallsyms])
\tffffffff81000005 do_epoll_wait+0x30 ([kernel.kallsyms])
\t           1235 epoll_wait+0x3 (/usr/lib/libc.so.6)
"""


class ProfileTest(unittest.TestCase):
    def test_collapse_roots_first_kernel_marked(self):
        stacks = profile.collapse(PERF_SCRIPT)
        self.assertEqual(stacks, {
            "lb;lb::Session::on_read;__send;__sys_sendto_[k];tcp_sendmsg_[k]": 1,
            "lb;lb::Session::on_read": 1,
            "lb;[unknown]": 1,
        })

    def test_samples_are_split_by_the_innermost_frames_part_of_the_program(self):
        leaves = collections.Counter()
        stacks = profile.collapse(PERF_SCRIPT + WAKE_SCRIPT, leaves)
        self.assertEqual(dict(leaves), {"kernel": 2, "lb": 1, "other": 1})
        split = profile.cpu_split(stacks, leaves)
        self.assertAlmostEqual(split["kernel"], 50.0)
        self.assertAlmostEqual(split["lb"], 25.0)
        self.assertAlmostEqual(split["libuv"], 0.0)
        self.assertAlmostEqual(split["sleep_wake"], 25.0)   # the epoll_wait that went to sleep
        self.assertEqual(profile.format_split(split),
                         "kernel 50.0 %, lb 25.0 %, other 25.0 %; sleeping or waking 25.0 %")
        self.assertEqual(profile.leaf_part("/usr/lib/x86_64-linux-gnu/libuv.so.1.0.0"), "libuv")
        self.assertEqual(profile.leaf_part("/usr/lib/x86_64-linux-gnu/libc.so.6"), "libc")
        self.assertEqual(profile.leaf_part("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"), "openssl")

    def test_flamegraph_is_valid_svg_with_a_box_per_frame(self):
        svg = profile.flamegraph(profile.collapse(PERF_SCRIPT), "t <&> t")
        doc = xml.dom.minidom.parseString(svg)
        titles = [t.firstChild.data for t in doc.getElementsByTagName("title")]
        self.assertTrue(any(t.startswith("all (3 samples") for t in titles))
        self.assertTrue(any(t.startswith("lb::Session::on_read (2 samples") for t in titles))
        self.assertTrue(any(t.startswith("tcp_sendmsg_[k] (1 samples") for t in titles))

    def test_perf_trace_summary_sums_threads(self):
        text = """
 Summary of events:

 lb (100), 30 events, 60.0%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   read                  10      0     0.100     0.010     0.010     0.010      1.00%
   write                  5      0     0.050     0.010     0.010     0.010      1.00%

 lb (101), 20 events, 40.0%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   read                   7      1     0.070     0.010     0.010     0.010      1.00%
"""
        self.assertEqual(profile.parse_perf_trace_summary(text), {"read": 17, "write": 5})

    def test_strace_summary(self):
        text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 67.07    0.202801         572       354           epoll_wait
 16.70    0.050497          43      1156        12 sendmmsg
------ ----------- ----------- --------- --------- ----------------
100.00    0.302374         108      1510        12 total
"""
        self.assertEqual(profile.parse_strace_summary(text), {"epoll_wait": 354, "sendmmsg": 1156, "total": 1510})


if __name__ == "__main__":
    unittest.main()
