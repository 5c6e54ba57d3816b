#include "lb/systemd.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace lb::app::systemd {

namespace {

// Strict unsigned decimal: digits only, no sign, no spaces, no overflow.
template <typename T>
std::optional<T> parse_unsigned(std::string_view s) {
  if (s.empty()) return std::nullopt;
  T value{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// The variable's value copied out (getenv's pointer dies with unsetenv).
std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v);
}

std::string errno_text(int err) { return std::strerror(err); }

// Writes "RELOADING=1\nMONOTONIC_USEC=N" into buf without allocating, so
// reloading() can stay noexcept. Returns the length.
size_t format_reloading(char* buf, size_t size, uint64_t usec) {
  int n = std::snprintf(buf, size, "RELOADING=1\nMONOTONIC_USEC=%llu", static_cast<unsigned long long>(usec));
  return n < 0 ? 0 : static_cast<size_t>(n);
}

// An address reduced to what identifies an IP endpoint. IPv4-mapped IPv6
// addresses reduce to IPv4, so "::ffff:10.0.0.1" and "10.0.0.1" compare equal.
struct IpEndpoint {
  int family = AF_UNSPEC;  // AF_INET / AF_INET6, or AF_UNSPEC if not IP
  unsigned char addr[16]{};
  uint16_t port = 0;  // network byte order
  uint32_t scope = 0;
};

IpEndpoint ip_endpoint(const sockaddr* sa, socklen_t len) {
  IpEndpoint e;
  if (!sa) return e;
  if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    sockaddr_in in;
    std::memcpy(&in, sa, sizeof in);
    e.family = AF_INET;
    std::memcpy(e.addr, &in.sin_addr, 4);
    e.port = in.sin_port;
  } else if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    sockaddr_in6 in6;
    std::memcpy(&in6, sa, sizeof in6);
    e.port = in6.sin6_port;
    if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
      e.family = AF_INET;
      std::memcpy(e.addr, in6.sin6_addr.s6_addr + 12, 4);
    } else {
      e.family = AF_INET6;
      std::memcpy(e.addr, in6.sin6_addr.s6_addr, 16);
      e.scope = in6.sin6_scope_id;
    }
  }
  return e;
}

bool is_ip(const InheritedSocket& s) { return s.addr.ss_family == AF_INET || s.addr.ss_family == AF_INET6; }

}  // namespace

// ---------------------------------------------------------------- Notifier

Notifier::Notifier() {
  if (auto path = env("NOTIFY_SOCKET"); path && !path->empty()) {
    if ((*path)[0] != '/' && (*path)[0] != '@') {
      error_ = "NOTIFY_SOCKET=\"" + *path +
               "\": neither an absolute path nor an abstract socket name (@name); "
               "systemd notifications disabled";
    } else if (path->size() > sizeof(addr_.sun_path)) {
      error_ = "NOTIFY_SOCKET=\"" + *path + "\": longer than " + std::to_string(sizeof(addr_.sun_path)) +
               " bytes; systemd notifications disabled";
    } else {
      addr_.sun_family = AF_UNIX;
      std::memcpy(addr_.sun_path, path->data(), path->size());
      // Abstract namespace: a leading NUL instead of '@', and the length
      // counts exactly the name's bytes (no terminator; a trailing NUL
      // would be part of the name).
      if ((*path)[0] == '@') addr_.sun_path[0] = '\0';
      addr_len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path->size());
      fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd_ < 0) {
        error_ = "NOTIFY_SOCKET: socket(AF_UNIX, SOCK_DGRAM): " + errno_text(errno) +
                 "; systemd notifications disabled";
        fd_ = -1;
      }
    }
  }

  auto usec = env("WATCHDOG_USEC");
  auto wpid = env("WATCHDOG_PID");
  if (usec) {
    auto us = parse_unsigned<uint64_t>(*usec);
    bool ours = true;
    if (wpid) {
      // Set but unparsable counts as "not ours": pinging a watchdog meant
      // for another process would hide that process's hang.
      auto p = parse_unsigned<uint64_t>(*wpid);
      ours = p && *p == static_cast<uint64_t>(::getpid());
    }
    if (us && *us > 0 && ours) {
      uint64_t half = *us / 2;
      if (half == 0) half = 1;
      watchdog_interval_ = std::chrono::microseconds(
          static_cast<int64_t>(half > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : half));
    }
  }
}

Notifier::~Notifier() { close_fd(); }

Notifier::Notifier(Notifier&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      addr_(other.addr_),
      addr_len_(other.addr_len_),
      error_(std::move(other.error_)),
      watchdog_interval_(other.watchdog_interval_) {}

Notifier& Notifier::operator=(Notifier&& other) noexcept {
  if (this != &other) {
    close_fd();
    fd_ = std::exchange(other.fd_, -1);
    addr_ = other.addr_;
    addr_len_ = other.addr_len_;
    error_ = std::move(other.error_);
    watchdog_interval_ = other.watchdog_interval_;
  }
  return *this;
}

void Notifier::close_fd() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool Notifier::send(std::string_view state) const noexcept {
  if (fd_ < 0) return false;
  ssize_t n;
  do {
    n = ::sendto(fd_, state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                 reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(state.size());
}

bool Notifier::reloading() const noexcept {
  char buf[64];
  size_t n = format_reloading(buf, sizeof buf, monotonic_usec());
  return n > 0 && n < sizeof buf && send(std::string_view(buf, n));
}

bool Notifier::status(std::string_view text) const noexcept {
  if (fd_ < 0) return false;
  try {
    std::string msg = "STATUS=";
    msg.reserve(msg.size() + text.size());
    for (char c : text) msg.push_back(c == '\n' ? ' ' : c);
    return send(msg);
  } catch (...) {  // allocation failure: drop the status, as for a full queue
    return false;
  }
}

bool Notifier::store_fds(std::string_view name, const std::vector<int>& fds) const noexcept {
  if (fd_ < 0 || fds.empty() || !valid_fdname(name)) return false;
  char msg[300];
  int n =
      std::snprintf(msg, sizeof msg, "FDSTORE=1\nFDNAME=%.*s", static_cast<int>(name.size()), name.data());
  if (n <= 0 || static_cast<size_t>(n) >= sizeof msg) return false;
  return ::sd_pid_notify_with_fds(0, 0, msg, fds.data(), static_cast<unsigned>(fds.size())) > 0;
}

bool Notifier::remove_stored_fds(std::string_view name) const noexcept {
  if (fd_ < 0 || !valid_fdname(name)) return false;
  char msg[300];
  int n = std::snprintf(msg, sizeof msg, "FDSTOREREMOVE=1\nFDNAME=%.*s", static_cast<int>(name.size()),
                        name.data());
  if (n <= 0 || static_cast<size_t>(n) >= sizeof msg) return false;
  return ::sd_pid_notify(0, 0, msg) > 0;
}

bool Notifier::main_pid_ready() const noexcept {
  if (fd_ < 0) return false;
  char msg[64];
  int n = std::snprintf(msg, sizeof msg, "MAINPID=%ld\nREADY=1", static_cast<long>(::getpid()));
  if (n <= 0 || static_cast<size_t>(n) >= sizeof msg) return false;
  return ::sd_pid_notify(0, 0, msg) > 0;
}

bool valid_fdname(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  for (char c : name)
    if (c < 0x21 || c > 0x7e || c == ':') return false;
  return true;
}

std::string reloading_message(uint64_t usec) {
  char buf[64];
  size_t n = format_reloading(buf, sizeof buf, usec);
  return std::string(buf, n < sizeof buf ? n : 0);
}

uint64_t monotonic_usec() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// -------------------------------------------------------- socket activation

std::vector<InheritedSocket> inherited_sockets(std::string* warnings) {
  auto warn = [warnings](const std::string& msg) {
    if (!warnings) return;
    if (!warnings->empty()) warnings->push_back('\n');
    warnings->append(msg);
  };

  auto pid_s = env("LISTEN_PID");
  auto fds_s = env("LISTEN_FDS");
  auto names_s = env("LISTEN_FDNAMES");
  // Unset before anything can fail: the variables describe this process's
  // fd table at exec time and are wrong for any child.
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");

  if (!fds_s) {
    if (pid_s || names_s) warn("LISTEN_PID/LISTEN_FDNAMES set without LISTEN_FDS: ignored");
    return {};
  }
  if (!pid_s) {
    warn("LISTEN_FDS set without LISTEN_PID: inherited sockets ignored");
    return {};
  }
  auto pid = parse_unsigned<uint64_t>(*pid_s);
  if (!pid) {
    warn("LISTEN_PID=\"" + *pid_s + "\" is not a process id: inherited sockets ignored");
    return {};
  }
  if (*pid != static_cast<uint64_t>(::getpid())) {
    // Typically a wrapper between systemd and lb that did not exec directly.
    // The fds are not ours to touch.
    warn("LISTEN_PID=" + *pid_s + " is not this process (" + std::to_string(::getpid()) +
         "): inherited sockets ignored");
    return {};
  }
  auto count = parse_unsigned<unsigned>(*fds_s);
  constexpr unsigned kFirst = 3;  // SD_LISTEN_FDS_START
  if (!count || *count > static_cast<unsigned>(INT32_MAX) - kFirst) {
    warn("LISTEN_FDS=\"" + *fds_s + "\" is not a socket count: inherited sockets ignored");
    return {};
  }

  std::vector<std::string> names;
  if (names_s) {
    size_t start = 0;
    for (;;) {
      size_t colon = names_s->find(':', start);
      names.push_back(names_s->substr(start, colon == std::string::npos ? std::string::npos : colon - start));
      if (colon == std::string::npos) break;
      start = colon + 1;
    }
    if (names.size() != *count) {
      warn("LISTEN_FDNAMES has " + std::to_string(names.size()) + " names for LISTEN_FDS=" +
           std::to_string(*count) + " sockets; unnamed ones match by address only");
    }
  }

  // The variables were unset above (so nothing lb spawns sees them, whatever
  // happens next); libsystemd reads them, so put them back for its call.
  ::setenv("LISTEN_PID", pid_s->c_str(), 1);
  ::setenv("LISTEN_FDS", fds_s->c_str(), 1);
  if (names_s) ::setenv("LISTEN_FDNAMES", names_s->c_str(), 1);
  char** sd_names = nullptr;
  // unset_environment=1: libsystemd removes the three variables again. It
  // also marks every fd close-on-exec (not inherited by anything lb might
  // exec; the worker copies made by dup_for_worker() are close-on-exec too).
  int n = ::sd_listen_fds_with_names(1, &sd_names);
  if (n < 0) {
    // libsystemd refuses a name count that does not match (warned above) and
    // gives up at the first fd that is not open; lb keeps every socket it
    // can, names those it can, and says which fd it skipped (below).
    if (!(n == -EINVAL && names_s && names.size() != *count))
      warn("sd_listen_fds_with_names: " + errno_text(-n) + "; checking each fd");
    n = static_cast<int>(*count);
    for (unsigned i = 0; i < *count; ++i) {
      int fd = static_cast<int>(kFirst + i);
      int flags = ::fcntl(fd, F_GETFD);
      if (flags >= 0 && !(flags & FD_CLOEXEC)) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
  } else if (n >= 0 && sd_names) {
    // Without LISTEN_FDNAMES libsystemd names every fd "unknown": unnamed.
    names.clear();
    for (int i = 0; i < n; ++i) names.push_back(names_s && sd_names[i] ? sd_names[i] : "");
  }
  if (sd_names) {
    for (char** p = sd_names; *p; ++p) std::free(*p);
    std::free(sd_names);
  }
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");

  std::vector<InheritedSocket> out;
  out.reserve(static_cast<size_t>(n));
  for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) {
    const int fd = static_cast<int>(kFirst + i);
    const std::string where = "inherited fd " + std::to_string(fd);
    if (::fcntl(fd, F_GETFD) < 0) {
      warn(where + ": " + errno_text(errno) + "; skipped");
      continue;
    }
    InheritedSocket s;
    s.fd = fd;
    if (i < names.size()) s.name = names[i];
    socklen_t tlen = sizeof s.type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &s.type, &tlen) < 0) {
      warn(where + ": not a socket (" + errno_text(errno) + "); skipped");
      continue;
    }
    s.len = sizeof s.addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&s.addr), &s.len) < 0) {
      warn(where + ": getsockname: " + errno_text(errno) + "; skipped");
      continue;
    }
    out.push_back(std::move(s));
  }
  return out;
}

bool same_address(const sockaddr* a, socklen_t a_len, const sockaddr* b, socklen_t b_len) {
  IpEndpoint x = ip_endpoint(a, a_len);
  IpEndpoint y = ip_endpoint(b, b_len);
  if (x.family == AF_UNSPEC || y.family == AF_UNSPEC) {
    // Not IP (or truncated): byte equality is the only meaningful test.
    return a && b && a_len == b_len && std::memcmp(a, b, a_len) == 0;
  }
  return x.family == y.family && x.port == y.port && x.scope == y.scope &&
         std::memcmp(x.addr, y.addr, x.family == AF_INET ? 4 : 16) == 0;
}

InheritedSocket* match(std::vector<InheritedSocket>& sockets, const std::string& listener_name, int sock_type,
                       const sockaddr* bind_addr, socklen_t bind_len, MatchBy by) {
  auto eligible = [sock_type](const InheritedSocket& s) {
    return !s.used && s.type == sock_type && is_ip(s);
  };
  auto by_name = [&](const InheritedSocket& s) { return !listener_name.empty() && s.name == listener_name; };
  auto by_addr = [&](const InheritedSocket& s) {
    return bind_addr && same_address(reinterpret_cast<const sockaddr*>(&s.addr), s.len, bind_addr, bind_len);
  };
  auto take = [](InheritedSocket& s) {
    s.used = true;
    return &s;
  };
  if (by != MatchBy::AddressOnly) {
    for (auto& s : sockets)
      if (eligible(s) && by_name(s) && by_addr(s)) return take(s);
    for (auto& s : sockets)
      if (eligible(s) && by_name(s)) return take(s);
  }
  if (by != MatchBy::NameOnly) {
    for (auto& s : sockets)
      if (eligible(s) && by_addr(s)) return take(s);
  }
  return nullptr;
}

int dup_for_worker(const InheritedSocket& s) {
  int fd = ::fcntl(s.fd, F_DUPFD_CLOEXEC, 3);
  return fd < 0 ? -errno : fd;
}

}  // namespace lb::app::systemd
