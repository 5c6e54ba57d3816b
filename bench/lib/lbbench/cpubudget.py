"""A CPU budget for the proxy under test: CFS bandwidth control of a cgroup.

In the TLS rate rows the client does the other half of every handshake on
the load CPU; run unbounded, it saturates first and every proxy gets about
the same rate, whatever it costs. With the same budget for every proxy (a
share of its pinned CPU small enough that the client stays well below
100 %), the proxy is what runs out, and its rate reflects its cost.

cgroup v1: a child of the hierarchy carrying the `cpu` controller
(/sys/fs/cgroup/cpu), cpu.cfs_period_us and cpu.cfs_quota_us. cgroup v2: a
child of the unified hierarchy's root with `cpu` enabled in its
cgroup.subtree_control, cpu.max. The harness moves the proxy's process tree
(cgroup.procs moves every thread of a process) into the child for one
sample and back into the cgroup each process came from right after; the
child is removed at the end of the run, on every exit path (and a child
left by a harness that was killed is removed by the next run).
"""
import os
import time

PREFIX = "lb-bench-"
# 20 ms: a 10 % budget runs the proxy 2 ms in every 20 ms rather than 10 ms
# in every 100 ms, so the client sees a steadier flow.
PERIOD_US = 20000
MIN_QUOTA_US = 1000   # the kernel's floor for a quota


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def find_hierarchy(mounts_text, controllers_of=lambda mnt: _read(os.path.join(mnt, "cgroup.controllers"))):
    """("v1" | "v2", mount point) of the hierarchy with the cpu controller,
    or (None, why) from /proc/mounts' text."""
    v2 = None
    for line in mounts_text.splitlines():
        f = line.split()
        if len(f) < 4:
            continue
        mnt, fstype, opts = f[1], f[2], f[3].split(",")
        if fstype == "cgroup" and "cpu" in opts:
            return "v1", mnt
        if fstype == "cgroup2" and v2 is None:
            v2 = mnt
    if v2 is None:
        return None, "no cgroup hierarchy with the cpu controller is mounted"
    try:
        ctrls = controllers_of(v2).split()
    except OSError as e:
        return None, f"{v2}/cgroup.controllers: {e.strerror}"
    if "cpu" not in ctrls:
        return None, f"the cpu controller is not available in {v2} (controllers: {' '.join(ctrls) or 'none'})"
    return "v2", v2


def own_cgroup(proc_cgroup_text, kind):
    """The path (relative to the hierarchy's mount) of a process's cgroup in
    the cpu hierarchy, from /proc/PID/cgroup's text; None if not listed."""
    for line in proc_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if kind == "v2" and hid == "0" and ctrls == "":
            return path
        if kind == "v1" and "cpu" in ctrls.split(","):
            return path
    return None


def classify(proxy_pct, budget_pct, load_side_pct, load_cpu_busy_pct):
    """Which side limited a sample: "proxy" (it used ≥ 90 % of its budget,
    or of its CPU without one), "client" (the load side, client and backend,
    used ≥ 90 % of a CPU; only when that is unknown, the load CPU ≥ 95 %
    busy, which also counts whatever else runs there), "proxy and client",
    "client (load CPU full, shared with other work)" (neither used its
    CPU, but the load CPU was ≥ 95 % busy: the client could not get more of
    it), or "neither" (latency)."""
    cap = budget_pct if budget_pct else 100.0
    proxy = proxy_pct is not None and proxy_pct >= 0.9 * cap
    if load_side_pct is not None:
        client = load_side_pct >= 90.0
    else:
        client = load_cpu_busy_pct is not None and load_cpu_busy_pct >= 95.0
    if proxy and client:
        return "proxy and client"
    if proxy or client:
        return "proxy" if proxy else "client"
    if load_cpu_busy_pct is not None and load_cpu_busy_pct >= 95.0:
        # The load side used less than its CPU, which other work kept busy.
        return "client (load CPU full, shared with other work)"
    return "neither"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class CpuBudget:
    """One child cgroup for the whole run; one process tree in it at a time."""

    def __init__(self, kind, mount, path):
        self.kind = kind
        self.mount = mount
        self.path = path
        self.pct = None
        self.moved = {}     # pid -> the cgroup directory it came from

    @classmethod
    def create(cls, mounts_path="/proc/mounts", name=None):
        """(CpuBudget, None) or (None, why it cannot be had here)."""
        try:
            kind, mount = find_hierarchy(_read(mounts_path))
        except OSError as e:
            return None, f"{mounts_path}: {e.strerror}"
        if kind is None:
            return None, mount
        cls.remove_stale(mount)
        path = os.path.join(mount, name or f"{PREFIX}{os.getpid()}")
        try:
            if kind == "v2":
                ctl = os.path.join(mount, "cgroup.subtree_control")
                if "cpu" not in _read(ctl).split():
                    _write(ctl, "+cpu")
            os.mkdir(path)
        except OSError as e:
            return None, f"cannot create {path} ({kind}): {e.strerror}"
        budget = cls(kind, mount, path)
        try:
            budget.set_pct(50)
        except OSError as e:
            budget.remove()
            return None, f"cannot set a CPU quota on {path} ({kind}): {e.strerror}"
        return budget, None

    @staticmethod
    def remove_stale(mount):
        """Removes children left by a harness that was killed (its pid is in the name)."""
        try:
            names = os.listdir(mount)
        except OSError:
            return
        for n in names:
            pid = n[len(PREFIX):]
            if n.startswith(PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
                d = os.path.join(mount, n)
                try:
                    for p in _read(os.path.join(d, "cgroup.procs")).split():
                        _write(os.path.join(mount, "cgroup.procs"), p)
                    os.rmdir(d)
                except OSError:
                    pass

    def set_pct(self, pct):
        """Limits the child to pct % of one CPU."""
        quota = max(MIN_QUOTA_US, int(PERIOD_US * pct / 100.0))
        if self.kind == "v1":
            # The period first: a quota above the old period is fine either way.
            _write(os.path.join(self.path, "cpu.cfs_period_us"), str(PERIOD_US))
            _write(os.path.join(self.path, "cpu.cfs_quota_us"), str(quota))
        else:
            _write(os.path.join(self.path, "cpu.max"), f"{quota} {PERIOD_US}")
        self.pct = 100.0 * quota / PERIOD_US

    def enter(self, pids):
        """Moves these processes (every thread of each) into the child."""
        for pid in pids:
            try:
                rel = own_cgroup(_read(f"/proc/{pid}/cgroup"), self.kind)
            except OSError:
                continue    # gone
            origin = os.path.join(self.mount, rel.lstrip("/")) if rel else self.mount
            _write(os.path.join(self.path, "cgroup.procs"), str(pid))
            self.moved[pid] = origin

    def leave(self):
        """Moves every process moved in back where it came from."""
        for pid, origin in list(self.moved.items()):
            for target in (origin, self.mount):
                try:
                    _write(os.path.join(target, "cgroup.procs"), str(pid))
                    break
                except OSError:
                    continue   # gone, or origin removed: try the root
            self.moved.pop(pid, None)

    def stat(self):
        """{"periods", "throttled", "throttled_s"} from the child's cpu.stat."""
        out = {}
        try:
            for line in _read(os.path.join(self.path, "cpu.stat")).splitlines():
                k, _, v = line.partition(" ")
                if v.strip().isdigit():
                    out[k] = int(v)
        except OSError:
            return {}
        ns = out.get("throttled_time")
        return {"periods": out.get("nr_periods", 0), "throttled": out.get("nr_throttled", 0),
                "throttled_s": ns / 1e9 if ns is not None else out.get("throttled_usec", 0) / 1e6}

    def remove(self):
        """Empties the child (anything still in it goes to the root) and removes it."""
        self.leave()
        for _ in range(20):
            try:
                for p in _read(os.path.join(self.path, "cgroup.procs")).split():
                    try:
                        _write(os.path.join(self.mount, "cgroup.procs"), p)
                    except OSError:
                        pass
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                time.sleep(0.05)   # a dying task may linger for a moment
        return False
