"""Backends and proxies: their configurations (rendered from bench/lib/conf),
how each is started, and which loopback ports it serves.

Services, each with one backend and one front port per proxy:
  bulk  -> iperf3 server            (TCP)
  http  -> nginx serving tiny.txt   (TCP)
  sock  -> sockperf server          (TCP)
  idle  -> the harness's silent listener (TCP)
  dns   -> dnsdist answering itself (UDP)
TLS (bench/lib/lbbench/tls.py), the proxies' TLS listeners:
  tls_ec   -> terminate with the ECDSA P-256 certificate, to the http backend
  tls_rsa  -> terminate with the RSA-2048 certificate, to the http backend
  tls_idle -> terminate (ECDSA) to the silent listener
  tls_pass -> passthrough by SNI to nginx serving HTTPS (ECDSA); lb-tcp
              relays the same port as plain TCP (tls = "off")
"""
import os
import string

from . import env

CONF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "conf")
TCP_SERVICES = ("bulk", "http", "sock", "idle")
UDP_SERVICES = ("dns",)
TLS_SERVICES = ("tls_ec", "tls_rsa", "tls_idle", "tls_pass")
ALL_SERVICES = TCP_SERVICES + UDP_SERVICES + TLS_SERVICES
# Matches lb's per-worker read size (core/worker.h kReadBufferSize), so no
# proxy moves data in smaller pieces than another.
BUFSIZE = 65536


def render(template, out_path, values):
    with open(os.path.join(CONF_DIR, template)) as f:
        text = string.Template(f.read()).substitute(values)
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


class Backends:
    """The servers behind every proxy, all on the load CPU."""

    def __init__(self, run_dir, idle_backend):
        self.run_dir = run_dir
        ports = env.free_ports(5)
        self.ports = {"bulk": ports[0], "http": ports[1], "sock": ports[2], "dns": ports[3],
                      "idle": idle_backend.port, "https": ports[4]}
        # The direct row of the passthrough workload talks HTTPS to nginx.
        self.ports["tls_pass"] = self.ports["https"]
        self.down = {}   # service -> why it has no backend
        self.procs = {}  # service -> its running backend process

    def values(self):
        return {"be_iperf": self.ports["bulk"], "be_http": self.ports["http"],
                "be_sock": self.ports["sock"], "be_dns": self.ports["dns"],
                "be_idle": self.ports["idle"], "be_https": self.ports["https"], "dir": self.run_dir}

    def start(self, sup, cpus, unusable, nofile):
        d = self.run_dir
        starts = []
        if "iperf3" in unusable:
            self.down["bulk"] = "iperf3: " + unusable["iperf3"]
        else:
            starts.append(("bulk", sup.start("backend-iperf3", ["iperf3", "-s", "-B", "127.0.0.1",
                                                                 "-p", str(self.ports["bulk"])], cpus)))
        if "nginx-light" in unusable:
            self.down["http"] = "nginx-light: " + unusable["nginx-light"]
        else:
            os.makedirs(os.path.join(d, "www"), exist_ok=True)
            os.makedirs(os.path.join(d, "nginx-tmp"), exist_ok=True)
            with open(os.path.join(d, "www", "tiny.txt"), "w") as f:
                f.write("x" * 63 + "\n")
            conf = render("nginx-backend.conf.in", os.path.join(d, "nginx-backend.conf"),
                          dict(self.values(), nofile=nofile))
            starts.append(("http", sup.start("backend-nginx", ["nginx", "-p", d, "-c", conf, "-e",
                                                                os.path.join(d, "nginx-backend.err")], cpus)))
        if "sockperf" in unusable:
            self.down["sock"] = "sockperf: " + unusable["sockperf"]
        else:
            starts.append(("sock", sup.start("backend-sockperf", ["sockperf", "server", "--tcp", "-i", "127.0.0.1",
                                                                   "-p", str(self.ports["sock"])], cpus)))
        if "dnsdist" in unusable:
            self.down["dns"] = "dnsdist (the DNS backend): " + unusable["dnsdist"]
        else:
            conf = render("dnsdist-backend.lua.in", os.path.join(d, "dnsdist-backend.lua"), self.values())
            starts.append(("dns", sup.start("backend-dnsdist", ["dnsdist", "--supervised", "--disable-syslog",
                                                                 "-C", conf], cpus)))
        for service, proc in starts:
            tcp = [self.ports[service]] if service in TCP_SERVICES else []
            if service == "http":
                tcp.append(self.ports["https"])
            udp = [self.ports[service]] if service in UDP_SERVICES else []
            err = env.wait_bound(proc, tcp, udp)
            if err:
                self.down[service] = f"{proc.name} {err}; log {proc.log_path}:\n{proc.log_tail(10)}"
                sup.stop(proc)
            else:
                self.procs[service] = proc

    def proc_for(self, service):
        """The backend process behind a service (the TLS services' is nginx's, "http")."""
        return self.procs.get("http" if service in TLS_SERVICES else service)


class Proxy:
    """One proxy configuration (a row of the tables) and its running process."""

    def __init__(self, name, label, services, needs, cpus, argv_fn, note=""):
        self.name = name
        self.label = label
        self.services = services      # what it can carry
        self.needs = needs            # Debian packages it runs from
        self.cpus = cpus              # taskset list; None: no process (direct)
        self.argv_fn = argv_fn        # (proxy, backends) -> argv, after rendering its config
        self.note = note
        self.ports = {}
        self.proc = None
        self.unavailable = None       # why this row is skipped
        self.restarts = 0

    def port(self, service, backends):
        return backends.ports[service] if self.argv_fn is None else self.ports[service]

    def values(self, backends, extra):
        v = dict(backends.values())
        v.update({f"{s}_port": self.ports.get(s, 0) for s in ALL_SERVICES})
        v.update(extra)
        return v

    def start(self, sup, backends):
        if self.argv_fn is None:
            return None
        if not self.ports:
            self.ports = dict(zip(ALL_SERVICES, env.free_ports(len(ALL_SERVICES))))
        argv = self.argv_fn(self, backends)
        self.proc = sup.start(self.name, argv, self.cpus)
        tcp = [self.ports[s] for s in self.services if s in TCP_SERVICES + TLS_SERVICES]
        udp = [self.ports[s] for s in self.services if s in UDP_SERVICES]
        err = env.wait_bound(self.proc, tcp, udp)
        if err:
            msg = f"{self.name} {err}; log {self.proc.log_path}:\n{self.proc.log_tail(15)}"
            sup.stop(self.proc)
            self.proc = None
            return msg
        return None

    def alive(self):
        return self.argv_fn is None or (self.proc is not None and self.proc.alive())


def make_proxies(run_dir, lb_path, proxy_cpu, all_cpus, nofile, idle_conns):
    """Every row, in the order they run within a round."""
    d = run_dir
    # Each proxied connection holds two descriptors; stay inside the open
    # files limit (HAProxy refuses to start otherwise).
    maxconn = max(1000, min(idle_conns + 5000, (nofile - 256) // 2))
    # With splicing HAProxy also reserves maxconn/4 pipes of two descriptors.
    maxconn_splice = max(1000, min(maxconn, int((nofile - 256) / 2.5)))

    # lb-tcp: the passthrough workload's port as a plain TCP relay.
    passthrough = 'tls = "passthrough"\n\n[[listener.route]]\nsni = ["bench.test"]\npool = "https"'

    def lb_argv(workers, pass_tls=passthrough):
        def argv(p, be):
            conf = render("lb.toml.in", os.path.join(d, f"{p.name}.toml"),
                          p.values(be, {"workers": workers, "max_connections": maxconn, "pass_tls": pass_tls}))
            return [lb_path, "--config", conf]
        return argv

    def haproxy_argv(splice):
        def argv(p, be):
            extra = {"maxconn": maxconn_splice if splice else maxconn, "bufsize": BUFSIZE,
                     "splice_option": "    option splice-auto" if splice else "",
                     "splice_comment": "This row adds option splice-auto." if splice
                     else "Default data path (no splice)."}
            conf = render("haproxy.cfg.in", os.path.join(d, f"{p.name}.cfg"), p.values(be, extra))
            return ["haproxy", "-db", "-f", conf]
        return argv

    def nginx_argv(p, be):
        extra = {"nofile": nofile, "worker_connections": min(nofile, 2 * idle_conns + 5000), "bufsize": f"{BUFSIZE // 1024}k"}
        conf = render("nginx-stream.conf.in", os.path.join(d, "nginx-stream.conf"), p.values(be, extra))
        return ["nginx", "-p", d, "-c", conf, "-e", os.path.join(d, "nginx-stream.err")]

    def dnsdist_argv(p, be):
        conf = render("dnsdist-balancer.lua.in", os.path.join(d, "dnsdist-balancer.lua"), p.values(be, {}))
        return ["dnsdist", "--supervised", "--disable-syslog", "-C", conf]

    tcp4 = set(TCP_SERVICES) | set(TLS_SERVICES)
    every = tcp4 | set(UDP_SERVICES)
    return [
        Proxy("direct", "direct (no proxy)", every, [], None, None,
              "client straight to the backend"),
        Proxy("lb", "lb", every, [], str(proxy_cpu), lb_argv(1),
              f"workers = 1, taskset -c {proxy_cpu}"),
        Proxy("lb-2w", "lb, 2 workers, unpinned", every, [], all_cpus, lb_argv(2),
              f"workers = 2, may run on CPUs {all_cpus}"),
        Proxy("lb-tcp", "lb, plain TCP (tls = off)", {"tls_pass"}, [], str(proxy_cpu), lb_argv(1, ""),
              f"workers = 1, the passthrough port without TLS, taskset -c {proxy_cpu}"),
        Proxy("haproxy", "HAProxy 2.6", tcp4, ["haproxy"], str(proxy_cpu), haproxy_argv(False),
              f"nbthread 1, tune.bufsize {BUFSIZE}, taskset -c {proxy_cpu}"),
        Proxy("haproxy-splice", "HAProxy 2.6 splice-auto", tcp4, ["haproxy"], str(proxy_cpu), haproxy_argv(True),
              f"as above plus option splice-auto"),
        Proxy("nginx", "nginx 1.22 stream", every, ["nginx-light", "libnginx-mod-stream"], str(proxy_cpu),
              nginx_argv, f"worker_processes 1, proxy_buffer_size {BUFSIZE // 1024}k, taskset -c {proxy_cpu}"),
        Proxy("dnsdist", "dnsdist 1.7", set(UDP_SERVICES), ["dnsdist"], str(proxy_cpu), dnsdist_argv,
              f"one UDP listener, taskset -c {proxy_cpu}"),
    ]
