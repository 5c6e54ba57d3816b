// End-to-end: an upgrade in place moves the established TCP connections to
// the new program (docs/upgrade.md, "Moving connections"). Long-lived
// streams transfer both ways throughout (small exchanges on the copy path,
// bulk ones that splice, and clients that stop reading so lb holds bytes),
// new connections arrive at a steady rate, and lb is upgraded several times
// in a row, alternating between two builds. Each old program must leave
// while the streams are still open (their connections really moved), and
// afterwards every stream's bytes are checked end to end.
//
// UDP sessions (each client its own socket) must keep their backend.
//
// Counters never go back: every counter series lb serves on /metrics
// (upgrade_counters(): all but the process's own CPU time), scraped just
// before each SIGUSR2 and again from the program that took over once the old
// one has left, is at least what it was; a series missing afterwards counts
// as gone back.
//
// Afterwards the serving lb (the last upgrade's) holds no more descriptors
// than the first one did before the load, and no more anonymous memory
// (RssAnon) than it did then + 5 % + 3 MiB (see the check): moved
// connections leave nothing behind in the program that took them.
//
// CI size: 12 streams, 60 UDP sessions, 3 upgrades (ctest e2e). The issue's
// full size (ctest e2e_upgrade_full):
//   LB_UPGRADE_STREAMS=200 LB_UPGRADE_UDP_SESSIONS=1000 LB_UPGRADE_ROUNDS=10
//   build/test/e2e "[moves]"   (all three variables in its environment)
#include <signal.h>

#include <fmt/format.h>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/udp.h"
#include "test/support/upgrade.h"

namespace lb::test {
namespace {

int env_or(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && std::atoi(v) > 0 ? std::atoi(v) : fallback;
}

// The byte at `offset` of stream `id`: each stream's content is its own,
// so a byte delivered to the wrong connection or out of order shows.
std::string stream_bytes(int id, uint64_t offset, size_t n) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    uint64_t o = offset + i;
    out[i] = static_cast<char>((o * 131 + static_cast<uint64_t>(id) * 7919 + (o >> 11)) & 0xff);
  }
  return out;
}

// One long-lived connection through lb to the echo backend, exchanging
// until stopped: every byte sent must come back, in order.
struct Stream {
  enum class Kind { Copy, Bulk, Stall };
  int id;
  Kind kind;
  Socket sock;
  std::atomic<uint64_t> verified{0};   // bytes echoed back and checked
  std::atomic<int64_t> longest_us{0};  // longest single exchange
  std::atomic<bool> stop{false};
  std::string error;  // set once, by the stream's thread
  std::thread thread;

  Stream(int i, Kind k, uint16_t port) : id(i), kind(k) {
    int err = 0;
    // A stalling client reads through a small window: lb holds what the
    // backend echoed meanwhile (the copy path's queued bytes).
    sock = tcp_connect_start("127.0.0.1", port, &err, k == Kind::Stall ? 4096 : 0);
    if (!sock || wait_connected(sock, in(seconds(10))) != 0) {
      error = "connect failed";
      return;
    }
    thread = std::thread([this] { run(); });
  }
  ~Stream() { finish(); }
  void finish() {
    stop.store(true);
    if (thread.joinable()) thread.join();
  }

  void run() {
    const size_t chunk = kind == Kind::Copy ? 4096 : kind == Kind::Bulk ? 256 * 1024 : 192 * 1024;
    uint64_t offset = 0;
    while (!stop.load()) {
      const std::string out = stream_bytes(id, offset, chunk);
      auto t0 = Clock::now();
      ReadResult r;
      if (kind == Kind::Stall) {
        // Everything first, then read: the echo waits in lb meanwhile.
        if (write_all(sock, out, in(seconds(30))) != out.size()) {
          error = fmt::format("write failed at offset {}", offset);
          return;
        }
        r = read_exact(sock, chunk, in(seconds(30)));
      } else {
        r = exchange(sock, out, chunk, in(seconds(30)));
      }
      if (r.end != ReadEnd::Complete || r.data.size() != chunk) {
        error = fmt::format("read ended ({}, errno {}) after {} of {} bytes at offset {}", to_string(r.end),
                            r.error, r.data.size(), chunk, offset);
        return;
      }
      if (r.data != out) {
        error = fmt::format("wrong byte at offset {}", offset + mismatch_offset(r.data, out));
        return;
      }
      int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
      if (us > longest_us.load()) longest_us.store(us);
      offset += chunk;
      verified.store(offset);
    }
  }
};

// UDP clients, each on its own socket (its own session): which backend
// answers each one must not change across the upgrades.
struct UdpClients {
  std::vector<int> fds;
  std::vector<std::string> backend;  // the name in each client's last answer
  explicit UdpClients(int n) {
    for (int i = 0; i < n; ++i) fds.push_back(udp_socket());
    backend.resize(fds.size());
  }
  ~UdpClients() {
    for (int fd : fds) ::close(fd);
  }
  // One query per client; false when an answer is missing or comes from
  // another backend than the client's last one.
  bool query_all(uint16_t port, int round, std::string* why) {
    for (size_t i = 0; i < fds.size(); ++i) {
      const std::string q = fmt::format("client {} round {}", i, round);
      auto r = send_to(fds[i], port, q) ? recv_within(fds[i], in(seconds(5))) : std::nullopt;
      if (!r || r->size() <= q.size() || r->substr(r->size() - q.size()) != q) {
        *why = fmt::format("client {}: no answer in round {}", i, round);
        return false;
      }
      std::string name = r->substr(0, r->size() - q.size() - 1);
      if (!backend[i].empty() && backend[i] != name) {
        *why = fmt::format("client {}: answered by {} after {} (round {})", i, name, backend[i], round);
        return false;
      }
      backend[i] = name;
    }
    return true;
  }
};

// The counter series of config() below (process_cpu_seconds_total aside):
// per listener (web, dns) connections and rejected for acl, limit and
// no_backend (8), dns's datagrams in and out (2); per backend (one in p,
// three in u) connections, connect failures, bytes both ways and checks
// passed and failed (24); reloads ok and error, upgrades ok and refused,
// access-log lines dropped (5).
constexpr size_t kCounterSeries = 39;

std::string config(const std::string& backend, const std::string& access_log,
                   const std::vector<std::string>& udp_backends) {
  ConfigBuilder c = upgrade_config();
  c.access_log(access_log)
      .listener("web", "p")
      .listener("dns", "u", "protocol = \"udp\"\nsession_timeout = \"120s\"")
      .pool("p")
      .backend(backend)
      .pool("u");
  for (const auto& b : udp_backends) c.backend(b);
  return c.str();
}

TEST_CASE("upgrade: established connections move to the new program, every byte kept",
          "[e2e][upgrade][moves]") {
  raise_fd_limit();
  const int nstreams = env_or("LB_UPGRADE_STREAMS", 12);
  const int rounds = env_or("LB_UPGRADE_ROUNDS", 3);
  const int nudp = env_or("LB_UPGRADE_UDP_SESSIONS", 60);
  TempDir dir;
  const std::string program = dir.path() + "/lb";
  const std::string log_path = dir.path() + "/access.log";
  REQUIRE(install_program(lb_binary(), program));
  TestBackend echo{TestBackend::echo()};
  REQUIRE(echo.ok());
  LbOptions options;
  options.binary = program;
  // ASan's quarantine would make RSS measure the allocator, not lb.
  options.env = {"ASAN_OPTIONS=quarantine_size_mb=1"};
  if (const char* cur = std::getenv("ASAN_OPTIONS"); cur && *cur) options.env[0] += std::string(":") + cur;
  // Round-robin over three: a session that lost its backend would most
  // likely be answered by another one.
  UdpEcho u1("u1"), u2("u2"), u3("u3");
  LbProcess lb(config(echo.address(), log_path, {u1.address(), u2.address(), u3.address()}), options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  const uint16_t udp_port = lb.listener_port("dns");
  UdpClients udp(nudp);
  std::string udp_why;
  REQUIRE(udp.query_all(udp_port, 0, &udp_why));
  const uint16_t admin = lb.admin_port();
  const int fds_before = fd_count_of(lb.pid());
  const long rss_before = proc_rss_kb(lb.pid());
  const long anon_before = proc_rss_anon_kb(lb.pid());

  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < nstreams; ++i) {
    auto kind = static_cast<Stream::Kind>(i % 3);
    streams.push_back(std::make_unique<Stream>(i, kind, port));
    REQUIRE(streams.back()->error.empty());
  }
  // The ping-pong client: one small exchange after another.
  Stream pingpong(nstreams, Stream::Kind::Copy, port);
  REQUIRE(pingpong.error.empty());
  SteadyClient steady(port);
  auto progressed = [&](std::vector<uint64_t>& seen) {
    // Every stream (and the ping-pong) has moved bytes since `seen`.
    Deadline d = in(seconds(60));
    for (size_t i = 0; i <= streams.size(); ++i) {
      Stream& s = i < streams.size() ? *streams[i] : pingpong;
      while (s.verified.load() <= seen[i] && s.error.empty() && !expired(d))
        std::this_thread::sleep_for(milliseconds(5));
      INFO("stream " << i << ": " << s.error);
      if (s.verified.load() <= seen[i]) return false;
      seen[i] = s.verified.load();
    }
    return true;
  };
  std::vector<uint64_t> seen(streams.size() + 1, 0);
  REQUIRE(progressed(seen));

  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  pid_t serving = lb.pid();
  std::vector<int> moved;
  for (int k = 1; k <= rounds; ++k) {
    INFO("upgrade " << k);
    REQUIRE(install_program(k % 2 ? lb_alt_binary() : lb_binary(), program));
    const std::optional<Metrics> before = fetch_metrics(admin);
    REQUIRE(before);
    const size_t from = lb.line_count();
    REQUIRE(::kill(serving, SIGUSR2) == 0);
    const pid_t old = serving;
    REQUIRE(await_handover(lb, k + 1, from, adopted));
    serving = adopted.back()->pid;
    auto count = lb.wait_for_line(std::regex(R"(^info upgrade moved connections count=([0-9]+) kept=0 )"),
                                  in(seconds(30)), from);
    REQUIRE(count);
    moved.push_back(std::stoi(count->substr(count->find("count=") + 6)));
    // Every stream was established before: all of them moved.
    CHECK(moved.back() >= nstreams + 1);
    // Every UDP session's backend was handed over before the new program served.
    auto pinned = lb.wait_for_line(std::regex(R"(^info upgrade took over udp sessions count=([0-9]+)$)"),
                                   in(seconds(5)), from);
    REQUIRE(pinned);
    CHECK(std::stoi(pinned->substr(pinned->find("count=") + 6)) == nudp);
    // The old program leaves while every stream is still open.
    CHECK(wait_gone(old, in(seconds(30))));
    // The admin socket is the new program's since it served (the old one
    // closed its own then), and the old one is gone: this is the new one's.
    const std::optional<Metrics> after = fetch_metrics(admin);
    REQUIRE(after);
    const std::vector<CounterSeries> counters = upgrade_counters(*before, *after);
    // Every listener's, backend's and lb's own counter (not an empty scrape).
    CHECK(counters.size() >= kCounterSeries);
    for (const CounterSeries& c : counters) {
      INFO(to_string(c) << " across the upgrade");
      CHECK(c.after.value_or(-1) >= c.before);
    }
    CHECK(progressed(seen));
    INFO(udp_why);
    CHECK(udp.query_all(udp_port, k, &udp_why));
    CHECK(metric(admin, "lb_upgrades_total", {{"result", "ok"}}) == k);
  }

  const int ok_then = steady.ok.load();
  while (steady.ok.load() < ok_then + 20 && steady.failed.load() == 0)
    std::this_thread::sleep_for(milliseconds(5));
  steady.finish();
  CHECK(steady.failed.load() == 0);
  int64_t stream_longest = 0;
  for (auto& s : streams) {
    s->finish();
    INFO("stream " << s->id << ": " << s->error);
    CHECK(s->error.empty());
    stream_longest = std::max<int64_t>(stream_longest, s->longest_us.load());
  }
  pingpong.finish();
  CHECK(pingpong.error.empty());
  std::string moved_text;
  for (int m : moved) moved_text += fmt::format("{} ", m);
  std::fprintf(
      stderr,
      "upgrade moves: %d streams, %d upgrades, moved per upgrade: %s; steady connections %d, longest "
      "connect+echo %lld us; ping-pong longest %lld us; longest stream exchange %lld us\n",
      nstreams, rounds, moved_text.c_str(), steady.ok.load(),
      static_cast<long long>(steady.longest_us.load()), static_cast<long long>(pingpong.longest_us.load()),
      static_cast<long long>(stream_longest));

  // Each stream's connection is logged once, by the program that ends it
  // (found by its port and byte count: the steady clients reuse ports).
  std::vector<std::string> lines_of_streams;
  for (auto& s : streams)
    lines_of_streams.push_back(fmt::format("\"client\":\"127.0.0.1:{}\"", local_port(s->sock)) +
                               fmt::format(",\"bytes_to_backend\":{},", s->verified.load()));
  for (auto& s : streams) s->sock.close();
  pingpong.sock.close();
  // Once lb has closed them too, no descriptor is left over.
  Deadline fd_deadline = in(seconds(30));
  while (fd_count_of(serving) > fds_before && !expired(fd_deadline))
    std::this_thread::sleep_for(milliseconds(10));
  const int fds_after = fd_count_of(serving);
  INFO("fds before " << fds_before << " after " << fds_after);
  CHECK(fds_after <= fds_before);
  const long rss_after = proc_rss_kb(serving);
  const long anon_after = proc_rss_anon_kb(serving);
  std::fprintf(
      stderr,
      "upgrade moves: serving lb before the load %d fds, %ld kB RSS (%ld kB anonymous); after it %d fds, "
      "%ld kB RSS (%ld kB anonymous)\n",
      fds_before, rss_before, anon_before, fds_after, rss_after, anon_after);
  INFO("RSS before " << rss_before << " kB (" << anon_before << " anonymous), after " << rss_after << " kB ("
                     << anon_after << " anonymous)");
  CHECK(anon_before > 0);
  CHECK(anon_after > 0);
#if !defined(__SANITIZE_THREAD__)
  // Not under ThreadSanitizer: its shadow memory grows with the work done
  // (30.9 -> 35.5 MB in CI), whatever lb holds. The bound is on lb's own
  // (anonymous) memory: the resident pages of its program and libraries
  // (RssFile) grow with the code paths the last program ran (taking over,
  // moving, splice), 0.4-1 MB here, and are no leak. At full size the last
  // program still holds the 1,000 UDP sessions (session_timeout 120 s) and
  // ended 0.9-2.3 MB above the first one's idle figure in six runs
  // (malloc_trim gave back 0.2 MB of it); a leak of 15 KB per moved
  // connection would pass 3 MB at 200 streams.
  CHECK(static_cast<double>(anon_after) <= static_cast<double>(anon_before) * 1.05 + 3072);
#endif
  REQUIRE(::kill(serving, SIGTERM) == 0);
  CHECK(wait_gone(serving, in(kStopTimeout)));
  std::ifstream in_log(log_path);
  std::string all((std::istreambuf_iterator<char>(in_log)), std::istreambuf_iterator<char>());
  for (const auto& want : lines_of_streams) {
    size_t n = 0;
    std::istringstream lines(all);
    for (std::string line; std::getline(lines, line);)
      if (line.find(want.substr(0, want.find(','))) != std::string::npos &&
          line.find(want.substr(want.find(','))) != std::string::npos)
        ++n;
    INFO(want);
    CHECK(n == 1);
  }
}

}  // namespace
}  // namespace lb::test
