#!/usr/bin/env python3
"""End-to-end: the dashboard (GET / on the admin listener) in a real browser.

Starts lb (the built binary) with echo backends, one of them down, and traffic
through two listeners; opens the page in headless Chromium driven over the
DevTools protocol (--remote-debugging-pipe: NUL-separated JSON on fds 3/4, so
no websocket client is needed) and checks:

  * the HTTP side: GET / and its two resources, their types, the
    Content-Security-Policy, no outside or inline resources, under 100 KB;
  * the page runs under that policy (no exception, no CSP report, no request
    to another origin) and shows every listener, pool and backend the API
    shows, with the same states and weights; fields today's API may lack are
    "—" and shown when present; colours for up / down / drain; rates computed
    from successive samples and a drawn chart;
  * the controls: a cancelled confirmation sends nothing; a confirmed drain
    and weight change go to the API (percent-encoded id, JSON) and the API and
    the page then show them;
  * the token flow, against a second lb with [admin] api_token_file: the page
    itself loads without the token, asks for it when the API answers 401,
    keeps it for the session (survives a reload, never in localStorage),
    sends it in the Authorization header and never in a URL, and drains a
    backend with it; lb never logs it;
  * the fields a short test cannot give distinctive values (rejections by
    reason, connect failures, last check, bytes), through a stub in front of
    the API that sets them.

Every wait is a condition polled until a deadline. Exit 0 on success.
  dashboard_test.py --lb build/lb/lb [--chromium chromium] [--screenshot docs/dashboard.png]
"""
import argparse
import fcntl
import http.client
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import urllib.parse

TIMEOUT = 20.0  # generous: sanitizer builds and a loaded 2-core machine
MAX_PAGE_BYTES = 100 * 1024
CSP = "default-src 'self'; frame-ancestors 'none'"
DASH = "\u2014"
TOKEN = "s3cret-token"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_until(pred, what, timeout=TIMEOUT):
    """Polls pred() until it returns a truthy value; fails at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Failure as e:
            last = e
        if time.monotonic() > deadline:
            raise Failure("timed out waiting for: " + what + (f" (last: {last})" if last else ""))
        time.sleep(0.05)


# --- backends and traffic -----------------------------------------------------

class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(TIMEOUT)
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                self.request.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.server_address[1]

    def stop(self):
        self.shutdown()
        self.server_close()


def closed_port():
    """A loopback port nothing listens on (a backend that is down)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Traffic:
    """About 10 to 40 echo connections a second through each port, bounded in count
    and time, so the page has rates to compute and charts to draw."""

    def __init__(self, ports, max_connections=6000, max_seconds=600):
        self.ports = ports
        self.stop_event = threading.Event()
        self.count = 0
        self.limit = max_connections
        self.end = time.monotonic() + max_seconds
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        while not self.stop_event.is_set() and self.count < self.limit and time.monotonic() < self.end:
            port = self.ports[i % len(self.ports)]
            i += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    payload = b"x" * (2000 + 500 * (i % 7))
                    c.sendall(payload)
                    c.shutdown(socket.SHUT_WR)
                    while c.recv(65536):
                        pass
                self.count += 1
            except OSError:
                pass
            # A slowly varying rate, so the charts have a shape to show.
            self.stop_event.wait(0.02 + 0.06 * (1 + math.sin(time.monotonic() / 8)))

    def stop(self):
        self.stop_event.set()
        self.thread.join()


# --- lb -----------------------------------------------------------------------

class Lb:
    def __init__(self, binary, config, tmp):
        self.config_path = os.path.join(tmp, "lb.toml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.log_path = os.path.join(tmp, "lb.log")
        self.log = open(self.log_path, "wb")
        import subprocess
        self.proc = subprocess.Popen([binary, "--config", self.config_path], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_started(self):
        def started():
            check(self.proc.poll() is None, "lb exited:\n" + self.output())
            return re.search(r"^info started\b", self.output(), re.M)
        wait_until(started, "lb started")

    def admin_port(self):
        m = re.search(r"^info admin listening address=127\.0\.0\.1:(\d+)", self.output(), re.M)
        check(m, "lb logged no admin address")
        return int(m.group(1))

    def listener_port(self, name):
        m = re.search(r"^info listening listener=%s address=127\.0\.0\.1:(\d+)" % re.escape(name),
                      self.output(), re.M)
        check(m, "lb logged no address for listener " + name)
        return int(m.group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def api_status(port, headers=None):
    status, _, body = request(port, "GET", "/api/v1/status", None, headers)
    check(status == 200, "GET /api/v1/status: %d" % status)
    return json.loads(body)


def api_backend(port, pool, backend_id, headers=None):
    for p in api_status(port, headers)["pools"]:
        if p["name"] == pool:
            for b in p["backends"]:
                if b["id"] == backend_id:
                    return b
    raise Failure("no backend %s in pool %s" % (backend_id, pool))


# --- Chromium over the DevTools pipe -------------------------------------------

def high_fd(fd):
    """The same pipe end at fd >= 10 (close-on-exec), so the child's dup2 onto
    3 and 4 cannot overwrite one end with the other."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    def __init__(self, chromium, tmp):
        self.profile = tempfile.mkdtemp(prefix="profile-", dir=tmp)
        to_r, to_w = (high_fd(fd) for fd in os.pipe())
        from_r, from_w = (high_fd(fd) for fd in os.pipe())
        self.log_path = os.path.join(tmp, "chromium.log")
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--hide-scrollbars", "--user-data-dir=" + self.profile,
                "--remote-debugging-pipe", "about:blank"]
        # Its own session, so the whole process tree ends with it (killpg).
        self.pid = os.posix_spawn(shutil.which(chromium) or chromium, args, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_DUP2, to_r, 3), (os.POSIX_SPAWN_DUP2, from_w, 4)], setsid=True)
        for fd in (to_r, from_w, log):
            os.close(fd)
        self.out = to_w
        self.inp = from_r
        self.next_id = 0
        self.lock = threading.Condition()
        self.responses = {}
        self.events = []
        self.closed = False
        self.reader = threading.Thread(target=self.read_loop, daemon=True)
        self.reader.start()
        self.session = None

    def read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.inp, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self.lock:
                    self.closed = True
                    self.lock.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self.lock:
                    if "id" in msg:
                        self.responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self.lock.notify_all()

    def send(self, method, params=None, session=True):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.out, data):]
        deadline = time.monotonic() + TIMEOUT
        with self.lock:
            while mid not in self.responses:
                if self.closed:
                    raise Failure("chromium closed the DevTools pipe; its log:\n" + self.log())
                left = deadline - time.monotonic()
                check(left > 0, "no DevTools answer to " + method)
                self.lock.wait(left)
            msg = self.responses.pop(mid)
        check("error" not in msg, "%s: %s" % (method, msg.get("error")))
        return msg["result"]

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def open_page(self, width=1400, height=900):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(domain + ".enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url):
        self.send("Page.navigate", {"url": url})

    def eval(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise Failure("page script failed: %s" % json.dumps(r["exceptionDetails"])[:600])
        return r["result"].get("value")

    def events_of(self, method):
        with self.lock:
            return [e["params"] for e in self.events if e.get("method") == method]

    def screenshot(self, path):
        import base64
        r = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                 "clip": self.eval(PAGE_CLIP)})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def close(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.out)
        self.reader.join(5)
        os.close(self.inp)


PAGE_CLIP = """(() => { const m = document.querySelector('main');
  return {x: 0, y: 0, width: document.documentElement.clientWidth,
          height: Math.ceil(m.getBoundingClientRect().bottom) + 8, scale: 1}; })()"""

# What the page shows, read from its DOM (data-* attributes mark the cells).
SNAPSHOT = r"""(() => {
  const cells = (tr) => { const o = {}; for (const td of tr.cells) o[td.dataset.f] = td.textContent; return o; };
  const colour = (node) => node ? getComputedStyle(node).color : null;
  const out = {conn: document.getElementById('conn').textContent,
               confirm: !document.getElementById('confirm').hidden,
               confirm_text: document.getElementById('confirm-text').textContent,
               login: !document.getElementById('login').hidden,
               listeners: {}, pools: {}};
  for (const tr of document.querySelectorAll('#listeners tbody tr')) out.listeners[tr.dataset.listener] = cells(tr);
  for (const p of document.querySelectorAll('#pools .pool')) {
    const po = {selector: p.querySelector('[data-f=selector]').textContent,
                digest: p.querySelector('[data-f=table_digest]').textContent, backends: {}};
    for (const tr of p.querySelectorAll('tbody tr')) {
      const o = cells(tr);
      o.data_health = tr.dataset.health; o.data_admin = tr.dataset.admin; o.row_class = tr.className;
      o.health_colour = colour(tr.querySelector('[data-f=health] .badge'));
      o.admin_colour = colour(tr.querySelector('[data-f=admin_state] .badge'));
      o.last_check = tr.querySelector('[data-f=last_check]').textContent;
      o.toggle = tr.querySelector('[data-f=controls] button').dataset.action;
      const c = tr.querySelector('canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let ink = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) ink++;
      o.chart_pixels = ink;
      po.backends[tr.dataset.backend] = o;
    }
    out.pools[p.dataset.pool] = po;
  }
  return out;
})()"""


def row_js(pool, backend_id):
    return ("([...[...document.querySelectorAll('#pools .pool')].find(p => p.dataset.pool === %s)"
            ".querySelectorAll('tbody tr')].find(t => t.dataset.backend === %s))"
            ) % (json.dumps(pool), json.dumps(backend_id))


# Computed colours of the state badges (dashboard.css --up, --down, --drain).
UP_COLOUR, DOWN_COLOUR, DRAIN_COLOUR = "rgb(31, 138, 76)", "rgb(198, 40, 40)", "rgb(178, 106, 0)"


def fmt_int(v):
    return "{:,}".format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else DASH


# --- the checks ---------------------------------------------------------------

def check_http(admin):
    total = 0
    assets = {"/": "text/html", "/dashboard.js": "text/javascript", "/dashboard.css": "text/css",
              "/favicon.svg": "image/svg+xml"}
    bodies = {}
    for path, ctype in assets.items():
        status, headers, body = request(admin, "GET", path)
        check(status == 200, "GET %s: %d" % (path, status))
        check(headers.get("content-type", "").startswith(ctype), "GET %s: content-type %s" % (path, headers))
        check(headers.get("content-security-policy") == CSP, "GET %s: CSP %r" % (path, headers))
        check(headers.get("x-content-type-options") == "nosniff", "GET %s: no nosniff" % path)
        status, headers, head_body = request(admin, "HEAD", path)
        check(status == 200 and head_body == b"" and int(headers["content-length"]) == len(body),
              "HEAD %s" % path)
        bodies[path] = body.decode()
        total += len(body)
    check(total <= MAX_PAGE_BYTES, "the page is %d bytes, over %d" % (total, MAX_PAGE_BYTES))
    status, _, _ = request(admin, "POST", "/", b"{}", {"Content-Type": "application/json"})
    check(status == 405, "POST / answered %d, not 405" % status)
    html, css, js = bodies["/"], bodies["/dashboard.css"], bodies["/dashboard.js"]
    # Nothing inline (the policy would block it) and nothing from elsewhere.
    check(not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script> in index.html")
    check(not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.I), "inline style or handler in index.html")
    for name, text in bodies.items():
        # Comments and the SVG namespace name no resource.
        code = re.sub(r"^\s*//.*$|/\*.*?\*/|xmlns=\"http://www\.w3\.org/2000/svg\"", "", text, flags=re.M | re.S)
        check(not re.search(r"https?:|//[a-z0-9]", code, re.I), "%s names another origin" % name)
    check("url(" not in css and "@import" not in css, "dashboard.css loads something")
    check("eval(" not in js and "new Function" not in js, "dashboard.js evaluates strings")
    return total


def check_rendered(page, st):
    """The page shows what the API shows (the fields that do not move)."""
    check(set(page["listeners"]) == {l["name"] for l in st["listeners"]},
          "listeners %s vs API %s" % (list(page["listeners"]), st["listeners"]))
    for l in st["listeners"]:
        row = page["listeners"][l["name"]]
        check(row["protocol"] == l["protocol"] and row["pool"] == l["pool"] and row["bind"] == ", ".join(l["bind"]),
              "listener row %s vs %s" % (row, l))
        rejected = l.get("rejected")
        for reason in ("acl", "limit", "no_backend", "proxy_protocol", "tls"):
            cell = row["rejected_" + reason]
            if isinstance(rejected, dict) and reason in rejected:  # counters may move: the form only
                check(re.fullmatch(r"[\d,]+", cell), "listener %s rejected_%s: %r" % (l["name"], reason, cell))
            else:
                check(cell == DASH, "listener %s rejected_%s: %r, want %r" % (l["name"], reason, cell, DASH))
    check(set(page["pools"]) == {p["name"] for p in st["pools"]}, "pools differ")
    for p in st["pools"]:
        view = page["pools"][p["name"]]
        check(view["selector"] == p["selector"], "pool %s selector %s" % (p["name"], view))
        want_digest = "table " + p["table_digest"] if p["table_digest"] else "no lookup table"
        check(view["digest"] == want_digest, "pool %s digest %r, want %r" % (p["name"], view["digest"], want_digest))
        check(set(view["backends"]) == {b["id"] for b in p["backends"]}, "backends of %s differ" % p["name"])
        for b in p["backends"]:
            row = view["backends"][b["id"]]
            what = "%s/%s: %s vs API %s" % (p["name"], b["id"], row, b)
            check(row["data_health"] == b["health"] and row["data_admin"] == b["admin_state"], what)
            check(row["weight"] == fmt_int(b["weight"]), what)
            check(row["effective_weight"] == fmt_int(b.get("effective_weight")), what)
            check(row["connect_failures"] == fmt_int(b.get("connect_failures")), what)
            if "bytes_to_backend" not in b:
                check(row["bytes_to_backend"] == DASH and row["bytes_to_client"] == DASH, what)
            lc = b.get("last_check")
            if isinstance(lc, dict) and lc.get("result"):
                check(row["last_check"].startswith(lc["result"]), what)
                if lc.get("detail"):
                    check(lc["detail"] in row["last_check"], what)
            else:
                check(row["last_check"] == "last check " + DASH, what)
            check(row["health_colour"] == (UP_COLOUR if b["health"] == "up" else DOWN_COLOUR), what)
            check(row["admin_colour"] == (DRAIN_COLOUR if b["admin_state"] == "drain" else "rgb(47, 111, 222)"), what)
            check(row["toggle"] == ("activate" if b["admin_state"] == "drain" else "drain"), what)


def check_clean(browser, origins):
    """No script error, no CSP report, no request to another origin."""
    for e in browser.events_of("Runtime.exceptionThrown"):
        raise Failure("page exception: %s" % json.dumps(e)[:600])
    for e in browser.events_of("Log.entryAdded"):
        entry = e["entry"]
        if entry.get("level") == "error" or "Content Security Policy" in entry.get("text", ""):
            # The only error allowed is the 401 the token flow provokes.
            if "401" not in entry.get("text", ""):
                raise Failure("browser log: %s" % entry)
    for e in browser.events_of("Runtime.consoleAPICalled"):
        check(e["type"] not in ("error", "assert"), "console error: %s" % json.dumps(e)[:400])
    for e in browser.events_of("Network.requestWillBeSent"):
        url = e["request"]["url"]
        check(any(url.startswith(o + "/") for o in origins), "request to another origin: " + url)


def click(browser, js_node):
    browser.eval("(%s).click()" % js_node)


def run(args):
    tmp = tempfile.mkdtemp(prefix="lb-dashboard-")
    backends = [EchoServer() for _ in range(4)]
    down = closed_port()
    # Listener "web" -> round-robin pool "web" (web-1, edge/2 with weight 2,
    # web-3 down); listener "api" -> maglev pool "api" (api-1, api-2).
    pools = {"web": ("round_robin", [("web-1", backends[0].address, 1), ("edge/2", backends[1].address, 2),
                                     ("web-3", "127.0.0.1:%d" % down, 1)]),
             "api": ("maglev", [("api-1", backends[2].address, 1), ("api-2", backends[3].address, 1)])}
    config = '[global]\nworkers = 1\naccess_log = "off"\n\n[admin]\nlisten = "127.0.0.1:0"\n'
    for name in pools:
        config += '\n[[listener]]\nname = "%s"\nbind = "127.0.0.1:0"\npool = "%s"\n' % (name, name)
    for name, (selector, members) in pools.items():
        config += ('\n[[pool]]\nname = "%s"\nselector = "%s"\n[pool.health_check]\ntype = "tcp"\n'
                   'interval = "300ms"\ntimeout = "300ms"\nrise = 1\nfall = 1\n') % (name, selector)
        for backend_id, address, weight in members:
            config += '[[pool.backend]]\naddress = "%s"\nid = "%s"\nweight = %d\n' % (address, backend_id, weight)
    lb = Lb(args.lb, config, tmp)
    browser = traffic = None
    try:
        lb.wait_started()
        admin = lb.admin_port()
        origin = "http://127.0.0.1:%d" % admin
        size = check_http(admin)
        print("page size: %d bytes" % size)
        wait_until(lambda: api_backend(admin, "web", "web-3")["health"] == "down", "web-3 down")
        traffic = Traffic([lb.listener_port("web"), lb.listener_port("api")])

        browser = Browser(args.chromium, tmp)
        browser.open_page()
        browser.navigate(origin + "/")
        snap = lambda: browser.eval(SNAPSHOT)

        # Rendered and live; then the same rows and states as the API.
        wait_until(lambda: snap()["conn"] == "live", "the page shows live data")

        def rendered_matches():
            st = api_status(admin)
            check_rendered(snap(), st)
            return True
        wait_until(rendered_matches, "the page shows what the API shows")

        # Rates from successive samples, and a chart drawn from them.
        def rates_shown():
            page = snap()
            cps = page["listeners"]["web"]["cps"]
            check(re.fullmatch(r"[\d.,]+", cps) and float(cps.replace(",", "")) > 0, "web conn/s %r" % cps)
            row = page["pools"]["web"]["backends"]["web-1"]
            check(re.fullmatch(r"[\d.,]+", row["cps"]), "web-1 conn/s %r" % row["cps"])
            check(row["chart_pixels"] > 0, "web-1 chart is blank")
            return True
        wait_until(rates_shown, "rates and a chart")
        check_clean(browser, [origin])

        # A cancelled confirmation changes nothing.
        click(browser, row_js("web", "web-1") + ".querySelector('[data-f=controls] button')")
        page = wait_until(lambda: (lambda p: p if p["confirm"] else None)(snap()), "the confirmation opens")
        check("web-1" in page["confirm_text"] and "Drain" in page["confirm_text"], page["confirm_text"])
        click(browser, "document.getElementById('confirm-cancel')")
        wait_until(lambda: not snap()["confirm"], "the confirmation closes")

        # Drain through the page (an id that needs percent-encoding).
        click(browser, row_js("web", "edge/2") + ".querySelector('[data-f=controls] button')")
        wait_until(lambda: snap()["confirm"], "the confirmation opens")
        click(browser, "document.getElementById('confirm-ok')")
        wait_until(lambda: api_backend(admin, "web", "edge/2")["admin_state"] == "drain", "the API shows edge/2 drained")
        check(api_backend(admin, "web", "web-1")["admin_state"] == "active", "the cancelled drain happened")

        def drained_on_page():
            row = snap()["pools"]["web"]["backends"]["edge/2"]
            check(row["data_admin"] == "drain" and row["row_class"] == "st-drain" and row["toggle"] == "activate"
                  and row["admin_colour"] == DRAIN_COLOUR, "edge/2 row %s" % row)
            return True
        wait_until(drained_on_page, "the page shows edge/2 drained")

        # Set a weight through the page. The field keeps the focus while the
        # page refreshes around it (someone is typing there).
        browser.eval(row_js("web", "web-1") + ".querySelector('input').focus()")
        browser.eval(row_js("web", "web-1") + ".querySelector('input').value = '5'")
        samples = int(browser.eval("document.body.dataset.samples"))
        wait_until(lambda: int(browser.eval("document.body.dataset.samples")) >= samples + 2, "two more refreshes")
        check(browser.eval("document.activeElement === " + row_js("web", "web-1") + ".querySelector('input')"),
              "a refresh took the focus from the weight field")
        click(browser, row_js("web", "web-1") + ".querySelector('[data-action=weight]')")
        page = wait_until(lambda: (lambda p: p if p["confirm"] else None)(snap()), "the confirmation opens")
        check("to 5" in page["confirm_text"], page["confirm_text"])
        click(browser, "document.getElementById('confirm-ok')")
        wait_until(lambda: api_backend(admin, "web", "web-1")["weight"] == 5, "the API shows weight 5")
        wait_until(lambda: snap()["pools"]["web"]["backends"]["web-1"]["weight"] == "5", "the page shows weight 5")
        check(browser.eval(row_js("web", "web-1") + ".querySelector('input').value") == "",
              "the weight field was not cleared after the change")
        check(browser.eval(row_js("web", "web-1") + ".querySelector('input').placeholder") == "5",
              "the weight field does not offer the current weight")

        posts = [e["request"] for e in browser.events_of("Network.requestWillBeSent")
                 if e["request"]["method"] == "POST"]
        check([urllib.parse.urlsplit(p["url"]).path for p in posts] ==
              ["/api/v1/pools/web/backends/edge%2F2", "/api/v1/pools/web/backends/web-1"],
              "POSTs sent: %s" % [p["url"] for p in posts])
        for p in posts:
            ctype = {k.lower(): v for k, v in p["headers"].items()}.get("content-type")
            check(ctype == "application/json", "POST content type %r" % ctype)
        check([json.loads(p["postData"]) for p in posts] == [{"state": "drain"}, {"weight": 5}],
              "POST bodies %s" % [p.get("postData") for p in posts])
        wait_until(rendered_matches, "the page shows what the API shows after the changes")
        check_clean(browser, [origin])

        if args.screenshot:
            # Enough samples for the charts to show a trend.
            wait_until(lambda: browser.eval("performance.now()") >= args.screenshot_seconds * 1000,
                       "chart history", timeout=args.screenshot_seconds + TIMEOUT)
            browser.eval("document.getElementById('toast').hidden = true")
            browser.screenshot(args.screenshot)
            print("screenshot: " + args.screenshot)

        token_origin = check_token_flow(browser, args.lb, config, tmp, origin)
        fields_origin = check_new_fields(browser, admin)
        check_clean(browser, [origin, token_origin, fields_origin])
        print("dashboard e2e: all checks passed")
    finally:
        if traffic:
            traffic.stop()
        if browser:
            browser.close()
        lb.stop()
        for b in backends:
            b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class FieldsProxy(http.server.ThreadingHTTPServer):
    """Stands in front of the admin API and gives the dashboard fields of
    /api/v1/status distinctive values (with_new_fields)."""
    daemon_threads = True

    def __init__(self, admin):
        self.admin = admin
        super().__init__(("127.0.0.1", 0), FieldsProxyHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()


class FieldsProxyHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # Origin is not forwarded: the stub is the page's origin, not lb's.
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type",)}
        status, rh, data = request(self.server.admin, self.command, self.path, body or None, headers)
        if self.path == "/api/v1/status" and status == 200:
            data = json.dumps(with_new_fields(json.loads(data))).encode()
        self.send_response(status)
        for k in ("content-type", "content-security-policy"):
            if k in rh:
                self.send_header(k, rh[k])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = forward


def with_new_fields(st):
    """The status with the dashboard fields set to distinctive values (lb
    reports them too, but with values a short test cannot choose), so the
    test can check that the page renders each one where it belongs."""
    for i, l in enumerate(st["listeners"]):
        l["rejected"] = {"acl": 1 + i, "limit": 2, "no_backend": 3, "proxy_protocol": 0, "tls": 1234}
    for p in st["pools"]:
        for b in p["backends"]:
            up = b["health"] == "up"
            b["effective_weight"] = b["weight"] // 2
            b["connect_failures"] = 0 if up else 4321
            b["bytes_to_backend"] = b["total"] * 1000
            b["bytes_to_client"] = b["total"] * 3000
            b["last_check"] = {"result": "pass" if up else "fail",
                               "detail": "" if up else "connection refused", "age_ms": 1500}
    return st


def check_token_flow(browser, binary, config, tmp, leave_to):
    """The page against a real lb whose API demands the token of
    [admin] api_token_file."""
    sub = os.path.join(tmp, "token")
    os.makedirs(sub)
    token_file = os.path.join(sub, "api.token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    config = config.replace("[admin]\n", '[admin]\napi_token_file = "%s"\n' % token_file, 1)
    check("api_token_file" in config, "the test's config has no [admin] table")
    auth = {"Authorization": "Bearer " + TOKEN}
    lb = Lb(binary, config, sub)
    try:
        lb.wait_started()
        admin = lb.admin_port()
        origin = "http://127.0.0.1:%d" % admin
        # lb's side: the page is open, the API is not without the token.
        check(request(admin, "GET", "/")[0] == 200, "GET / needs the token")
        check(request(admin, "GET", "/api/v1/status")[0] == 401, "GET /api/v1/status without the token")
        check(request(admin, "GET", "/api/v1/status", None, {"Authorization": "Bearer wrong"})[0] == 401,
              "GET /api/v1/status with a wrong token")
        check(api_backend(admin, "web", "edge/2", auth)["admin_state"] == "active", "edge/2 starts active")
        before = len(browser.events_of("Network.requestWillBeSent"))

        browser.navigate(origin + "/")
        snap = lambda: browser.eval(SNAPSHOT)
        page = wait_until(lambda: (lambda p: p if p["login"] else None)(snap()), "the page asks for the token")
        check(page["conn"] == "token needed", "status %r" % page["conn"])
        browser.eval("document.getElementById('login-token').value = %s;"
                     "document.getElementById('login-form').requestSubmit()" % json.dumps(TOKEN))
        wait_until(lambda: (lambda p: not p["login"] and p["conn"] == "live" and "web" in p["pools"])(snap()),
                   "the page is live with the token")
        check(browser.eval("sessionStorage.getItem('lb.api_token')") == TOKEN, "the token is not in sessionStorage")
        check(browser.eval("localStorage.length") == 0, "something went to localStorage")
        # A reload keeps it for the session: no second question.
        browser.navigate(origin + "/")
        wait_until(lambda: (lambda p: p["conn"] == "live" and "web" in p["pools"])(snap()), "live after reload")
        check(not snap()["login"], "the page asked again after a reload")
        # Drain edge/2 through the page, with the token.
        click(browser, row_js("web", "edge/2") + ".querySelector('[data-f=controls] button')")
        wait_until(lambda: snap()["confirm"], "the confirmation opens")
        click(browser, "document.getElementById('confirm-ok')")
        wait_until(lambda: api_backend(admin, "web", "edge/2", auth)["admin_state"] == "drain",
                   "lb shows edge/2 drained")

        sent = [e["request"] for e in browser.events_of("Network.requestWillBeSent")[before:]]
        api = [(r["method"], r["url"], {k.lower(): v for k, v in r["headers"].items()}.get("authorization"))
               for r in sent if r["url"].startswith(origin + "/api/")]
        check(all(TOKEN not in r["url"] for r in sent), "the token in a URL: %s" % [r["url"] for r in sent])
        authed = [i for i, x in enumerate(api) if x[2] == "Bearer " + TOKEN]
        check(authed and api[0][2] is None and all(x[2] == "Bearer " + TOKEN for x in api[authed[0]:]),
              "Authorization headers: %s" % api)
        check(("POST", origin + "/api/v1/pools/web/backends/edge%2F2", "Bearer " + TOKEN) in api,
              "no POST with the token: %s" % api)
        check(TOKEN not in lb.output(), "lb logged the token")
        # Leave the page before this lb stops, or its next refresh fails.
        browser.navigate(leave_to + "/")
        wait_until(lambda: snap()["conn"] == "live", "the page is back on the first lb")
        return origin
    finally:
        lb.stop()


def check_new_fields(browser, admin):
    """The fields today's API may lack, when present, are shown where they belong."""
    proxy = FieldsProxy(admin)
    try:
        origin = "http://127.0.0.1:%d" % proxy.server_address[1]
        browser.navigate(origin + "/")
        snap = lambda: browser.eval(SNAPSHOT)

        def shows_new_fields():
            page = snap()
            _, _, body = request(proxy.server_address[1], "GET", "/api/v1/status")
            st = json.loads(body)
            check_rendered(page, st)
            check(page["listeners"]["web"]["rejected_tls"] == "1,234", "rejections %s" % page["listeners"]["web"])
            web3 = page["pools"]["web"]["backends"]["web-3"]
            check(web3["connect_failures"] == "4,321" and web3["last_check"] == "fail \u00b7 connection refused \u00b7 1.5 s ago",
                  "web-3 %s" % web3)
            check(page["pools"]["web"]["backends"]["web-1"]["effective_weight"] == "2", "effective weight")
            to_backend = page["pools"]["web"]["backends"]["web-1"]["bytes_to_backend"]
            check(re.fullmatch(r"[\d.]+ (B|kB|MB)/s", to_backend), "bytes/s %r" % to_backend)
            return True
        wait_until(shows_new_fields, "the page shows the new fields")
        return origin
    finally:
        proxy.shutdown()
        proxy.server_close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lb", required=True)
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--screenshot", help="write a PNG of the page here (docs/dashboard.png)")
    ap.add_argument("--screenshot-seconds", type=float, default=40)
    args = ap.parse_args()
    if not shutil.which(args.chromium):
        print("FAIL: %s not found (test/run.sh installs the chromium package)" % args.chromium)
        return 1
    try:
        run(args)
    except Failure as e:
        print("FAIL: %s" % e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
