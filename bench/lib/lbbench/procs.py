"""Every process the benchmark starts, tracked by pid and ended by pid.

Servers (backends, proxies) are started with start() and live until
stop_all(); load generators are run with run(), which always has a time
limit. Each child gets its own session, so a Ctrl-C in the terminal reaches
only the harness, which then ends its children itself: SIGTERM by pid, then
SIGKILL by pid for whatever is still there after a grace period. Children of
children (nginx's workers) are found through /proc before the parent is
signalled, so none is left behind even if the parent dies first.
"""
import os
import signal
import subprocess
import time


class Proc:
    """A long-running child: a backend or a proxy."""

    def __init__(self, name, popen, log_path, argv):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.argv = argv

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def returncode(self):
        return self.popen.poll()

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read()[-16384:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def descendants(pid):
    """Pids of every live descendant of pid (children first, depth first)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out.append(k)
            out.extend(descendants(k))
    return out


def rss_kib(pid):
    """Resident set size of pid and all its descendants, in KiB (None if gone)."""
    total = 0
    found = False
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        found = True
                        break
        except OSError:
            continue
    return total if found else None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    """{pid: (utime + stime in clock ticks, on-CPU ns or None)} for pid and
    every descendant (nginx's workers are descendants of its master).

    The ticks come from /proc/PID/stat, which counts all threads of a
    process, exited ones too. The kernel derives utime + stime from each
    thread's exact on-CPU time (sum_exec_runtime), which
    /proc/PID/task/*/schedstat gives in nanoseconds: 10 ms ticks would be
    ±5 % on a sample where the proxy spends 0.2 s, too coarse for a 0.8 ×
    target, so the nanoseconds are used when readable."""
    out = {}
    for p in [pid] + descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])   # fields 14 and 15 of stat(5)
        except (OSError, IndexError, ValueError):
            continue
        ns = 0
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    ns += int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            ns = None
        out[p] = (ticks, ns)
    return out


def cpu_seconds_between(before, after):
    """(CPU seconds, from which source) the process tree used between two
    cpu_ticks() readings; a process started in between counts from zero."""
    ticks = sum(t - before.get(p, (0, 0))[0] for p, (t, _) in after.items()) / CLK_TCK
    if all(ns is not None for _, ns in after.values()) and all(before.get(p, (0, 0))[1] is not None for p in after):
        ns = sum(n - before.get(p, (0, 0))[1] for p, (_, n) in after.items())
        return ns / 1e9, ticks
    return ticks, ticks


def cpu_times():
    """{cpu index: (total jiffies, idle jiffies)} from /proc/stat."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    v = [int(x) for x in vals]
                    out[int(name[3:])] = (sum(v), v[3] + (v[4] if len(v) > 4 else 0))
    except OSError:
        pass
    return out


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of someone else counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Supervisor:
    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.procs = []      # long-running children, in start order
        self.running = {}    # pid -> Popen of load generators in flight

    @staticmethod
    def pinned(argv, cpus):
        return (["taskset", "-c", cpus] + argv) if cpus else argv

    def start(self, name, argv, cpus=None):
        """Starts a server with stdout+stderr in <run_dir>/<name>.log."""
        cmd = self.pinned(argv, cpus)
        log_path = os.path.join(self.run_dir, f"{name}.log")
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log_path, cmd)
        self.procs.append(proc)
        return proc

    def run(self, argv, timeout, cpus=None):
        """Runs a load generator to completion, or kills it at the time limit.

        Returns (returncode, output, timed_out); output is stdout+stderr."""
        cmd = self.pinned(argv, cpus)
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[popen.pid] = popen
        try:
            out, _ = popen.communicate(timeout=timeout)
            return popen.returncode, out.decode("utf-8", "replace"), False
        except subprocess.TimeoutExpired:
            self._end(popen.pid, popen, grace=1.0)
            out, _ = popen.communicate()
            return None, out.decode("utf-8", "replace"), True
        finally:
            self.running.pop(popen.pid, None)

    def _end(self, pid, popen, grace):
        kids = descendants(pid)
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if popen.poll() is None:
            _signal(pid, signal.SIGKILL)
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Orphaned descendants (e.g. an nginx worker whose master was killed).
        for k in kids:
            if _pid_alive(k):
                _signal(k, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_pid_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for k in kids:
            if _pid_alive(k):
                _signal(k, signal.SIGKILL)

    def stop(self, proc, grace=3.0):
        if proc in self.procs:
            self.procs.remove(proc)
        self._end(proc.pid, proc.popen, grace)

    def stop_all(self):
        for pid, popen in list(self.running.items()):
            self._end(pid, popen, grace=1.0)
        self.running.clear()
        for proc in reversed(list(self.procs)):
            self.stop(proc)
