// End-to-end: systemd integration — the sd_notify protocol (READY, WATCHDOG,
// RELOADING with MONOTONIC_USEC, STOPPING) spoken to a notify socket the test
// owns, and socket activation through systemd-socket-activate(1) (Debian
// package "systemd").
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/child_process.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/notify_socket.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

std::string echo_config(const std::string& binds_and_names, const std::string& backend) {
  return global_section(1) + binds_and_names +
         fmt::format(R"(
[[pool]]
name = "p"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "{}"
)",
                     backend);
}

TEST_CASE("systemd: notify protocol — READY, WATCHDOG, RELOADING, STOPPING in order",
          "[e2e][systemd][notify]") {
  NotifySocket notify;
  REQUIRE(notify.ok());
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  const uint16_t port = refused_port();
  LbOptions options;
  options.env = {"NOTIFY_SOCKET=" + notify.path(), "WATCHDOG_USEC=200000"};
  LbProcess lb(
      echo_config(fmt::format("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n", port),
                  echo.address()),
      options);

  // READY=1 means serving: the listener takes connections the moment it arrives.
  auto ready = notify.wait_for("READY=1", in(kStartTimeout));
  REQUIRE(ready);
  CHECK(echoes(port, "ready means bound"));
  REQUIRE(lb.wait_started());

  // WATCHDOG=1 every WATCHDOG_USEC / 2 = 100ms, after READY=1: three of them
  // arrive. The deadline only bounds a stuck loop; it is no rate target.
  int watchdogs = 0;
  const Deadline watchdog_deadline = in(seconds(15));
  while (watchdogs < 3 && !expired(watchdog_deadline)) {
    auto m = notify.receive(watchdog_deadline);
    if (m && has_line(*m, "WATCHDOG=1")) ++watchdogs;
  }
  INFO(watchdogs << " WATCHDOG=1 after READY=1 (WATCHDOG_USEC=200000)");
  CHECK(watchdogs >= 3);

  // Reload: RELOADING=1 with the time it began, then READY=1.
  const uint64_t before_hup = monotonic_usec();
  size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGHUP));
  REQUIRE(lb.wait_for_line(std::regex(R"(^info reloaded generation=2\b)"), in(seconds(10)), from));
  auto reloading = notify.wait_for("RELOADING=1", in(seconds(5)));
  REQUIRE(reloading);
  CHECK(notify.wait_for("READY=1", in(seconds(5))));
  const uint64_t after_reload = monotonic_usec();
  std::smatch m;
  INFO("RELOADING datagram: " << *reloading);
  REQUIRE(std::regex_search(*reloading, m, std::regex(R"((^|\n)MONOTONIC_USEC=([0-9]+)($|\n))")));
  const uint64_t usec = std::stoull(m[2].str());
  CHECK(usec >= before_hup);
  CHECK(usec <= after_reload);

  // Stop: STOPPING=1, then a clean exit.
  REQUIRE(lb.signal(SIGTERM));
  CHECK(notify.wait_for("STOPPING=1", in(seconds(5))));
  CHECK(lb.wait_exit(in(kStopTimeout)) == 0);
  while (notify.receive(in(milliseconds(50)))) {
  }

  // The whole conversation, without STATUS= and the periodic WATCHDOG=1.
  std::vector<std::string> sequence;
  std::string transcript;
  for (const auto& msg : notify.messages()) {
    transcript += "[" + msg.text + "] ";
    for (const auto& line : split_lines(msg.text)) {
      if (line.rfind("STATUS=", 0) == 0 || line == "WATCHDOG=1" || line.rfind("MONOTONIC_USEC=", 0) == 0)
        continue;
      sequence.push_back(line);
    }
  }
  INFO("datagrams: " << transcript);
  CHECK(sequence == std::vector<std::string>{"FDSTORE=1", "FDNAME=web", "READY=1", "RELOADING=1", "READY=1",
                                             "STOPPING=1"});
}

// The file descriptor store, emulated: lb stores its listening sockets with
// the notify socket (FDSTORE=1, FDNAME=, SCM_RIGHTS); it crashes; a client
// connects meanwhile and waits in the kernel's accept queue; a new lb gets
// the stored sockets back as LISTEN_FDS and serves that client.
TEST_CASE("systemd: the descriptor store keeps listening sockets across a crash", "[e2e][systemd][fdstore]") {
  NotifySocket notify;
  REQUIRE(notify.ok());
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  const uint16_t port = refused_port();
  const std::string config =
      global_section(2) +
      fmt::format("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n", port) +
      echo_config("", echo.address()).substr(global_section(1).size());
  LbOptions options;
  options.env = {"NOTIFY_SOCKET=" + notify.path()};
  auto first = std::make_unique<LbProcess>(config, options);
  auto stored = notify.wait_for("FDSTORE=1", in(kStartTimeout));
  REQUIRE(stored);
  CHECK(has_line(*stored, "FDNAME=web"));
  REQUIRE(notify.wait_for("READY=1", in(kStartTimeout)));
  const auto& msg = *std::find_if(notify.messages().begin(), notify.messages().end(),
                                  [](const auto& m) { return has_line(m.text, "FDSTORE=1"); });
  // workers = 2: both members of the SO_REUSEPORT group, so no queued
  // connection is lost whichever socket the kernel put it on.
  REQUIRE(msg.fds.size() == 2);
  CHECK(echoes(port, "before the crash"));

  REQUIRE(first->signal(SIGKILL));
  first->wait_exit(in(kStopTimeout));
  // lb is down: the sockets still exist (the store holds them), so these
  // connect at once and wait in the accept queue.
  std::vector<Socket> waiting;
  for (int i = 0; i < 8; ++i) {
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(s);
    const std::string hello = fmt::format("queued {}", i);
    REQUIRE(::send(s.fd(), hello.data(), hello.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(hello.size()));
    waiting.push_back(std::move(s));
  }

  LbOptions again;
  again.env = {"NOTIFY_SOCKET=" + notify.path(), "LISTEN_FDS=2", "LISTEN_FDNAMES=web:web"};
  again.listen_fds = msg.fds;
  LbProcess second(config, again);
  REQUIRE(second.wait_started());
  CHECK(second.process().find_line(std::regex(
      fmt::format(R"(^info listening listener=web address=127\.0\.0\.1:{} inherited=true$)", port))));
  CHECK(!second.process().find_line(
      std::regex(R"(inherited socket matches no listener|differ from the worker count)")));
  for (size_t i = 0; i < waiting.size(); ++i) {
    const std::string hello = fmt::format("queued {}", i);
    CHECK(read_exact(waiting[i], hello.size(), in(seconds(10))).data == hello);
  }
  CHECK(echoes(port, "after the restart"));
  waiting.clear();  // else the graceful stop waits for them
  REQUIRE(second.signal(SIGTERM));
  CHECK(second.wait_exit(in(kStopTimeout)) == 0);
}

constexpr const char* kSocketActivate = "/usr/bin/systemd-socket-activate";

// systemd-socket-activate binds `listen`, waits for the first connection
// attempt, then execs lb (same pid) with LISTEN_FDS=1 and the socket on fd 3.
struct ActivatedLb {
  TempDir dir;
  std::unique_ptr<ChildProcess> proc;

  ActivatedLb(const std::string& listen, const std::vector<std::string>& extra_args,
              const std::string& config) {
    const std::string path = dir.write_file("lb.toml", config);
    std::vector<std::string> argv = {kSocketActivate, "-l", listen};
    // systemd-socket-activate passes lb only the variables named with -E:
    // keep sanitizer settings of the test run.
    for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS", "LSAN_OPTIONS"})
      if (std::getenv(name)) argv.insert(argv.end(), {"-E", name});
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    argv.insert(argv.end(), {lb_binary(), "--config", path});
    SpawnOptions spawn;
    spawn.echo_prefix = "[activated lb] ";
    proc = std::make_unique<ChildProcess>(argv, spawn);
  }
};

bool have_socket_activate() {
  if (::access(kSocketActivate, X_OK) == 0) return true;
  FAIL_CHECK(kSocketActivate << " is missing: install the Debian package \"systemd\"");
  return false;
}

TEST_CASE("systemd: socket activation matches an inherited socket by listener name",
          "[e2e][systemd][activation]") {
  if (!have_socket_activate()) return;
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  const uint16_t port = refused_port();
  // The file says port 1; the inherited socket named "web" replaces that bind.
  ActivatedLb lb(
      fmt::format("127.0.0.1:{}", port), {"--fdname=web"},
      echo_config("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n", echo.address()));
  REQUIRE(lb.proc->started());
  INFO(lb.proc->output());
  REQUIRE(lb.proc->wait_for_line(std::regex(fmt::format(R"(Listening on 127\.0\.0\.1:{})", port)),
                                 in(seconds(5))));

  // The first connection starts lb; it waits in the socket's backlog meanwhile.
  CHECK(echoes(port, "first connection starts lb"));
  REQUIRE(lb.proc->wait_for_line(std::regex(R"(^info started\b)"), in(kStartTimeout)));
  CHECK(lb.proc->find_line(std::regex(
      fmt::format(R"(^info listening listener=web address=127\.0\.0\.1:{} inherited=true$)", port))));
  CHECK(!lb.proc->find_line(std::regex(R"(inherited socket matches no listener)")));
  for (int i = 0; i < 5; ++i) CHECK(echoes(port, fmt::format("through the inherited socket {}", i)));
  // lb did not bind the address in the file.
  int err = 0;
  Socket s = tcp_connect("127.0.0.1", 1, in(seconds(2)), &err);
  CHECK(!s);
  CHECK(err == ECONNREFUSED);

  REQUIRE(lb.proc->signal(SIGTERM));
  CHECK(lb.proc->wait_exit(in(kStopTimeout)) == 0);
}

TEST_CASE("systemd: socket activation matches an unnamed inherited socket by address",
          "[e2e][systemd][activation]") {
  if (!have_socket_activate()) return;
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  const uint16_t port = refused_port();
  const uint16_t plain = refused_port();
  const std::string listeners = fmt::format(
      "[[listener]]\nname = \"front\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n\n"
      "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:{}\"\npool = \"p\"\n",
      port, plain);
  ActivatedLb lb(fmt::format("127.0.0.1:{}", port), {}, echo_config(listeners, echo.address()));
  REQUIRE(lb.proc->started());
  INFO(lb.proc->output());
  REQUIRE(lb.proc->wait_for_line(std::regex(fmt::format(R"(Listening on 127\.0\.0\.1:{})", port)),
                                 in(seconds(5))));

  CHECK(echoes(port, "first connection starts lb"));
  REQUIRE(lb.proc->wait_for_line(std::regex(R"(^info started\b)"), in(kStartTimeout)));
  CHECK(lb.proc->find_line(std::regex(
      fmt::format(R"(^info listening listener=front address=127\.0\.0\.1:{} inherited=true$)", port))));
  // The other listener binds as usual.
  CHECK(lb.proc->find_line(
      std::regex(fmt::format(R"(^info listening listener=plain address=127\.0\.0\.1:{}$)", plain))));
  CHECK(echoes(port, "inherited"));
  CHECK(echoes(plain, "bound"));

  REQUIRE(lb.proc->signal(SIGTERM));
  CHECK(lb.proc->wait_exit(in(kStopTimeout)) == 0);
}

}  // namespace
}  // namespace lb::test
