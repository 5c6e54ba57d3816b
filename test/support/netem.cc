#include "test/support/netem.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace lb::test {

namespace {

// An ioctl on interface `dev` through a socket of the calling thread's
// namespace; false (errno kept) on failure.
bool if_ioctl(int sock, unsigned long request, const std::string& dev, ifreq& ifr) {
  std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev.c_str());
  return ::ioctl(sock, request, &ifr) == 0;
}

bool bring_up(int sock, const std::string& dev) {
  ifreq ifr{};
  if (!if_ioctl(sock, SIOCGIFFLAGS, dev, ifr)) return false;
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  return if_ioctl(sock, SIOCSIFFLAGS, dev, ifr);
}

void set_inet(sockaddr& sa, in_addr_t addr) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = addr;
  std::memcpy(&sa, &sin, sizeof sin);
}

}  // namespace

PrivateNetns::PrivateNetns() {
  std::thread t([this] {
    if (::unshare(CLONE_NEWNET) != 0) {
      error_ = fmt::format("unshare(CLONE_NEWNET): {} (needs root)", std::strerror(errno));
      return;
    }
    fd_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      error_ = fmt::format("/proc/thread-self/ns/net: {}", std::strerror(errno));
      return;
    }
    int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || !bring_up(sock, "lo")) {
      error_ = fmt::format("lo up: {}", std::strerror(errno));
      ::close(fd_);
      fd_ = -1;
    }
    if (sock >= 0) ::close(sock);
  });
  t.join();
}

PrivateNetns::~PrivateNetns() {
  if (fd_ >= 0) ::close(fd_);
}

std::string PrivateNetns::path() const { return fmt::format("/proc/{}/fd/{}", ::getpid(), fd_); }

bool PrivateNetns::enter() const { return fd_ >= 0 && ::setns(fd_, CLONE_NEWNET) == 0; }

bool PrivateNetns::run_in(const std::function<void()>& fn) const { return ok() && run_in_netns(path(), fn); }

bool PrivateNetns::configure(const std::string& dev, const std::string& address, int prefix, int txqueuelen) {
  in_addr addr{};
  if (::inet_pton(AF_INET, address.c_str(), &addr) != 1 || prefix < 0 || prefix > 32) {
    error_ = "bad address " + address;
    return false;
  }
  std::string failed;
  const bool entered = run_in([&] {
    int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
      failed = "socket";
      return;
    }
    ifreq ifr{};
    set_inet(ifr.ifr_addr, addr.s_addr);
    if (!if_ioctl(sock, SIOCSIFADDR, dev, ifr)) failed = "SIOCSIFADDR";
    ifr = {};
    set_inet(ifr.ifr_netmask, prefix == 0 ? 0 : htonl(~0u << (32 - prefix)));
    if (failed.empty() && !if_ioctl(sock, SIOCSIFNETMASK, dev, ifr)) failed = "SIOCSIFNETMASK";
    ifr = {};
    ifr.ifr_qlen = txqueuelen;
    if (failed.empty() && !if_ioctl(sock, SIOCSIFTXQLEN, dev, ifr)) failed = "SIOCSIFTXQLEN";
    if (failed.empty() && !bring_up(sock, dev)) failed = "SIOCSIFFLAGS";
    if (!failed.empty()) failed += fmt::format(" {}: {}", dev, std::strerror(errno));
    ::close(sock);
  });
  if (!entered) failed = "cannot enter the namespace";
  if (!failed.empty()) error_ = failed;
  return failed.empty();
}

long PrivateNetns::tx_dropped(const std::string& dev) const {
  long dropped = -1;
  run_in([&] {
    // /proc/thread-self/net is the calling thread's namespace (/proc/self/net
    // would be the main thread's).
    std::ifstream f("/proc/thread-self/net/dev");
    std::string line;
    while (std::getline(f, line)) {
      const size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon);
      name.erase(0, name.find_first_not_of(' '));
      if (name != dev) continue;
      // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop ...
      std::istringstream fields(line.substr(colon + 1));
      long v[12] = {};
      for (long& x : v) fields >> x;
      if (fields) dropped = v[11];
    }
  });
  return dropped;
}

std::string lb_netem_binary() {
  if (const char* p = std::getenv("LB_NETEM"); p && *p) return p;
  return LB_NETEM_PATH;
}

NetemRelay::NetemRelay(const std::vector<Pair>& pairs, const Impairment& imp, uint64_t seed,
                       seconds max_run) {
  std::vector<std::string> argv{lb_netem_binary()};
  for (const auto& p : pairs) {
    argv.push_back("--pair");
    argv.push_back(fmt::format("{}:{},{}:{}", p.ns_a, p.tap_a, p.ns_b, p.tap_b));
  }
  for (const auto& [flag, value] :
       {std::pair{"--loss", imp.loss_pct}, std::pair{"--delay", imp.delay_ms},
        std::pair{"--jitter", imp.jitter_ms}, std::pair{"--reorder", imp.reorder_pct},
        std::pair{"--duplicate", imp.duplicate_pct}}) {
    argv.push_back(flag);
    argv.push_back(fmt::format("{}", value));
  }
  argv.insert(argv.end(), {"--seed", std::to_string(seed), "--max-seconds", std::to_string(max_run.count())});
  process_ = std::make_unique<ChildProcess>(argv);
}

bool NetemRelay::wait_ready(Deadline deadline) {
  return process_->wait_for_line(std::regex("^ready "), deadline).has_value();
}

std::optional<NetemCounters> NetemRelay::counters(Deadline deadline) {
  const size_t from = process_->line_count();
  if (!process_->signal(SIGUSR1)) return std::nullopt;
  auto line = process_->wait_for_line(std::regex("^stats "), deadline, from);
  if (!line) return std::nullopt;
  NetemCounters c;
  unsigned long long v[8] = {};
  if (std::sscanf(line->c_str(),
                  "stats in %llu out %llu lost %llu ruled %llu duplicated %llu reordered %llu overflow %llu "
                  "write_errors %llu",
                  &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8) {
    return std::nullopt;
  }
  c.in = v[0];
  c.out = v[1];
  c.lost = v[2];
  c.ruled = v[3];
  c.duplicated = v[4];
  c.reordered = v[5];
  c.overflow = v[6];
  c.write_errors = v[7];
  return c;
}

}  // namespace lb::test
