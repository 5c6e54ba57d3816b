#include "lb/systemd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "test/support/deadline.h"
#include "test/support/temp_dir.h"

namespace sd = lb::app::systemd;
using lb::test::Deadline;
using lb::test::in;
using lb::test::poll_timeout_ms;
using lb::test::seconds;

namespace {

// Sets or unsets environment variables for one test and restores the
// previous values afterwards, so tests do not leak into each other.
class EnvGuard {
 public:
  EnvGuard(std::initializer_list<const char*> names) {
    for (const char* n : names) {
      const char* v = std::getenv(n);
      saved_.emplace_back(n, v ? std::optional<std::string>(v) : std::nullopt);
    }
  }
  ~EnvGuard() {
    for (auto& [n, v] : saved_) {
      if (v)
        ::setenv(n.c_str(), v->c_str(), 1);
      else
        ::unsetenv(n.c_str());
    }
  }
  void set(const char* name, const std::string& value) { ::setenv(name, value.c_str(), 1); }
  void unset(const char* name) { ::unsetenv(name); }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

const std::initializer_list<const char*> kNotifyVars = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"};

// The service manager's end: an AF_UNIX datagram socket bound to a path or
// to an abstract name ("@name").
class FakeManager {
 public:
  explicit FakeManager(const std::string& name) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, name.data(), name.size());
    if (name[0] == '@') a.sun_path[0] = '\0';
    socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
    bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) == 0;
  }
  ~FakeManager() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool bound() const { return bound_; }

  // The next datagram, or nullopt if none arrives before the deadline.
  std::optional<std::string> receive(Deadline deadline) {
    for (;;) {
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n >= 0) return std::string(buf, static_cast<size_t>(n));
      if (errno != EAGAIN && errno != EINTR) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, poll_timeout_ms(deadline)) == 0) return std::nullopt;
    }
  }
  // The next datagram and the descriptors passed with it (SCM_RIGHTS; the
  // caller closes them), or nullopt if none arrives before the deadline.
  std::optional<std::pair<std::string, std::vector<int>>> receive_fds(Deadline deadline) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, poll_timeout_ms(deadline)) <= 0) return std::nullopt;
    char buf[4096];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return std::nullopt;
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
    return std::make_pair(std::string(buf, static_cast<size_t>(n)), fds);
  }
  // A datagram already queued, without waiting.
  std::optional<std::string> receive_now() {
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

uint64_t monotonic_now_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// --------------------------------------------------------------------------
// Forked children. inherited_sockets() takes over fds 3.. and rewrites the
// environment; that must not happen to the test runner itself, so those tests
// run their body in a child that reports "key=value" lines through a pipe,
// and the parent asserts on them.

using Report = std::map<std::string, std::string>;

Report run_in_child(const std::function<void(Report&)>& body) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    // Keep the report pipe clear of the fds the body rearranges (3, 4, 5...).
    int out = ::fcntl(p[1], F_DUPFD_CLOEXEC, 60);
    ::close(p[1]);
    Report r;
    try {
      body(r);
    } catch (...) {
      r["exception"] = "1";
    }
    std::string text;
    for (auto& [k, v] : r) {
      std::string value = v;
      for (char& c : value)
        if (c == '\n') c = '|';
      text += k + "=" + value + "\n";
    }
    const char* d = text.data();
    size_t left = text.size();
    while (left > 0) {
      ssize_t n = ::write(out, d, left);
      if (n <= 0) ::_exit(3);
      d += n;
      left -= static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(p[1]);
  std::string text;
  Deadline deadline = in(seconds(20));
  bool eof = false;
  while (!eof && !lb::test::expired(deadline)) {
    pollfd pf{p[0], POLLIN, 0};
    if (::poll(&pf, 1, poll_timeout_ms(deadline)) <= 0) continue;
    char buf[4096];
    ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n > 0)
      text.append(buf, static_cast<size_t>(n));
    else if (n == 0 || errno != EINTR)
      eof = true;
  }
  ::close(p[0]);
  if (!eof) ::kill(pid, SIGKILL);  // our own child, stuck
  int status = 0;
  ::waitpid(pid, &status, 0);
  INFO("child output: " << text);
  REQUIRE(eof);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  Report r;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string line = text.substr(start, nl - start);
    size_t eq = line.find('=');
    if (eq != std::string::npos) r[line.substr(0, eq)] = line.substr(eq + 1);
    start = nl == std::string::npos ? text.size() : nl + 1;
  }
  return r;
}

// A socket bound to 127.0.0.1:0 (and listening, for TCP).
int loopback_socket(int type) {
  int fd = ::socket(AF_INET, type, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  if (type == SOCK_STREAM && ::listen(fd, 16) != 0) return -1;
  return fd;
}

// Moves the given fds onto 3, 4, 5, ... in order (as systemd passes them),
// without close-on-exec, like a freshly exec'd process sees them.
bool place_at_listen_fds(std::vector<int> fds) {
  // First lift them above the target range so no dup2 clobbers another one.
  for (int& fd : fds) {
    int high = ::fcntl(fd, F_DUPFD, 20);
    if (high < 0) return false;
    ::close(fd);
    fd = high;
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    if (::dup2(fds[i], static_cast<int>(3 + i)) < 0) return false;
    ::close(fds[i]);
  }
  return true;
}

std::string local_address_text(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
  char ip[INET_ADDRSTRLEN] = "";
  ::inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(in4->sin_port));
}

std::string address_text(const sd::InheritedSocket& s) {
  if (s.addr.ss_family != AF_INET) return "family " + std::to_string(s.addr.ss_family);
  auto* in4 = reinterpret_cast<const sockaddr_in*>(&s.addr);
  char ip[INET_ADDRSTRLEN] = "";
  ::inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(in4->sin_port));
}

bool cloexec(int fd) {
  int f = ::fcntl(fd, F_GETFD);
  return f >= 0 && (f & FD_CLOEXEC);
}

sockaddr_in v4(const char* ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

sockaddr_in6 v6(const char* ip, uint16_t port, uint32_t scope = 0) {
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(port);
  a.sin6_scope_id = scope;
  ::inet_pton(AF_INET6, ip, &a.sin6_addr);
  return a;
}

template <typename T>
const sockaddr* sa(const T& a) {
  return reinterpret_cast<const sockaddr*>(&a);
}

template <typename T>
sd::InheritedSocket fake(int fd, std::string name, int type, const T& addr) {
  sd::InheritedSocket s;
  s.fd = fd;
  s.name = std::move(name);
  s.type = type;
  std::memcpy(&s.addr, &addr, sizeof addr);
  s.len = sizeof addr;
  return s;
}

}  // namespace

// ------------------------------------------------------------------ Notifier

TEST_CASE("Notifier sends each state as one datagram, in order", "[systemd]") {
  lb::test::TempDir dir;
  REQUIRE(!dir.path().empty());
  const std::string path = dir.path() + "/notify";
  FakeManager manager(path);
  REQUIRE(manager.bound());

  EnvGuard env(kNotifyVars);
  env.set("NOTIFY_SOCKET", path);
  sd::Notifier n;
  REQUIRE(n.enabled());
  CHECK(n.error().empty());
  // The variable stays for anything else that wants it (systemd convention).
  REQUIRE(std::getenv("NOTIFY_SOCKET") != nullptr);

  CHECK(n.ready());
  CHECK(n.status("loading\nconfiguration"));
  uint64_t before = monotonic_now_usec();
  CHECK(n.reloading());
  uint64_t after = monotonic_now_usec();
  CHECK(n.ready());
  CHECK(n.watchdog());
  CHECK(n.stopping());
  CHECK(n.send("EXTEND_TIMEOUT_USEC=5000000"));

  auto deadline = in(seconds(5));
  CHECK(manager.receive(deadline) == std::optional<std::string>("READY=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("STATUS=loading configuration"));
  auto reload = manager.receive(deadline);
  REQUIRE(reload);
  const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
  REQUIRE(reload->rfind(prefix, 0) == 0);
  std::string digits = reload->substr(prefix.size());
  REQUIRE(!digits.empty());
  REQUIRE(digits.find_first_not_of("0123456789") == std::string::npos);
  uint64_t stamp = std::stoull(digits);
  CHECK(stamp >= before);
  CHECK(stamp <= after);
  CHECK(manager.receive(deadline) == std::optional<std::string>("READY=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("WATCHDOG=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("STOPPING=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("EXTEND_TIMEOUT_USEC=5000000"));
  CHECK(!manager.receive_now());
}

TEST_CASE("Notifier reaches an abstract-namespace socket", "[systemd]") {
  static int counter = 0;
  const std::string name = "@lb-test-notify-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
  FakeManager manager(name);
  REQUIRE(manager.bound());

  EnvGuard env(kNotifyVars);
  env.set("NOTIFY_SOCKET", name);
  sd::Notifier n;
  REQUIRE(n.enabled());
  CHECK(n.ready());
  CHECK(n.stopping());
  auto deadline = in(seconds(5));
  CHECK(manager.receive(deadline) == std::optional<std::string>("READY=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("STOPPING=1"));

  // The abstract name is exactly the bytes after '@': a socket named with a
  // trailing NUL (a classic off-by-one) is a different socket.
  FakeManager other(name + "x");
  REQUIRE(other.bound());
  CHECK(n.ready());
  CHECK(manager.receive(deadline) == std::optional<std::string>("READY=1"));
  CHECK(!other.receive_now());
}

TEST_CASE("Notifier is disabled without a usable NOTIFY_SOCKET", "[systemd]") {
  EnvGuard env(kNotifyVars);

  SECTION("unset") {
    env.unset("NOTIFY_SOCKET");
    sd::Notifier n;
    CHECK(!n.enabled());
    CHECK(n.error().empty());
    CHECK(!n.ready());
    CHECK(!n.reloading());
    CHECK(!n.status("x"));
  }
  SECTION("empty") {
    env.set("NOTIFY_SOCKET", "");
    sd::Notifier n;
    CHECK(!n.enabled());
    CHECK(n.error().empty());
  }
  SECTION("relative path") {
    env.set("NOTIFY_SOCKET", "run/notify");
    sd::Notifier n;
    CHECK(!n.enabled());
    CHECK(n.error().find("run/notify") != std::string::npos);
    CHECK(!n.ready());
  }
  SECTION("too long for sockaddr_un") {
    env.set("NOTIFY_SOCKET", "/" + std::string(200, 'a'));
    sd::Notifier n;
    CHECK(!n.enabled());
    CHECK(n.error().find("longer than") != std::string::npos);
  }
  SECTION("nobody listening: send fails, does not throw or block") {
    lb::test::TempDir dir;
    env.set("NOTIFY_SOCKET", dir.path() + "/missing");
    sd::Notifier n;
    CHECK(n.enabled());
    CHECK(!n.ready());
  }
}

TEST_CASE("Notifier never blocks on a full receive queue", "[systemd]") {
  lb::test::TempDir dir;
  const std::string path = dir.path() + "/notify";
  FakeManager manager(path);  // never reads until the end
  REQUIRE(manager.bound());
  EnvGuard env(kNotifyVars);
  env.set("NOTIFY_SOCKET", path);
  sd::Notifier n;
  REQUIRE(n.enabled());

  // AF_UNIX datagram queues hold only a few messages (net.unix.max_dgram_qlen,
  // 10 by default; the socket buffer also caps it): a blocking sender would
  // hang here, a non-blocking one starts failing.
  int accepted = 0;
  bool refused = false;
  auto start = lb::test::Clock::now();
  for (int i = 0; i < 100000 && !refused; ++i) {
    if (n.watchdog())
      ++accepted;
    else
      refused = true;
  }
  CHECK(refused);
  CHECK(lb::test::Clock::now() - start < seconds(5));
  REQUIRE(accepted > 0);

  int received = 0;
  while (auto m = manager.receive_now()) {
    CHECK(*m == "WATCHDOG=1");
    ++received;
  }
  CHECK(received == accepted);
  CHECK(n.ready());  // room again
}

TEST_CASE("Notifier moves its socket", "[systemd]") {
  lb::test::TempDir dir;
  const std::string path = dir.path() + "/notify";
  FakeManager manager(path);
  REQUIRE(manager.bound());
  EnvGuard env(kNotifyVars);
  env.set("NOTIFY_SOCKET", path);

  sd::Notifier a;
  REQUIRE(a.enabled());
  sd::Notifier b(std::move(a));
  CHECK(!a.enabled());  // NOLINT(bugprone-use-after-move): moved-from state is specified
  CHECK(!a.ready());
  REQUIRE(b.enabled());
  CHECK(b.ready());
  env.unset("NOTIFY_SOCKET");
  sd::Notifier c;
  CHECK(!c.enabled());
  c = std::move(b);
  CHECK(c.stopping());
  auto deadline = in(seconds(5));
  CHECK(manager.receive(deadline) == std::optional<std::string>("READY=1"));
  CHECK(manager.receive(deadline) == std::optional<std::string>("STOPPING=1"));
}

TEST_CASE("Notifier stores descriptors and names a new main process", "[systemd]") {
  lb::test::TempDir dir;
  const std::string path = dir.path() + "/notify";
  FakeManager manager(path);
  REQUIRE(manager.bound());
  EnvGuard env(kNotifyVars);
  env.set("NOTIFY_SOCKET", path);
  sd::Notifier n;
  REQUIRE(n.enabled());

  int a = loopback_socket(SOCK_STREAM);
  int b = loopback_socket(SOCK_DGRAM);
  REQUIRE(a >= 0);
  REQUIRE(b >= 0);
  CHECK(n.store_fds("web", {a, b}));
  CHECK(!n.store_fds("bad:name", {a}));  // ':' separates LISTEN_FDNAMES
  CHECK(!n.store_fds("web", {}));
  CHECK(n.remove_stored_fds("web"));
  CHECK(n.main_pid_ready());

  auto deadline = in(seconds(5));
  auto stored = manager.receive_fds(deadline);
  REQUIRE(stored);
  CHECK(stored->first == "FDSTORE=1\nFDNAME=web");
  REQUIRE(stored->second.size() == 2);
  // The manager holds the same sockets, not copies of their addresses.
  CHECK(local_address_text(stored->second[0]) == local_address_text(a));
  CHECK(local_address_text(stored->second[1]) == local_address_text(b));
  for (int fd : stored->second) ::close(fd);
  CHECK(manager.receive(deadline) == std::optional<std::string>("FDSTOREREMOVE=1\nFDNAME=web"));
  CHECK(manager.receive(deadline) ==
        std::optional<std::string>("MAINPID=" + std::to_string(::getpid()) + "\nREADY=1"));
  ::close(a);
  ::close(b);

  env.unset("NOTIFY_SOCKET");
  sd::Notifier off;
  CHECK(!off.store_fds("web", {0}));
  CHECK(!off.main_pid_ready());
}

TEST_CASE("valid_fdname follows sd_pid_notify_with_fds(3)", "[systemd]") {
  CHECK(sd::valid_fdname("web"));
  CHECK(sd::valid_fdname(std::string(255, 'a')));
  CHECK(!sd::valid_fdname(std::string(256, 'a')));
  CHECK(!sd::valid_fdname(""));
  CHECK(!sd::valid_fdname("a:b"));
  CHECK(!sd::valid_fdname("a b"));
  CHECK(!sd::valid_fdname("a\nb"));
}

TEST_CASE("reloading_message formats MONOTONIC_USEC", "[systemd]") {
  CHECK(sd::reloading_message(0) == "RELOADING=1\nMONOTONIC_USEC=0");
  CHECK(sd::reloading_message(18446744073709551615ull) == "RELOADING=1\nMONOTONIC_USEC=18446744073709551615");
  uint64_t before = monotonic_now_usec();
  uint64_t mid = sd::monotonic_usec();
  uint64_t after = monotonic_now_usec();
  CHECK(before <= mid);
  CHECK(mid <= after);
}

TEST_CASE("watchdog_interval is half of WATCHDOG_USEC when meant for this process", "[systemd]") {
  using std::chrono::microseconds;
  EnvGuard env(kNotifyVars);
  env.unset("NOTIFY_SOCKET");
  const std::string self = std::to_string(::getpid());

  auto interval = [&](std::optional<std::string> usec, std::optional<std::string> pid) {
    if (usec)
      env.set("WATCHDOG_USEC", *usec);
    else
      env.unset("WATCHDOG_USEC");
    if (pid)
      env.set("WATCHDOG_PID", *pid);
    else
      env.unset("WATCHDOG_PID");
    return sd::Notifier().watchdog_interval();
  };

  CHECK(interval("10000000", std::nullopt) == microseconds(5000000));
  CHECK(interval("10000000", self) == microseconds(5000000));
  CHECK(interval("3", self) == microseconds(1));
  CHECK(interval("1", std::nullopt) == microseconds(1));  // never a zero period
  CHECK(interval("10000000", std::to_string(::getpid() + 1)) == std::nullopt);
  CHECK(interval("10000000", "1") == std::nullopt);
  CHECK(interval("10000000", "abc") == std::nullopt);
  CHECK(interval("10000000", "") == std::nullopt);
  CHECK(interval("0", std::nullopt) == std::nullopt);
  CHECK(interval("", std::nullopt) == std::nullopt);
  CHECK(interval("10s", std::nullopt) == std::nullopt);
  CHECK(interval("-5", std::nullopt) == std::nullopt);
  CHECK(interval(" 100", std::nullopt) == std::nullopt);
  CHECK(interval("99999999999999999999999", std::nullopt) == std::nullopt);  // overflow
  CHECK(interval(std::nullopt, self) == std::nullopt);
  CHECK(interval(std::nullopt, std::nullopt) == std::nullopt);
  // Left in place: lb may re-read nothing, but other code can.
  interval("10000000", self);
  CHECK(std::getenv("WATCHDOG_USEC") != nullptr);
  CHECK(std::getenv("WATCHDOG_PID") != nullptr);
}

// --------------------------------------------------------- socket activation

TEST_CASE("inherited_sockets takes over named sockets and match prefers names", "[systemd]") {
  Report r = run_in_child([](Report& out) {
    int web = loopback_socket(SOCK_STREAM);
    int dns = loopback_socket(SOCK_DGRAM);
    int web2 = loopback_socket(SOCK_STREAM);
    if (web < 0 || dns < 0 || web2 < 0) return;
    if (!place_at_listen_fds({web, dns, web2})) return;
    out["placed"] = "1";
    out["before.cloexec3"] = cloexec(3) ? "1" : "0";
    const std::string a3 = local_address_text(3), a4 = local_address_text(4), a5 = local_address_text(5);

    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDS", "3", 1);
    ::setenv("LISTEN_FDNAMES", "web:dns:web", 1);
    std::string warnings;
    auto socks = sd::inherited_sockets(&warnings);
    out["warnings"] = warnings;
    out["env.pid"] = std::getenv("LISTEN_PID") ? "set" : "unset";
    out["env.fds"] = std::getenv("LISTEN_FDS") ? "set" : "unset";
    out["env.names"] = std::getenv("LISTEN_FDNAMES") ? "set" : "unset";
    out["count"] = std::to_string(socks.size());
    for (size_t i = 0; i < socks.size(); ++i) {
      const auto& s = socks[i];
      std::string k = "s" + std::to_string(i) + ".";
      out[k + "fd"] = std::to_string(s.fd);
      out[k + "name"] = s.name;
      out[k + "type"] = std::to_string(s.type);
      out[k + "addr_ok"] = address_text(s) == local_address_text(s.fd) ? "1" : "0";
      out[k + "cloexec"] = cloexec(s.fd) ? "1" : "0";
      out[k + "used"] = s.used ? "1" : "0";
    }
    if (socks.size() != 3) return;

    auto addr_of = [&](int i) { return reinterpret_cast<const sockaddr*>(&socks[i].addr); };
    auto fd_of = [](sd::InheritedSocket* s) { return s ? std::to_string(s->fd) : "none"; };
    sockaddr_in elsewhere = v4("127.0.0.1", 1);
    // Name + address beats name alone: bind #2 of "web" gets fd 5, not fd 3.
    out["m.web.addr5"] = fd_of(sd::match(socks, "web", SOCK_STREAM, addr_of(2), socks[2].len));
    // Name alone: the socket unit may listen on another port than lb.toml.
    out["m.web.other"] = fd_of(sd::match(socks, "web", SOCK_STREAM, sa(elsewhere), sizeof elsewhere));
    out["m.web.again"] = fd_of(sd::match(socks, "web", SOCK_STREAM, addr_of(0), socks[0].len));
    out["m.dns.stream"] = fd_of(sd::match(socks, "dns", SOCK_STREAM, addr_of(1), socks[1].len));
    out["m.dns.dgram"] = fd_of(sd::match(socks, "dns", SOCK_DGRAM, nullptr, 0));
    out["used"] = std::to_string(socks[0].used + socks[1].used + socks[2].used);

    // A worker's copy: a distinct close-on-exec fd on the same socket, usable
    // after the original's copy is closed by another worker.
    int w1 = sd::dup_for_worker(socks[0]);
    int w2 = sd::dup_for_worker(socks[0]);
    out["dup.distinct"] = (w1 >= 3 && w2 >= 3 && w1 != w2 && w1 != 3 && w2 != 3) ? "1" : "0";
    out["dup.cloexec"] = (cloexec(w1) && cloexec(w2)) ? "1" : "0";
    out["dup.addr"] = (local_address_text(w1) == a3 && local_address_text(w2) == a3) ? "1" : "0";
    ::close(w1);
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    bool connected = ::connect(c, addr_of(0), socks[0].len) == 0;
    int accepted = connected ? ::accept(w2, nullptr, nullptr) : -1;
    out["dup.accept"] = accepted >= 0 ? "1" : "0";
    out["addr.distinct"] = (a3 != a4 && a3 != a5) ? "1" : "0";
  });

  REQUIRE(r["placed"] == "1");
  CHECK(r["before.cloexec3"] == "0");
  CHECK(r["warnings"] == "");
  CHECK(r["env.pid"] == "unset");
  CHECK(r["env.fds"] == "unset");
  CHECK(r["env.names"] == "unset");
  REQUIRE(r["count"] == "3");
  CHECK(r["s0.fd"] == "3");
  CHECK(r["s1.fd"] == "4");
  CHECK(r["s2.fd"] == "5");
  CHECK(r["s0.name"] == "web");
  CHECK(r["s1.name"] == "dns");
  CHECK(r["s2.name"] == "web");
  CHECK(r["s0.type"] == std::to_string(SOCK_STREAM));
  CHECK(r["s1.type"] == std::to_string(SOCK_DGRAM));
  CHECK(r["s2.type"] == std::to_string(SOCK_STREAM));
  for (const char* k : {"s0.", "s1.", "s2."}) {
    CHECK(r[std::string(k) + "addr_ok"] == "1");
    CHECK(r[std::string(k) + "cloexec"] == "1");
    CHECK(r[std::string(k) + "used"] == "0");
  }
  CHECK(r["addr.distinct"] == "1");
  CHECK(r["m.web.addr5"] == "5");
  CHECK(r["m.web.other"] == "3");
  CHECK(r["m.web.again"] == "none");
  CHECK(r["m.dns.stream"] == "none");
  CHECK(r["m.dns.dgram"] == "4");
  CHECK(r["used"] == "3");
  CHECK(r["dup.distinct"] == "1");
  CHECK(r["dup.cloexec"] == "1");
  CHECK(r["dup.addr"] == "1");
  CHECK(r["dup.accept"] == "1");
}

TEST_CASE("inherited_sockets without LISTEN_FDNAMES match by address", "[systemd]") {
  Report r = run_in_child([](Report& out) {
    int a = loopback_socket(SOCK_STREAM);
    int b = loopback_socket(SOCK_STREAM);
    if (a < 0 || b < 0 || !place_at_listen_fds({a, b})) return;
    out["placed"] = "1";
    ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
    ::setenv("LISTEN_FDS", "2", 1);
    ::unsetenv("LISTEN_FDNAMES");
    std::string warnings;
    auto socks = sd::inherited_sockets(&warnings);
    out["warnings"] = warnings;
    out["count"] = std::to_string(socks.size());
    if (socks.size() != 2) return;
    out["names"] = socks[0].name + "," + socks[1].name;

    auto fd_of = [](sd::InheritedSocket* s) { return s ? std::to_string(s->fd) : "none"; };
    auto* second = reinterpret_cast<const sockaddr_in*>(&socks[1].addr);
    auto* first = reinterpret_cast<const sockaddr_in*>(&socks[0].addr);
    // The listener's name is irrelevant here; its bind address picks fd 4.
    out["m.second"] = fd_of(sd::match(socks, "api", SOCK_STREAM, sa(*second), sizeof *second));
    // An IPv4-mapped IPv6 bind of the same endpoint is the same endpoint.
    char ip[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &first->sin_addr, ip, sizeof ip);
    sockaddr_in6 mapped = v6(("::ffff:" + std::string(ip)).c_str(), ntohs(first->sin_port));
    out["m.mapped"] = fd_of(sd::match(socks, "web", SOCK_STREAM, sa(mapped), sizeof mapped));
    out["m.none"] = fd_of(sd::match(socks, "web", SOCK_STREAM, sa(*first), sizeof *first));
  });
  REQUIRE(r["placed"] == "1");
  CHECK(r["warnings"] == "");
  REQUIRE(r["count"] == "2");
  CHECK(r["names"] == ",");
  CHECK(r["m.second"] == "4");
  CHECK(r["m.mapped"] == "3");
  CHECK(r["m.none"] == "none");
}

TEST_CASE("inherited_sockets ignores sockets meant for another process", "[systemd]") {
  Report r = run_in_child([](Report& out) {
    int a = loopback_socket(SOCK_STREAM);
    if (a < 0 || !place_at_listen_fds({a})) return;
    out["placed"] = "1";
    ::setenv("LISTEN_PID", std::to_string(::getpid() + 1).c_str(), 1);
    ::setenv("LISTEN_FDS", "1", 1);
    ::setenv("LISTEN_FDNAMES", "web", 1);
    std::string warnings;
    auto socks = sd::inherited_sockets(&warnings);
    out["count"] = std::to_string(socks.size());
    out["warnings"] = warnings;
    out["cloexec3"] = cloexec(3) ? "1" : "0";  // not ours: untouched
    out["env"] = (std::getenv("LISTEN_PID") || std::getenv("LISTEN_FDS") || std::getenv("LISTEN_FDNAMES"))
                     ? "set"
                     : "unset";
  });
  REQUIRE(r["placed"] == "1");
  CHECK(r["count"] == "0");
  CHECK(r["warnings"].find("not this process") != std::string::npos);
  CHECK(r["cloexec3"] == "0");
  CHECK(r["env"] == "unset");
}

TEST_CASE("inherited_sockets reports malformed activation variables", "[systemd]") {
  SECTION("nothing set: nothing inherited, no warning") {
    Report r = run_in_child([](Report& out) {
      ::unsetenv("LISTEN_PID");
      ::unsetenv("LISTEN_FDS");
      ::unsetenv("LISTEN_FDNAMES");
      std::string warnings;
      out["count"] = std::to_string(sd::inherited_sockets(&warnings).size());
      out["warnings"] = warnings;
      out["null_ok"] = std::to_string(sd::inherited_sockets(nullptr).size());
    });
    CHECK(r["count"] == "0");
    CHECK(r["warnings"] == "");
    CHECK(r["null_ok"] == "0");
  }
  SECTION("LISTEN_FDS is not a number") {
    Report r = run_in_child([](Report& out) {
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
      ::setenv("LISTEN_FDS", "two", 1);
      std::string warnings;
      out["count"] = std::to_string(sd::inherited_sockets(&warnings).size());
      out["warnings"] = warnings;
      out["env"] = std::getenv("LISTEN_FDS") ? "set" : "unset";
    });
    CHECK(r["count"] == "0");
    CHECK(r["warnings"].find("LISTEN_FDS=\"two\"") != std::string::npos);
    CHECK(r["env"] == "unset");
  }
  SECTION("LISTEN_FDS without LISTEN_PID") {
    Report r = run_in_child([](Report& out) {
      ::unsetenv("LISTEN_PID");
      ::setenv("LISTEN_FDS", "1", 1);
      std::string warnings;
      out["count"] = std::to_string(sd::inherited_sockets(&warnings).size());
      out["warnings"] = warnings;
    });
    CHECK(r["count"] == "0");
    CHECK(r["warnings"].find("without LISTEN_PID") != std::string::npos);
  }
  SECTION("a name count mismatch and an fd that is not a socket") {
    Report r = run_in_child([](Report& out) {
      int s = loopback_socket(SOCK_STREAM);
      int p[2];
      if (s < 0 || ::pipe(p) != 0) return;
      ::close(p[1]);
      if (!place_at_listen_fds({s, p[0]})) return;
      out["placed"] = "1";
      ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
      ::setenv("LISTEN_FDS", "2", 1);
      ::setenv("LISTEN_FDNAMES", "web", 1);
      std::string warnings;
      auto socks = sd::inherited_sockets(&warnings);
      out["count"] = std::to_string(socks.size());
      if (!socks.empty()) out["s0"] = std::to_string(socks[0].fd) + ":" + socks[0].name;
      out["warnings"] = warnings;
    });
    REQUIRE(r["placed"] == "1");
    CHECK(r["count"] == "1");
    CHECK(r["s0"] == "3:web");
    CHECK(r["warnings"].find("1 names for LISTEN_FDS=2") != std::string::npos);
    CHECK(r["warnings"].find("inherited fd 4: not a socket") != std::string::npos);
  }
}

// match() and same_address() are pure: fake entries, no real fds.

TEST_CASE("match honours type, family, used and the MatchBy mode", "[systemd]") {
  sockaddr_in web_addr = v4("10.0.0.1", 80);
  sockaddr_in api_addr = v4("10.0.0.1", 81);
  sockaddr_un unix_addr{};
  unix_addr.sun_family = AF_UNIX;
  std::strcpy(unix_addr.sun_path, "/run/lb.sock");

  SECTION("a unix socket never serves an IP listener, even by name") {
    std::vector<sd::InheritedSocket> socks{fake(3, "web", SOCK_STREAM, unix_addr)};
    CHECK(sd::match(socks, "web", SOCK_STREAM, sa(web_addr), sizeof web_addr) == nullptr);
    CHECK(!socks[0].used);
  }
  SECTION("an empty listener name does not match unnamed sockets by name") {
    std::vector<sd::InheritedSocket> socks{fake(3, "", SOCK_STREAM, web_addr)};
    CHECK(sd::match(socks, "", SOCK_STREAM, sa(api_addr), sizeof api_addr) == nullptr);
    CHECK(sd::match(socks, "", SOCK_STREAM, sa(web_addr), sizeof web_addr) == &socks[0]);
  }
  SECTION("NameOnly and AddressOnly") {
    // fd 3 is named for "api" but sits on web's address.
    std::vector<sd::InheritedSocket> socks{fake(3, "api", SOCK_STREAM, web_addr),
                                           fake(4, "web", SOCK_STREAM, api_addr)};
    CHECK(sd::match(socks, "nope", SOCK_STREAM, sa(web_addr), sizeof web_addr, sd::MatchBy::NameOnly) ==
          nullptr);
    sockaddr_in nowhere = v4("10.0.0.1", 82);
    CHECK(sd::match(socks, "web", SOCK_STREAM, sa(nowhere), sizeof nowhere,
                    sd::MatchBy::AddressOnly) == nullptr);  // fd 4 is named web, but AddressOnly
    auto* s = sd::match(socks, "web", SOCK_STREAM, sa(web_addr), sizeof web_addr, sd::MatchBy::NameOnly);
    REQUIRE(s != nullptr);
    CHECK(s->fd == 4);
    s = sd::match(socks, "x", SOCK_STREAM, sa(web_addr), sizeof web_addr, sd::MatchBy::AddressOnly);
    REQUIRE(s != nullptr);
    CHECK(s->fd == 3);
  }
  SECTION("a used socket is not handed out twice; clearing used frees it") {
    std::vector<sd::InheritedSocket> socks{fake(3, "web", SOCK_STREAM, web_addr)};
    REQUIRE(sd::match(socks, "web", SOCK_STREAM, sa(web_addr), sizeof web_addr) == &socks[0]);
    CHECK(sd::match(socks, "web", SOCK_STREAM, sa(web_addr), sizeof web_addr) == nullptr);
    socks[0].used = false;  // the listener was removed by a reload
    CHECK(sd::match(socks, "web", SOCK_STREAM, sa(web_addr), sizeof web_addr) == &socks[0]);
  }
  SECTION("a dual-stack listener gets each family's own socket") {
    sockaddr_in any4 = v4("0.0.0.0", 80);
    sockaddr_in6 any6 = v6("::", 80);
    std::vector<sd::InheritedSocket> socks{fake(3, "web", SOCK_STREAM, any6),
                                           fake(4, "web", SOCK_STREAM, any4)};
    auto* s4 = sd::match(socks, "web", SOCK_STREAM, sa(any4), sizeof any4);
    auto* s6 = sd::match(socks, "web", SOCK_STREAM, sa(any6), sizeof any6);
    REQUIRE(s4 != nullptr);
    REQUIRE(s6 != nullptr);
    CHECK(s4->fd == 4);
    CHECK(s6->fd == 3);
  }
}

TEST_CASE("same_address compares IP endpoints", "[systemd]") {
  auto eq = [](const auto& a, const auto& b) { return sd::same_address(sa(a), sizeof a, sa(b), sizeof b); };
  CHECK(eq(v4("127.0.0.1", 80), v4("127.0.0.1", 80)));
  CHECK(!eq(v4("127.0.0.1", 80), v4("127.0.0.1", 81)));
  CHECK(!eq(v4("127.0.0.1", 80), v4("127.0.0.2", 80)));
  CHECK(eq(v6("::ffff:127.0.0.1", 80), v4("127.0.0.1", 80)));
  CHECK(eq(v4("127.0.0.1", 80), v6("::ffff:127.0.0.1", 80)));
  CHECK(!eq(v6("::ffff:127.0.0.1", 80), v4("127.0.0.1", 81)));
  CHECK(eq(v6("2001:db8::1", 443), v6("2001:db8::1", 443)));
  CHECK(!eq(v6("2001:db8::1", 443), v6("2001:db8::2", 443)));
  CHECK(!eq(v6("fe80::1", 443, 2), v6("fe80::1", 443, 3)));
  CHECK(!eq(v6("::", 80), v4("0.0.0.0", 80)));  // dual-stack [::] is not 0.0.0.0
  CHECK(!eq(v6("::1", 80), v4("127.0.0.1", 80)));
  sockaddr_in a = v4("127.0.0.1", 80);
  CHECK(!sd::same_address(sa(a), sizeof a, nullptr, 0));
  CHECK(!sd::same_address(sa(a), 4, sa(a), sizeof a));  // truncated
}
