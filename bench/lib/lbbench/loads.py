"""The load generators: one function per tool, each running one bounded
sample against 127.0.0.1:<port> and returning its metrics as a dict.

A sample that fails raises SampleError with the tool's own words; the
caller records it and goes on with the next sample."""
import json
import re
import time

# Every run gets this much time beyond its nominal duration before it is
# killed (start-up, sockperf's warm-up, dnsperf's wait for late answers).
SLACK_S = 15

# wrk: one thread (it has one CPU) and a moderate number of connections.
WRK_CONNECTIONS = 32
# dnsperf: source sockets and the cap on queries in flight.
DNSPERF_CLIENTS = 4
DNSPERF_OUTSTANDING = 200
DNS_QUERY_NAMES = ["example.com", "www.example.org", "mail.example.net", "a.b.example",
                   "api.example.com", "cdn.example.org", "ns1.example.net", "x.example"]
# sockperf: message size of the ping-pong.
SOCKPERF_MSG = 64


class SampleError(Exception):
    pass


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tail(out, n=4):
    lines = [l for l in _ANSI.sub("", out).strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def iperf3(sup, port, duration, streams, cpus):
    """Bulk TCP client->server; Gbps received by the server."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(duration), "-J",
            "--connect-timeout", "3000"]
    if streams > 1:
        argv += ["-P", str(streams)]
    # iperf3's server runs one test at a time and needs a moment between
    # tests; "busy" is retried a few times, anything else is a failure.
    for attempt in range(4):
        rc, out, timed_out = sup.run(argv, timeout=duration + SLACK_S, cpus=cpus)
        if timed_out:
            raise SampleError(f"iperf3 killed after {duration + SLACK_S} s")
        try:
            doc = json.loads(out[out.index("{"):])
        except ValueError:
            raise SampleError("iperf3: unreadable output: " + _tail(out))
        err = doc.get("error")
        if err and "busy" in err and attempt < 3:
            time.sleep(0.5)
            continue
        if err:
            raise SampleError("iperf3: " + err)
        try:
            bps = doc["end"]["sum_received"]["bits_per_second"]
        except KeyError:
            raise SampleError("iperf3: no end summary: " + _tail(out))
        try:
            nbytes = doc["end"]["sum_received"]["bytes"]
        except KeyError:
            nbytes = bps / 8 * duration
        return {"gbps": bps / 1e9, "units": nbytes}
    raise SampleError("iperf3: server stayed busy")


_WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _wrk_time_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise SampleError(f"wrk: unreadable latency {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def wrk(sup, port, duration, close, cpus):
    """HTTP GET of the tiny file; requests/s and latency percentiles.
    With close=True every request is a new connection (a connection rate)."""
    argv = ["wrk", "-t", "1", "-c", str(WRK_CONNECTIONS), "-d", f"{duration}s", "--latency",
            f"http://127.0.0.1:{port}/tiny.txt"]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    rc, out, timed_out = sup.run(argv, timeout=duration + SLACK_S, cpus=cpus)
    if timed_out:
        raise SampleError(f"wrk killed after {duration + SLACK_S} s")
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rc != 0 or not m:
        raise SampleError("wrk: " + _tail(out))
    res = {"rps": float(m.group(1))}
    tm = re.search(r"(\d+) requests in", out)
    if tm:
        res["units"] = int(tm.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        lm = re.search(rf"^\s*{pct}%\s+(\S+)", out, re.M)
        if lm:
            res[key] = _wrk_time_us(lm.group(1))
    errors = 0
    em = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if em:
        errors += sum(int(x) for x in em.groups())
    nm = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if nm:
        errors += int(nm.group(1))
    res["errors"] = errors
    return res


def sockperf(sup, port, duration, cpus):
    """TCP ping-pong, one message in flight; round trips/s and RTT percentiles."""
    argv = ["sockperf", "ping-pong", "--tcp", "-i", "127.0.0.1", "-p", str(port),
            "-t", str(duration), "-m", str(SOCKPERF_MSG), "--full-rtt"]
    rc, out, timed_out = sup.run(argv, timeout=duration + SLACK_S, cpus=cpus)
    if timed_out:
        raise SampleError(f"sockperf killed after {duration + SLACK_S} s")
    text = _ANSI.sub("", out)
    vm = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)", text)
    p50 = re.search(r"percentile 50\.000 =\s*([\d.]+)", text)
    p99 = re.search(r"percentile 99\.000 =\s*([\d.]+)", text)
    if rc != 0 or not vm or not p50 or not p99 or float(vm.group(1)) <= 0:
        raise SampleError("sockperf: " + _tail(out))
    res = {"rate": int(vm.group(3)) / float(vm.group(1)),
           "p50_us": float(p50.group(1)), "p99_us": float(p99.group(1))}
    # Every round trip of the run, warm-up included: the proxy's CPU time is
    # taken over the whole run.
    tm = re.search(r"\[Total Run\] RunTime=[\d.]+ sec;.*?ReceivedMessages=(\d+)", text)
    if tm:
        res["units"] = int(tm.group(1))
    dm = re.search(r"# dropped messages = (\d+)", text)
    res["errors"] = int(dm.group(1)) if dm else 0
    return res


# dnsperf -v: "> NOERROR example.com A 0.000123" per answer (seconds).
_DNSPERF_ANSWER = re.compile(r"^> \S+ \S+ \S+ ([\d.]+)$", re.M)


def write_dns_queries(path):
    with open(path, "w") as f:
        for name in DNS_QUERY_NAMES:
            f.write(f"{name} A\n")


def dnsperf(sup, port, duration, qps_limit, query_file, cpus):
    """DNS A queries over UDP; answered queries/s and the share lost. At a
    fixed rate dnsperf -v prints every answer with its latency, from which
    the percentiles come."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", query_file,
            "-l", str(duration), "-c", str(DNSPERF_CLIENTS), "-q", str(DNSPERF_OUTSTANDING), "-t", "2"]
    if qps_limit:
        # -q 200 also caps dnsperf's catch-up bursts after it was descheduled:
        # with -q 600 or 3000 at 30,000 qps the backend (one dnsdist socket)
        # dropped 0.3-4.6 % of the queries even with no proxy, with 200 none.
        # The price: a proxy slower than 200 queries in flight gets fewer
        # queries; its qps column shows it.
        argv += ["-Q", str(qps_limit), "-v"]
    rc, out, timed_out = sup.run(argv, timeout=duration + SLACK_S, cpus=cpus)
    if timed_out:
        raise SampleError(f"dnsperf killed after {duration + SLACK_S} s")
    latencies = [float(x) * 1e6 for x in _DNSPERF_ANSWER.findall(out)] if qps_limit else []
    sent = re.search(r"Queries sent:\s*(\d+)", out)
    completed = re.search(r"Queries completed:\s*(\d+)", out)
    lost = re.search(r"Queries lost:\s*(\d+)", out)
    qps = re.search(r"Queries per second:\s*([\d.]+)", out)
    if rc != 0 or not (sent and lost and qps):
        raise SampleError("dnsperf: " + _tail(out))
    n_sent, n_lost = int(sent.group(1)), int(lost.group(1))
    if n_sent == 0:
        raise SampleError("dnsperf sent nothing: " + _tail(out))
    res = {"qps": float(qps.group(1)), "loss_pct": 100.0 * n_lost / n_sent,
           "lost": n_lost, "sent": n_sent, "units": int(completed.group(1)) if completed else n_sent - n_lost}
    if latencies:
        latencies.sort()
        for p, key in ((0.5, "p50_us"), (0.99, "p99_us"), (0.999, "p999_us")):
            res[key] = latencies[min(len(latencies) - 1, int(p * (len(latencies) - 1) + 0.5))]
    return res


def lbload(sup, tool, mode, port, duration, rate, cpus, conns=None, close=False):
    """bench/tools/lbload at a constant rate (see its header): answers/s,
    errors/lost, latency percentiles from each request's due time."""
    argv = [tool, mode, str(port), str(rate), str(duration)]
    if mode == "http":
        argv += [str(conns)] + (["close"] if close else [])
    rc, out, timed_out = sup.run(argv, timeout=duration + SLACK_S, cpus=cpus)
    if timed_out:
        raise SampleError(f"lbload killed after {duration + SLACK_S} s")
    try:
        doc = json.loads(out[out.index("{"):])
    except ValueError:
        raise SampleError("lbload: " + _tail(out))
    if rc != 0 or doc["done"] == 0:
        raise SampleError("lbload: nothing answered: " + _tail(out))
    doc["units"] = doc["done"]
    doc["loss_pct"] = 100.0 * (doc["errors"] + doc["late"]) / max(1, doc["sent"] + doc["late"])
    doc["lost"] = doc["errors"] + doc["late"]
    return doc
