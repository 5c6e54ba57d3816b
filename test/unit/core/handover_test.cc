// The upgrade hand-over format (core/handover/state.h) and its channel
// (core/handover/channel.h): a round trip keeps every field, and anything
// this build cannot read for sure is refused with a reason.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <thread>

#include "core/handover/channel.h"
#include "core/handover/state.h"

namespace ho = lb::core::handover;
using namespace std::chrono_literals;

namespace {

ho::HandoverState sample() {
  ho::HandoverState s;
  s.generation = 7;
  s.reloads_ok = 5;
  s.reloads_error = 1;
  s.upgrades_ok = 2;
  s.upgrades_refused = 3;
  s.access_log_dropped = 11;
  s.access_log_fd = 4;
  s.admin_fd = 3;
  s.listeners.push_back({"web", "tcp|127.0.0.1:8080", 1, {0, 1}});
  s.listeners.push_back({"dns", "udp|127.0.0.1:5353", 2, {2, 3}});
  s.listener_counters.push_back({"web", 100, 1, 2, 3, 4, 5, 0, 0});
  s.listener_counters.push_back({"dns", 50, 0, 0, 0, 0, 0, 1000, 999});
  ho::BackendState b;
  b.pool = "p";
  b.id = "10.0.0.1:80";
  b.up = true;
  b.drain = true;
  b.admin_weight = 42;
  b.slow_start_elapsed_ms = 1234;
  b.total = 1ull << 40;
  b.connect_failures = 9;
  b.bytes_to_backend = 123456789;
  b.bytes_to_client = 987654321;
  b.checks_pass = 77;
  b.checks_fail = 8;
  s.backends.push_back(b);
  ho::BackendState down;
  down.pool = "p";
  down.id = "db";
  s.backends.push_back(down);
  s.udp_sessions.push_back({"dns", {2, 0, 0x13, 0x89, 127, 0, 0, 1}, "p", "10.0.0.1:80", 4});
  s.udp_sessions.push_back({"dns", {2, 0, 0x13, 0x8a, 127, 0, 0, 2}, "p", "10.0.0.1:80", std::nullopt});
  s.listener_counters[0].tls_ok = 12;
  s.listener_counters[0].tls_failed = 2;
  s.listener_counters[0].tls_timeout = 1;
  lb::core::FrozenSession t;
  t.client_fd = 0;
  t.backend_fd = 1;
  t.path = lb::core::FrozenSession::Path::Splice;
  t.to_backend.pending = std::string("half a request\0with a zero", 26);
  t.to_client.eof = true;
  t.to_client.shutdown_done = true;
  t.listener = "web";
  t.pool = "p";
  t.backend = "10.0.0.1:80";
  t.client.ss_family = AF_INET6;
  t.client.__ss_padding[3] = 7;
  t.flow_hash = 0xfeedfacecafebeefull;
  t.started_ms = 123456789;
  t.bytes_to_backend = 1ull << 33;
  t.bytes_to_client = 5;
  s.tcp_sessions.push_back(t);
  return s;
}

void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + static_cast<size_t>(i)] = static_cast<uint8_t>(v >> (8 * i));
}

}  // namespace

TEST_CASE("handover: encode/decode keeps every field", "[handover]") {
  const ho::HandoverState s = sample();
  auto bytes = ho::encode(s, 5);
  REQUIRE(std::memcmp(bytes.data(), "LBHANDOV", 8) == 0);
  std::string err;
  auto back = ho::decode(bytes, 5, &err);
  INFO(err);
  REQUIRE(back);
  CHECK(*back == s);
  CHECK(back->version == ho::kHandoverVersion);

  ho::HandoverState empty;
  auto e = ho::decode(ho::encode(empty, 0), 0, &err);
  REQUIRE(e);
  CHECK(*e == empty);
  CHECK(!e->access_log_fd);
}

TEST_CASE("handover: version 1 (the previous release) is still read", "[handover]") {
  const ho::HandoverState s = sample();
  auto bytes = ho::encode(s, 5, 1);
  std::string err;
  auto back = ho::decode(bytes, 5, &err);
  INFO(err);
  REQUIRE(back);
  CHECK(back->version == 1);
  // What version 1 carries, and nothing more.
  CHECK(back->generation == s.generation);
  CHECK(back->listeners == s.listeners);
  CHECK(back->backends == s.backends);
  CHECK(back->udp_sessions == s.udp_sessions);
  CHECK(back->listener_counters[0].connections == 100);
  CHECK(back->listener_counters[0].tls_ok == 0);
  CHECK(back->tcp_sessions.empty());
}

TEST_CASE("handover: version 2 (the previous release) is still read", "[handover]") {
  const ho::HandoverState s = sample();
  std::string err;
  auto back = ho::decode(ho::encode(s, 5, 2), 5, &err);
  INFO(err);
  REQUIRE(back);
  CHECK(back->version == 2);
  // Every version 2 record is a relaying one, without a deadline.
  CHECK(back->tcp_sessions == s.tcp_sessions);
  CHECK(back->listener_counters == s.listener_counters);
}

TEST_CASE("handover: version 3 carries connections that are not relaying yet", "[handover]") {
  ho::HandoverState s = sample();
  lb::core::FrozenSession header;
  header.stage = lb::core::FrozenSession::Stage::Header;
  header.client_fd = 2;
  header.listener = "pp";
  header.to_backend.pending = "PROXY TCP4 192.0.2.1 19";
  header.deadline_ms = 987654;
  header.started_ms = 12;
  s.tcp_sessions.push_back(header);
  lb::core::FrozenSession connecting;
  connecting.stage = lb::core::FrozenSession::Stage::Connecting;
  connecting.client_fd = 3;
  connecting.listener = "tls";
  connecting.pool = "p";
  connecting.to_backend.pending = std::string("\x16\x03\x01\x00\x05hello", 10);
  s.tcp_sessions.push_back(connecting);
  std::string err;
  auto back = ho::decode(ho::encode(s, 5), 5, &err);
  INFO(err);
  REQUIRE(back);
  CHECK(*back == s);
  CHECK(back->tcp_sessions[1].backend_fd == -1);

  SECTION("a record that is not relaying, with a backend descriptor") {
    s.tcp_sessions[1].backend_fd = 4;
    CHECK(!ho::decode(ho::encode(s, 5), 5, &err));
    CHECK(err.find("does not match its stage") != std::string::npos);
  }
  SECTION("a relaying record without one") {
    s.tcp_sessions[0].backend_fd = -1;
    CHECK(!ho::decode(ho::encode(s, 5), 5, &err));
    CHECK(err.find("does not match its stage") != std::string::npos);
  }
}

TEST_CASE("handover: a TCP session section in a version 1 body is refused", "[handover]") {
  // Version 2's section under a version 1 header: damage, not a newer writer.
  auto bytes = ho::encode(sample(), 5);
  put_u32(bytes, 8, 1);
  std::string err;
  CHECK(!ho::decode(bytes, 5, &err));
}

TEST_CASE("handover: a version this build does not read is refused", "[handover]") {
  auto bytes = ho::encode(sample(), 5);
  std::string err;
  SECTION("newer") {
    put_u32(bytes, 8, ho::kHandoverVersion + 1);
    CHECK(!ho::decode(bytes, 5, &err));
    CHECK(err.find("version " + std::to_string(ho::kHandoverVersion + 1)) != std::string::npos);
  }
  SECTION("older than the oldest") {
    put_u32(bytes, 8, ho::kHandoverMinVersion - 1);
    CHECK(!ho::decode(bytes, 5, &err));
    CHECK(err.find("not readable") != std::string::npos);
  }
}

TEST_CASE("handover: damaged input is refused, never half-read", "[handover]") {
  const auto good = ho::encode(sample(), 5);
  std::string err;
  SECTION("bad magic") {
    auto b = good;
    b[0] = 'X';
    CHECK(!ho::decode(b, 5, &err));
    CHECK(err.find("magic") != std::string::npos);
  }
  SECTION("truncated anywhere") {
    for (size_t n = 0; n < good.size(); ++n) {
      std::vector<uint8_t> b(good.begin(), good.begin() + static_cast<long>(n));
      INFO("length " << n);
      CHECK(!ho::decode(b, 5, &err));
    }
  }
  SECTION("a flipped bit anywhere in the body") {
    for (size_t i = 32; i < good.size(); ++i) {
      auto b = good;
      b[i] ^= 0x10;
      INFO("byte " << i);
      CHECK(!ho::decode(b, 5, &err));
    }
  }
  SECTION("fewer descriptors than the state names") {
    CHECK(!ho::decode(good, 4, &err));
    CHECK(err.find("descriptor count") != std::string::npos);
  }
  SECTION("a descriptor index beyond what was sent") {
    auto s = sample();
    s.listeners[0].fds.push_back(9);
    CHECK(!ho::decode(ho::encode(s, 5), 5, &err));
    CHECK(err.find("out of range") != std::string::npos);
  }
  SECTION("a TCP session's descriptor beyond what was sent") {
    auto s = sample();
    s.tcp_sessions[0].backend_fd = 5;
    CHECK(!ho::decode(ho::encode(s, 5), 5, &err));
    CHECK(err.find("TCP session: descriptor index out of range") != std::string::npos);
  }
}

TEST_CASE("handover: --handover-version's line and its check", "[handover]") {
  const std::string line = ho::version_line();
  std::string err;
  CHECK(ho::reads_version(line, ho::kHandoverVersion, &err));
  CHECK(!ho::reads_version(line, ho::kHandoverVersion + 1, &err));
  CHECK(err.find("writes " + std::to_string(ho::kHandoverVersion + 1)) != std::string::npos);
  CHECK(!ho::reads_version("lb: unknown argument '--handover-version'", 1, &err));
  CHECK(err.find("cannot read") != std::string::npos);
  CHECK(ho::reads_version("handover reads 1-3 writes 3", 2, &err));
}

TEST_CASE("handover: the channel carries bytes and descriptors", "[handover]") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  // More descriptors than fit one message, more bytes than one chunk.
  std::vector<int> fds;
  for (size_t i = 0; i < ho::kFdsPerMessage + 7; ++i) {
    int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    fds.push_back(fd);
  }
  std::vector<uint8_t> bytes(ho::kChunk * 2 + 123);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);

  std::string send_err;
  bool sent = false;
  std::thread sender([&] { sent = ho::send_state(sv[0], bytes, fds, 5000ms, &send_err); });
  std::string err;
  auto got = ho::receive_state(sv[1], 5000ms, &err);
  sender.join();
  INFO(send_err << " / " << err);
  REQUIRE(sent);
  REQUIRE(got);
  CHECK(got->bytes == bytes);
  REQUIRE(got->fds.size() == fds.size());
  for (size_t i = 0; i < fds.size(); ++i) {
    struct stat a {
    }, b{};
    REQUIRE(::fstat(fds[i], &a) == 0);
    REQUIRE(::fstat(got->fds[i], &b) == 0);
    CHECK(a.st_rdev == b.st_rdev);
    CHECK((::fcntl(got->fds[i], F_GETFD) & FD_CLOEXEC) != 0);
  }

  CHECK(ho::send_line(sv[1], "SERVING 123", 1000ms));
  CHECK(ho::receive_line(sv[0], 1000ms) == std::optional<std::string>("SERVING 123"));

  // The sender gone mid-way: an error, nothing leaked.
  const std::string header = "STATE 100 0";
  REQUIRE(::send(sv[0], header.data(), header.size(), 0) == static_cast<ssize_t>(header.size()));
  ::close(sv[0]);
  CHECK(!ho::receive_state(sv[1], 1000ms, &err));
  CHECK(err.find("closed") != std::string::npos);
  ::close(sv[1]);
  for (int fd : fds) ::close(fd);
  for (int fd : got->fds) ::close(fd);
}
