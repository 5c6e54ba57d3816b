"""--profile: where lb spends its CPU on each workload, and how many system
calls it makes per unit of work against the fewest the workload needs.

Two extra samples per workload, after its measured rounds (so neither tool
disturbs the figures in the tables):
  1. `perf record -e cpu-clock -F 999 -g` attached to lb for the whole load
     run (software sampling: the VM has no hardware counters), then
     `perf report --stdio --no-children` (top symbols) and a flame graph
     (SVG) drawn here from `perf script` (Debian ships no FlameGraph scripts);
  2. syscalls of every thread of lb ÷ the units the load tool completed,
     against MIN_SYSCALLS: the total from `perf stat -e
     raw_syscalls:sys_enter`, the breakdown by name from `perf trace -s`
     (see syscall_count).
"""
import collections
import html
import os
import re
import signal
import subprocess
import time
import zlib

# Fewest system calls the proxy needs per unit of work, without batching
# (recvmmsg/sendmmsg can go below it for DNS; then measured ÷ minimum < 1).
MIN_SYSCALLS = {
    # accept4, socket, connect, read request, write it, read response, write
    # it, read EOF from the backend, close both sockets.
    "connrate": (10, "accept4, socket, connect, 2 reads + 2 writes, read EOF, 2 closes"),
    "connrate_fixed": (10, "accept4, socket, connect, 2 reads + 2 writes, read EOF, 2 closes"),
    "keepalive": (4, "read request, write it, read response, write it"),
    "keepalive_fixed": (4, "read request, write it, read response, write it"),
    "pingpong": (4, "read, write, read, write"),
    "dns_fixed": (4, "recv query, send it, recv answer, send it (unbatched)"),
    "dns_fixed_high": (4, "recv query, send it, recv answer, send it (unbatched)"),
    "dns_max": (4, "recv query, send it, recv answer, send it (unbatched)"),
    # An upstream socket may be shared by every client (dnsdist's way), so a
    # new source port needs no more calls than a known one.
    "dns_resolver": (4, "recv query, send it, recv answer, send it (upstream sockets shared)"),
    # Per GB: one read and one write of 64 KiB per 64 KiB (splice: two
    # splices), 2 × 16,384.
    "bulk1": (32768, "a 64 KiB read + write per 64 KiB (per GB)"),
    "bulk8": (32768, "a 64 KiB read + write per 64 KiB (per GB)"),
    # TLS termination: accept4, read the ClientHello, write the server's
    # flight, read Finished (+ the request), socket, connect, write the
    # request, read the answer, read EOF, write answer + close_notify, 2 closes.
    "tls_hs_ecdsa": (12, "accept4, 3 reads + 1 write of TLS, socket, connect, 2 reads + 2 writes, 2 closes"),
    "tls_hs_rsa": (12, "accept4, 3 reads + 1 write of TLS, socket, connect, 2 reads + 2 writes, 2 closes"),
    "tls_hs_resumed": (12, "accept4, 3 reads + 1 write of TLS, socket, connect, 2 reads + 2 writes, 2 closes"),
    "tls_bulk": (32768, "a 64 KiB read + write per 64 KiB (per GB)"),
    "tls_pass": (10, "accept4, socket, connect, 2 reads + 2 writes, read EOF, 2 closes (no more than plain TCP)"),
}
TOP_N = 40
_PER_GB = 1e9


def _interrupt_and_wait(popen, timeout=30):
    try:
        popen.send_signal(signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        out, err = popen.communicate()
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _under(sup, argv, cpus, run, proxy, port, duration, out_path):
    """Runs one load sample with a tracer attached to the proxy: starts the
    tracer pinned to the load CPU and registered with the supervisor (so an
    interrupted run ends it), gives it a moment to attach, runs the load,
    stops the tracer with SIGINT. Returns (load metrics, tracer output file
    text) or raises TraceError."""
    name = " ".join(argv[:2])
    popen = subprocess.Popen(sup.pinned(argv, cpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    sup.running[popen.pid] = popen
    try:
        # Neither perf nor strace says "attached" on a pipe in a form worth
        # parsing; one second is plenty on an idle or a busy machine.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and popen.poll() is None:
            time.sleep(0.05)
        if popen.poll() is not None:
            _, err = popen.communicate()
            raise TraceError(f"{name}: " + err.decode("utf-8", "replace").strip()[-300:])
        try:
            m = run(proxy, port, duration)
        finally:
            _, err = _interrupt_and_wait(popen)
    finally:
        sup.running.pop(popen.pid, None)
    if out_path is None:
        return m, None
    try:
        with open(out_path) as f:
            return m, f.read()
    except OSError:
        raise TraceError(f"{name} wrote nothing: " + err.strip()[-300:])


class TraceError(Exception):
    pass


def _units(wl_key, m):
    units = m.get("units")
    if not units:
        return None
    return units / _PER_GB if wl_key in ("bulk1", "bulk8", "tls_bulk") else units


def perf_profile(sup, wl, proxy, port, duration, cpus, out_dir, stem):
    pids = [proxy.proc.pid] + _descendants(proxy.proc.pid)
    data = os.path.join(sup.run_dir, f"perf-{wl.key}.data")
    argv = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", data, "-p", ",".join(map(str, pids))]
    try:
        m, _ = _under(sup, argv, cpus, wl.run, proxy, port, duration, None)
    except TraceError as e:
        return {"error": str(e)}
    if not os.path.exists(data):
        return {"error": "perf record wrote nothing"}
    top_path = os.path.join(out_dir, f"{stem}-profile-{wl.key}-top.txt")
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                        "-g", "none", "--percent-limit", "0.3"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=300)
    lines = [l for l in r.stdout.decode("utf-8", "replace").splitlines() if l.strip() and not l.startswith("#")]
    with open(top_path, "w") as f:
        f.write(f"# lb on {wl.key}: perf record -e cpu-clock -F 999 -g; perf report --no-children, top {TOP_N}\n")
        f.write("\n".join(lines[:TOP_N]) + "\n")
    r = subprocess.run(["perf", "script", "-i", data], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       timeout=600)
    leaves = collections.Counter()
    stacks = collapse(r.stdout.decode("utf-8", "replace"), leaves)
    svg_path = os.path.join(out_dir, f"{stem}-profile-{wl.key}.svg")
    with open(svg_path, "w") as f:
        f.write(flamegraph(stacks, f"lb, {wl.title}: CPU (perf cpu-clock, {sum(stacks.values())} samples)"))
    with open(os.path.join(out_dir, f"{stem}-profile-{wl.key}.folded"), "w") as f:
        for stack, n in sorted(stacks.items()):
            f.write(f"{stack} {n}\n")
    return {"top_file": os.path.basename(top_path), "svg_file": os.path.basename(svg_path),
            "samples": sum(stacks.values()), "cpu_split": cpu_split(stacks, leaves), "top": lines[:10], "load": m}


def syscall_count(sup, wl, proxy, port, duration, cpus, out_dir, stem):
    """System calls of every thread of the proxy per unit of work.

    The total comes from `perf stat -e raw_syscalls:sys_enter` (an in-kernel
    counter: the proxy runs at full speed) over a load run at the workload's
    own rate. The breakdown by name comes from a second run under
    `perf trace -s` (or strace -c -f when perf trace fails), which slows the
    proxy several times: fixed-rate loads run it at a tenth of their rate
    (wl.traced_run), else the requests the traced proxy cannot keep up with
    would be counted as syscalls without a unit."""
    pids = [proxy.proc.pid] + _descendants(proxy.proc.pid)
    res = {}
    total = _count_total(sup, wl, proxy, port, duration, cpus, pids)
    if "error" in total:
        res["total_error"] = total["error"]
    else:
        res["syscalls_total"], res["units"] = total["syscalls"], _units(wl.key, total["load"])
        if res["units"]:
            res["syscalls_per_unit"] = total["syscalls"] / res["units"]
        res["load"] = total["load"]
    time.sleep(0.3)
    run = wl.traced_run or wl.run
    by_name = _count_with(sup, run, proxy, port, duration, cpus, pids, "perf", wl.key)
    if "error" in by_name:
        first = by_name["error"]
        by_name = _count_with(sup, run, proxy, port, duration, cpus, pids, "strace", wl.key)
        by_name["perf_trace_error"] = first
    if "total_error" in res and "error" in by_name:
        return {"error": f"{res['total_error']}; {by_name['error']}"}
    mn = MIN_SYSCALLS.get(wl.key)
    if mn:
        res["min_syscalls_per_unit"], res["min_syscalls_why"] = mn
    if "error" not in by_name:
        calls = by_name["syscalls"]
        units = _units(wl.key, by_name["load"])
        res.update({"syscalls_by_name": calls, "syscall_tool": by_name["syscall_tool"],
                    "by_name_units": units, "by_name_load": by_name["load"]})
        with open(os.path.join(out_dir, f"{stem}-profile-{wl.key}-syscalls.txt"), "w") as f:
            f.write(f"# lb on {wl.key}.\n# Total at the workload's rate (perf stat -e raw_syscalls:sys_enter): "
                    f"{res.get('syscalls_total')} syscalls for {res.get('units')} units = "
                    f"{res.get('syscalls_per_unit')} per unit; minimum {mn[0] if mn else '?'} "
                    f"({mn[1] if mn else ''}).\n"
                    f"# By name: {by_name['syscall_tool']} over a run "
                    f"{'at a tenth of the rate ' if wl.traced_run else ''}that completed {units} units.\n")
            for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
                f.write(f"{name:24} {n:10d}  {n / units if units else 0:10.3f} per unit\n")
    else:
        res["by_name_error"] = by_name["error"]
    return res


def _count_total(sup, wl, proxy, port, duration, cpus, pids):
    out = os.path.join(sup.run_dir, f"perf-stat-{wl.key}.txt")
    argv = ["perf", "stat", "-e", "raw_syscalls:sys_enter", "-x", ",", "-o", out, "-p", ",".join(map(str, pids))]
    try:
        m, text = _under(sup, argv, cpus, wl.run, proxy, port, duration, out)
    except TraceError as e:
        return {"error": str(e)}
    mt = re.search(r"^(\d+),[^,]*,raw_syscalls:sys_enter", text, re.M)
    if not mt:
        return {"error": "perf stat: no count: " + text.strip()[-300:]}
    return {"syscalls": int(mt.group(1)), "load": m}


def _count_with(sup, run, proxy, port, duration, cpus, pids, tool, key):
    out = os.path.join(sup.run_dir, f"{tool}-syscalls-{key}.txt")
    if tool == "perf":
        argv = ["perf", "trace", "-s", "-o", out, "-p", ",".join(map(str, pids))]
    else:
        argv = ["strace", "-c", "-f", "-o", out]
        for p in pids:
            argv += ["-p", str(p)]
    try:
        m, text = _under(sup, argv, cpus, run, proxy, port, duration, out)
    except TraceError as e:
        return {"error": str(e)}
    calls = parse_perf_trace_summary(text) if tool == "perf" else parse_strace_summary(text)
    calls.pop("total", None)
    if not calls:
        return {"error": f"{tool}: no syscalls in its summary: " + text.strip()[-300:]}
    res = {"syscalls": calls, "load": m, "syscall_tool": "perf trace -s" if tool == "perf" else "strace -c -f"}
    lost = re.findall(r"LOST (\d+) events", text)
    if lost:
        res["syscall_events_lost"] = sum(int(x) for x in lost)
    return res


def parse_perf_trace_summary(text):
    """{syscall: calls} summed over the threads of `perf trace -s` output."""
    out = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s+[\d.]+\s", line)
        if m and m.group(1) != "syscall":
            out[m.group(1)] += int(m.group(2))
    return dict(out)


def parse_strace_summary(text):
    """{syscall or 'total': calls} from `strace -c` output."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and re.fullmatch(r"[\d.]+", f[0]) and f[3].isdigit():
            out[f[-1]] = int(f[3])
    return out


def _descendants(pid):
    from .procs import descendants
    return descendants(pid)


# ---- perf script -> folded stacks -> SVG ----

_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")


def collapse(script_text, leaves=None):
    """Folded stacks {"comm;outer;...;inner": samples} from `perf script`.
    Kernel frames get a "_[k]" suffix (drawn in another colour). With a
    Counter as `leaves`, each sample is also counted under the part of the
    program its innermost frame is in (leaf_part of the frame's DSO)."""
    stacks = collections.Counter()
    comm, frames, leaf = None, [], None

    def flush():
        if comm is not None:
            stacks[";".join([comm] + frames[::-1])] += 1
            if leaves is not None:
                leaves[leaf or "other"] += 1

    for line in script_text.splitlines():
        if not line.strip():
            flush()
            comm, frames, leaf = None, [], None
            continue
        if not line[0].isspace():
            flush()
            comm, frames, leaf = line.split()[0], [], None
            continue
        m = _FRAME.match(line)
        if not m:
            continue
        sym, dso = m.group(1), m.group(2)
        if not frames:
            leaf = leaf_part(dso)
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        if sym == "[unknown]" and dso != "[unknown]":
            sym = f"[{os.path.basename(dso)}]"
        if "kernel.kallsyms" in dso:
            sym += "_[k]"
        frames.append(sym.replace(";", ":"))
    flush()
    return dict(stacks)


# The parts of the program a sample can be in, by the DSO of its innermost frame.
PARTS = ("kernel", "lb", "libuv", "libc", "openssl", "other")

# Kernel frames of going to sleep (epoll_wait's schedule) and of waking a
# process: on loopback the sender's syscall delivers the packet and wakes the
# receiver (sock_def_readable, ep_poll_callback), so each event costs a
# wake-up on both sides, whatever the proxy does with it.
_SLEEP_WAKE = ("__schedule_[k]", "try_to_wake_up_[k]", "sock_def_readable_[k]", "sock_def_wakeup_[k]",
               "ep_poll_callback_[k]", "__wake_up_common_[k]")


def leaf_part(dso):
    name = os.path.basename(dso)
    if "kernel.kallsyms" in dso or name.startswith("[kernel"):
        return "kernel"
    if name == "lb" or name.startswith(("lb-", "lb.")):  # lb, or a copy such as lb-after
        return "lb"
    if name.startswith("libuv"):
        return "libuv"
    if name.startswith(("libc.so", "libc-", "ld-linux", "libstdc++", "libm.so", "libgcc")) or name == "[vdso]":
        return "libc"
    if name.startswith(("libssl", "libcrypto")):
        return "openssl"
    return "other"


def cpu_split(stacks, leaves):
    """Shares (percent of samples) of each part of the program, and of the
    samples spent going to sleep or waking another process."""
    total = sum(stacks.values())
    if not total:
        return {}
    split = {part: 100.0 * leaves.get(part, 0) / total for part in PARTS}
    split["sleep_wake"] = 100.0 * sum(n for st, n in stacks.items()
                                      if any(f in _SLEEP_WAKE for f in st.split(";"))) / total
    return split


def format_split(split):
    if not split:
        return "—"
    parts = ", ".join(f"{p} {split[p]:.1f} %" for p in PARTS if split.get(p, 0) >= 0.05)
    return f"{parts}; sleeping or waking {split['sleep_wake']:.1f} %"


def flamegraph(stacks, title, width=1200, row=16):
    """An SVG flame graph of folded stacks: each frame's width is its share
    of the samples; hover shows the name and count."""
    root = {"n": 0, "kids": {}}
    for stack, n in stacks.items():
        node = root
        node["n"] += n
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += n

    def depth(node):
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    total = root["n"] or 1
    levels = depth(root)
    height = (levels + 3) * row
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#f8f8f8"/>',
           f'<text x="{width / 2}" y="{row}" text-anchor="middle" font-size="14">{html.escape(title)}</text>']
    scale = (width - 20) / total

    def draw(name, node, x, level):
        w = node["n"] * scale
        if w < 0.3:
            return
        y = height - (level + 1) * row - row
        h = zlib.crc32(name.encode()) & 0xffff
        if name.endswith("_[k]"):
            fill = f"rgb({200 + h % 55},{120 + h % 60},{50 + h % 40})"
        else:
            fill = f"rgb({80 + h % 60},{150 + h % 80},{200 + h % 55})"
        label = html.escape(name)
        pct = 100.0 * node["n"] / total
        out.append(f'<g><title>{label} ({node["n"]} samples, {pct:.2f} %)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="{fill}"/>')
        chars = int(w / 7)
        if chars >= 3:
            text = name if len(name) <= chars else name[:chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for kname, kid in sorted(node["kids"].items()):
            draw(kname, kid, cx, level + 1)
            cx += kid["n"] * scale

    cx = 10.0
    draw("all", root, cx, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"
