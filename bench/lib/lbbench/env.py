"""The machine: Debian packages, building lb, free ports, the description
that goes into the results."""
import os
import platform
import random
import re
import resource
import shutil
import socket
import subprocess
import time

# Debian package -> a file whose presence means it is usable.
PACKAGES = {
    "haproxy": "/usr/sbin/haproxy",
    "nginx-light": "/usr/sbin/nginx",
    "libnginx-mod-stream": "/usr/lib/nginx/modules/ngx_stream_module.so",
    "dnsdist": "/usr/bin/dnsdist",
    "iperf3": "/usr/bin/iperf3",
    "wrk": "/usr/bin/wrk",
    "dnsperf": "/usr/bin/dnsperf",
    "sockperf": "/usr/bin/sockperf",
    # The TLS rows: certificates made at run time, lbtls linked with libssl.
    "openssl": "/usr/bin/openssl",
    "libssl-dev": "/usr/include/openssl/ssl.h",
}


def _run(argv, timeout=600, **kw):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 127, str(e).encode())


def _installed(pkg):
    r = _run(["dpkg-query", "-W", "-f=${Status}", pkg], timeout=30)
    return r.returncode == 0 and b"install ok installed" in r.stdout


def _candidate(pkg):
    """The version apt would install, or None when the archive has none."""
    r = _run(["apt-cache", "policy", pkg], timeout=60)
    m = re.search(rb"Candidate:\s*(\S+)", r.stdout)
    if not m or m.group(1) == b"(none)":
        return None
    return m.group(1).decode()


def _privileged(argv):
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo"] + argv
    return None


# Needed by --profile only.
PROFILE_PACKAGES = {"linux-perf": "/usr/bin/perf"}


def ensure_packages(say, packages=PACKAGES):
    """Installs missing peers and load tools. Returns {package: reason} for the
    ones that are still unusable (their rows are skipped, not fatal)."""
    missing = [p for p, path in packages.items() if not (_installed(p) and os.path.exists(path))]
    if not missing:
        return {}
    if not shutil.which("apt-get"):
        return {p: "not installed and apt-get is not available" for p in missing}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    updated = False
    available = []
    unusable = {}
    for p in missing:
        if _candidate(p) is None and not updated:
            cmd = _privileged(["apt-get", "update", "-qq"])
            if cmd:
                say("apt-get update")
                _run(cmd, env=env)
            updated = True
        if _candidate(p) is None:
            unusable[p] = "no installation candidate in the configured Debian archive"
        else:
            available.append(p)
    if available:
        cmd = _privileged(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
        if cmd is None:
            for p in available:
                unusable[p] = "not installed; run as root or install sudo"
            return unusable
        say("installing " + " ".join(available))
        r = _run(cmd + available, env=env)
        if r.returncode != 0:
            # Find which one fails rather than losing them all.
            for p in available:
                r1 = _run(cmd + [p], env=env)
                if r1.returncode != 0:
                    tail = r1.stdout.decode("utf-8", "replace").strip().splitlines()[-1:]
                    unusable[p] = "apt-get install failed: " + (tail[0] if tail else "?")
    for p in available:
        if p not in unusable and not os.path.exists(packages[p]):
            unusable[p] = f"installed but {packages[p]} is missing"
    return unusable


def build_lb(source_dir, build_dir, log_path, say):
    """Builds lb Release in build_dir (incrementally). Returns (path, error)."""
    if not shutil.which("cmake"):
        return None, "cmake is not installed (see the README for lb's build dependencies)"
    say(f"building lb (Release) in {build_dir}")
    with open(log_path, "ab") as log:
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            r = subprocess.run(["cmake", "-S", source_dir, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                                "-DLB_TESTS=OFF", "-DLB_BENCH=OFF"],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600)
            if r.returncode != 0:
                return None, f"cmake configure failed, see {log_path}"
        r = subprocess.run(["cmake", "--build", build_dir, "--target", "lb", "-j2"],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800)
        if r.returncode != 0:
            return None, f"lb build failed, see {log_path}"
    path = os.path.join(build_dir, "lb", "lb")
    if not os.access(path, os.X_OK):
        return None, f"build finished but {path} does not exist"
    return path, None


LBLOAD_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "tools", "lbload.c")


def build_lbload(out_dir, name="lbload", libs=()):
    """Compiles bench/tools/NAME.c (lbload: the constant-rate client; lbtls:
    the TLS client, with libs -lssl -lcrypto) into out_dir. Returns (path, error)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc)"
    path = os.path.join(out_dir, name)
    src = os.path.join(os.path.dirname(os.path.abspath(LBLOAD_SRC)), name + ".c")
    r = _run([cc, "-O2", "-o", path, src] + list(libs), timeout=120)
    if r.returncode != 0:
        return None, "cc failed: " + r.stdout.decode("utf-8", "replace")[-300:]
    return path, None


def cmake_build_type(build_dir):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", f.read(), re.M)
            return m.group(1) if m else None
    except OSError:
        return None


def raise_nofile(want):
    """Raises RLIMIT_NOFILE (children inherit it). Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < want:
            hard = want
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _port_pool():
    """Ports outside the kernel's ephemeral range. An ephemeral port may be
    the local end of one of the many TIME_WAIT sockets the connection-rate
    workload leaves behind, and then a server that binds it without
    SO_REUSEADDR fails (dnsdist binds TCP next to UDP, whatever it is told)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - 10000 >= 1024:
        return range(max(1024, low - 12000), low)
    return range(high + 1, 65536)


_handed_out = set()


def free_ports(n):
    """n distinct loopback ports free for both TCP and UDP right now."""
    pool = [p for p in _port_pool() if p not in _handed_out]
    random.shuffle(pool)
    out = []
    for port in pool:
        socks = []
        try:
            for k in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, k)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            out.append(port)
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
        if len(out) == n:
            _handed_out.update(out)
            return out
    raise RuntimeError("no free loopback ports")


def _bound_ports(table, state):
    ports = set()
    for path in (f"/proc/net/{table}", f"/proc/net/{table}6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == state:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration):
            continue
    return ports


def wait_bound(proc, tcp_ports, udp_ports, timeout=15.0):
    """Waits until every port is bound (TCP listening, UDP bound), reading
    /proc/net rather than connecting: a test connection would reach the
    backends (an iperf3 server treats a stray connection as a failed test).
    Returns None, or why not."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            return f"exited with status {proc.returncode()}"
        missing_tcp = set(tcp_ports) - _bound_ports("tcp", "0A")
        missing_udp = set(udp_ports) - _bound_ports("udp", "07")
        if not missing_tcp and not missing_udp:
            return None
        if time.monotonic() > deadline:
            return f"ports not bound after {timeout:.0f} s: tcp {sorted(missing_tcp)} udp {sorted(missing_udp)}"
        time.sleep(0.05)


def _pkg_version(pkg):
    r = _run(["dpkg-query", "-W", "-f=${Version}", pkg], timeout=30)
    return r.stdout.decode().strip() if r.returncode == 0 and r.stdout else None


def describe_machine(lb_path, source_dir):
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else None
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1))
    except (OSError, AttributeError):
        pass
    os_name = None
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            os_name = m.group(1) if m else None
    except OSError:
        pass
    versions = {p: _pkg_version(p) for p in PACKAGES}
    if lb_path:
        r = _run([lb_path, "--version"], timeout=10)
        versions["lb"] = r.stdout.decode().strip() if r.returncode == 0 else None
    commit = _run(["git", "-C", source_dir, "rev-parse", "--short", "HEAD"], timeout=10)
    dirty = _run(["git", "--no-optional-locks", "-C", source_dir, "status", "--porcelain", "--untracked-files=no"], timeout=30)
    return {
        "cpu_model": cpu,
        "cpus_online": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "os": os_name,
        "memory_mib": mem_kib // 1024 if mem_kib else None,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "lb_commit": commit.stdout.decode().strip() if commit.returncode == 0 else None,
        "lb_tree_modified": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
        "versions": versions,
    }
