// End-to-end: certificate rotation under load (issue 18). Twenty SIGHUPs,
// each with new certificate files, while three loops of real TLS handshakes
// (Python's ssl, verifying the chain and the name) run without pause: no
// handshake fails, and every handshake that starts after a reload has been
// committed is served the certificate of that reload or a later one.
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <csignal>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/child_process.h"
#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/temp_dir.h"
#include "test/support/tls_certs.h"

namespace lb::test {
namespace {

// THREADS loops of handshakes against 127.0.0.1:PORT naming rot.example.com,
// verified against CA. One line per handshake: "OK <start> <generation>"
// (start: CLOCK_MONOTONIC ns when the connect began, the clock of
// std::chrono::steady_clock; generation: N of the certificate's
// "gN.example.com" name) or "FAIL <start> <error>". Bounded: stops when the
// file STOP exists, after 90 s, or after 20,000 handshakes per loop.
const char* kHandshakeLoops = R"(import os, socket, ssl, sys, threading, time
port, ca, stop, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
end = time.monotonic() + 90
lock = threading.Lock()
def say(line):
    with lock:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()
def loop():
    ctx = ssl.create_default_context(cafile=ca)
    for _ in range(20000):
        if os.path.exists(stop) or time.monotonic() > end:
            return
        t0 = time.monotonic_ns()
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname='rot.example.com') as s:
                    names = [v for k, v in s.getpeercert()['subjectAltName'] if v.startswith('g')]
                    say('OK %d %s' % (t0, names[0][1:].split('.')[0]))
        except Exception as e:
            say('FAIL %d %r' % (t0, e))
ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
say('DONE')
)";

struct Handshake {
  bool ok;
  int64_t start_ns;
  int generation;  // of the certificate served (ok only)
  std::string text;
};

// The loops' lines parsed so far (read incrementally: they run to thousands).
class Handshakes {
 public:
  explicit Handshakes(const ChildProcess& loops) : loops_(loops) {}
  const std::vector<Handshake>& update() {
    static const std::regex ok(R"(^OK (\d+) (\d+)$)"), failed(R"(^FAIL (\d+) .*)");
    std::vector<OutputLine> lines = loops_.lines();
    std::smatch m;
    for (; seen_ < lines.size(); ++seen_) {
      const OutputLine& l = lines[seen_];
      if (l.stream != Stream::Stdout) continue;
      if (std::regex_match(l.text, m, ok))
        all_.push_back({true, std::stoll(m[1]), std::stoi(m[2]), l.text});
      else if (std::regex_match(l.text, m, failed))
        all_.push_back({false, std::stoll(m[1]), -1, l.text});
    }
    return all_;
  }

 private:
  const ChildProcess& loops_;
  size_t seen_ = 0;
  std::vector<Handshake> all_;
};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace

TEST_CASE("tls terminate: 20 certificate rotations under continuous handshakes", "[e2e][tls][reload]") {
  constexpr int kReloads = 20;
  TempDir dir;
  TestCa ca;
  const std::string ca_path = dir.write_file("ca.pem", ca.cert_pem());
  auto write_leaf = [&](int n) {
    // A new key, serial and name (gN) each time; the same CA.
    auto leaf = ca.issue({"rot.example.com", fmt::format("g{}.example.com", n)},
                         n % 2 ? KeyType::rsa2048 : KeyType::ecdsa_p256);
    dir.write_file("site.pem", leaf.cert);
    dir.write_file("site.key", leaf.key);
  };
  write_leaf(0);
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  const std::string certificate = fmt::format(
      "tls = \"terminate\"\n[[listener.certificate]]\ncert = \"{0}/site.pem\"\nkey = \"{0}/site.key\"",
      dir.path());
  LbProcess lb(web_config(backend.address(), 2, true, certificate));
  REQUIRE(lb.wait_started());
  const uint16_t admin = lb.admin_port();
  const std::string stop = dir.path() + "/stop";
  ChildProcess loops({"/usr/bin/python3", "-c", kHandshakeLoops, std::to_string(lb.listener_port("web")),
                      ca_path, stop, "3"});
  REQUIRE(loops.started());

  // committed[n]: when this test saw certificate n's reload committed.
  std::vector<int64_t> committed{now_ns()};
  Handshakes handshakes(loops);
  auto served_after = [&](int n) {
    for (const auto& h : handshakes.update())
      if (h.ok && h.start_ns > committed[n] && h.generation >= n) return true;
    return false;
  };
  REQUIRE(wait_until([&] { return served_after(0); }, in(seconds(20))));
  for (int n = 1; n <= kReloads; ++n) {
    write_leaf(n);
    size_t from = lb.line_count();
    REQUIRE(lb.signal(SIGHUP));
    REQUIRE(lb.wait_for_line(std::regex(fmt::format(R"(^info reloaded generation={}\b)", n + 1)),
                             in(seconds(20)), from));
    committed.push_back(now_ns());
    // Handshakes go on through the reload; one that starts after it is
    // served the new certificate before the next rotation begins.
    INFO("reload " << n);
    REQUIRE(wait_until([&] { return served_after(n); }, in(seconds(20))));
  }
  dir.write_file("stop", "");
  REQUIRE(loops.wait_exit(in(seconds(30))) == 0);

  const std::vector<Handshake>& all = handshakes.update();
  size_t failed = 0, stale = 0;
  std::string wrong;
  for (const auto& h : all) {
    if (!h.ok) {
      ++failed;
      wrong += h.text + "\n";
      continue;
    }
    // The newest certificate committed before this handshake began.
    int newest = 0;
    for (int n = 0; n < static_cast<int>(committed.size()); ++n)
      if (committed[n] < h.start_ns) newest = n;
    if (h.generation < newest) {
      ++stale;
      wrong += fmt::format("{}: certificate {} was committed {} µs before it started\n", h.text, newest,
                           (h.start_ns - committed[newest]) / 1000);
    }
  }
  CHECK(all.size() > static_cast<size_t>(kReloads));
  INFO(wrong);
  CHECK(failed == 0);
  CHECK(stale == 0);
  auto m = fetch_metrics(admin);
  REQUIRE(m);
  CHECK(m->value("lb_tls_handshakes_total", {{"listener", "web"}, {"result", "failed"}}) == 0);
  CHECK(m->value("lb_listener_rejected_total", {{"listener", "web"}, {"reason", "tls"}}) == 0);
  CHECK(m->value("lb_config_reloads_total", {{"result", "ok"}}) == kReloads);
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
