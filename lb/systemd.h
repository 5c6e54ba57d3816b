// systemd integration: readiness notifications (sd_notify(3)), the
// watchdog interval, the file descriptor store (FDSTORE=1, sd_pid_notify_with_fds)
// and socket activation (sd_listen_fds_with_names(3)), through libsystemd.
//
// One exception: plain state messages (READY, RELOADING, WATCHDOG, ...) are
// written with our own non-blocking sendto(2). libsystemd 252 (Debian
// bookworm) sends them on a blocking socket, so a service manager that does
// not read its queue would stall lb's main loop (admin API, watchdog timer)
// inside sd_notify(); measured: sd_notify() hangs once ~10 datagrams are
// queued. Messages that carry descriptors or a MAINPID (rare: start, reload,
// upgrade) go through libsystemd, which owns SCM_RIGHTS/SCM_CREDENTIALS.
//
// Everything here is inert when systemd did not start the process: without
// NOTIFY_SOCKET the Notifier is disabled and every send is a cheap no-op;
// without LISTEN_FDS inherited_sockets() returns an empty list.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lb::app::systemd {

// Sends state strings ("READY=1", ...) to the service manager.
//
// Thread rules: the environment is read once, in the constructor (call it on
// the main thread before starting other threads: getenv is not safe against a
// concurrent setenv). Afterwards the object is immutable and send() may be
// called from any thread at once: each message is one datagram, written with
// a single non-blocking sendto(2) on a socket the Notifier owns.
//
// Ownership: owns one AF_UNIX datagram socket (close-on-exec), closed by the
// destructor. Movable, not copyable.
//
// NOTIFY_SOCKET is deliberately left in the environment: lb spawns no
// children that could misuse it, and systemd's own convention is to keep it
// unless a program explicitly hands notification duty to nobody else.
class Notifier {
 public:
  // Reads NOTIFY_SOCKET ("/path" or "@abstract"), WATCHDOG_USEC and
  // WATCHDOG_PID. A missing NOTIFY_SOCKET disables the Notifier silently; a
  // malformed one disables it and explains why in error().
  Notifier();
  ~Notifier();
  Notifier(Notifier&& other) noexcept;
  Notifier& operator=(Notifier&& other) noexcept;
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  bool enabled() const { return fd_ >= 0; }
  // Why NOTIFY_SOCKET was set but unusable; empty otherwise.
  const std::string& error() const { return error_; }

  // Sends `state` as one datagram. Never blocks (a full receive queue drops
  // the message) and never throws. Returns true if the kernel accepted the
  // datagram; false when disabled or on any error. Callers normally ignore
  // the result: a lost notification must never stop the data path.
  bool send(std::string_view state) const noexcept;

  // "READY=1": every listener is bound (at start and after a reload).
  bool ready() const noexcept { return send("READY=1"); }
  // "RELOADING=1\nMONOTONIC_USEC=<now>": a reload starts; follow with
  // ready() when it is finished (successfully or not). systemd >= 253 uses
  // the timestamp to tell this reload from an earlier one; older versions
  // ignore both fields, which is harmless.
  bool reloading() const noexcept;
  // "STOPPING=1": graceful shutdown has begun.
  bool stopping() const noexcept { return send("STOPPING=1"); }
  // "WATCHDOG=1": keep-alive; send every watchdog_interval().
  bool watchdog() const noexcept { return send("WATCHDOG=1"); }
  // "STATUS=<text>": free-form status shown by `systemctl status`. Newlines
  // in `text` become spaces (a newline would start another assignment).
  bool status(std::string_view text) const noexcept;

  // "FDSTORE=1\nFDNAME=<name>" with `fds` attached (SCM_RIGHTS), through
  // sd_pid_notify_with_fds(): systemd keeps the descriptors across a
  // restart and passes them back as LISTEN_FDS/LISTEN_FDNAMES. `name` must
  // be a valid FDNAME (printable, no ':', at most 255 bytes); callers check
  // with valid_fdname(). May block briefly (libsystemd's socket is blocking).
  bool store_fds(std::string_view name, const std::vector<int>& fds) const noexcept;
  // "FDSTOREREMOVE=1\nFDNAME=<name>": systemd closes every stored fd of
  // that name (a listener removed by a reload).
  bool remove_stored_fds(std::string_view name) const noexcept;
  // "MAINPID=<getpid()>\nREADY=1" through sd_pid_notify(): a new program
  // that took over from an upgrade tells systemd it is the service's main
  // process now (accepted with NotifyAccess=all, which the unit sets).
  bool main_pid_ready() const noexcept;

  // How often to send WATCHDOG=1: half of WATCHDOG_USEC (the margin systemd
  // recommends), when WATCHDOG_USEC is a positive number and WATCHDOG_PID is
  // unset or equals getpid() at construction. std::nullopt otherwise.
  // Independent of enabled(): the caller checks both.
  std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_interval_; }

 private:
  void close_fd() noexcept;

  int fd_ = -1;
  sockaddr_un addr_{};
  socklen_t addr_len_ = 0;
  std::string error_;
  std::optional<std::chrono::microseconds> watchdog_interval_;
};

// FDNAME rules of sd_pid_notify_with_fds(3): 1..255 printable ASCII bytes,
// no ':' (the LISTEN_FDNAMES separator).
bool valid_fdname(std::string_view name);

// Builds the reloading() message for a CLOCK_MONOTONIC reading in µs.
// Exposed for tests.
std::string reloading_message(uint64_t monotonic_usec);
// CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC refers to.
uint64_t monotonic_usec() noexcept;

// One socket passed by the service manager (socket activation).
struct InheritedSocket {
  int fd = -1;              // >= 3; owned by the vector's owner, see below
  std::string name;         // its LISTEN_FDNAMES entry; "" when none was given
  int type = 0;             // SO_TYPE: SOCK_STREAM, SOCK_DGRAM, ...
  sockaddr_storage addr{};  // getsockname()
  socklen_t len = 0;
  bool used = false;  // set by match()
};

// Takes over the sockets systemd passed: when LISTEN_PID equals getpid(),
// fds 3 .. 3+LISTEN_FDS-1, named by the colon-separated LISTEN_FDNAMES
// (optional), as sd_listen_fds_with_names() reads them. The variables are
// also checked here first, only to explain in *warnings what libsystemd
// would silently ignore, and a name count that does not match keeps the
// sockets (libsystemd refuses them all): unnamed ones match by address. Sets FD_CLOEXEC on each, reads its
// type and local address, and unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES in every case so nothing lb
// might spawn inherits them. Call once, on the main thread, before any other thread starts (it changes the
// environment).
//
// Returns the sockets in fd order. An fd that is not an open socket is
// skipped (still marked close-on-exec when it is open). Anything odd (malformed variables, a name count that
// does not match LISTEN_FDS, a skipped fd) is described in *warnings (one
// line per problem) when warnings is non-null; the caller logs it.
//
// Ownership and use with several workers: the returned fds stay owned by the
// caller's vector for the life of the process, and are never handed to a
// worker directly. lb runs one SO_REUSEPORT socket per worker; for an
// inherited socket, give each worker its own dup_for_worker() copy instead.
// All copies share the one kernel socket (one accept queue), so every worker
// accepts from it, and a worker closing its copy on reload or shutdown does
// not close the listening socket. Keeping the original also lets a listener
// that a reload removes and a later reload re-adds find its socket again
// (reset `used` to false when the listener is removed).
//
// UDP caveat: workers sharing one inherited datagram socket each receive
// whichever datagrams they happen to read, so one client's datagrams may be
// spread over workers (and therefore over per-worker sessions). lb's own
// SO_REUSEPORT sockets keep a client on one worker; systemd's copy cannot
// join that group when lb runs as another user than PID 1 (the kernel only
// groups sockets of the same owner). Consider giving an inherited UDP
// socket to a single worker.
std::vector<InheritedSocket> inherited_sockets(std::string* warnings = nullptr);

// Picks the inherited socket for one bind address of a listener and marks it
// used. Only unused IPv4/IPv6 sockets whose type equals sock_type qualify.
// Preference, best first:
//   1. name == listener_name and the address equals the bind address
//   2. name == listener_name (so the socket unit may change the port without
//      lb.toml following: the name is the contract)
//   3. the address equals the bind address
// Rule 1 matters because FileDescriptorName= names every socket of a unit:
// a listener binding ["0.0.0.0:80", "[::]:80"] fed by a unit with the same
// two ListenStream= lines gets each address's own socket. Address equality
// treats IPv4-mapped IPv6 (::ffff:a.b.c.d) as IPv4 and compares family,
// address, port (and the IPv6 scope id). Returns nullptr when nothing fits;
// the caller then binds as usual. An empty listener_name never matches by
// name.
//
// `by` restricts the rules: NameOnly applies 1-2, AddressOnly applies 3.
// With the default, a socket named for listener "api" can still be claimed
// by address for listener "web" if "web" asks first; a caller that wants
// names to win across all listeners makes two passes (every listener's binds
// with NameOnly, then the unmatched ones with AddressOnly).
enum class MatchBy { NameThenAddress, NameOnly, AddressOnly };
InheritedSocket* match(std::vector<InheritedSocket>& sockets, const std::string& listener_name, int sock_type,
                       const sockaddr* bind_addr, socklen_t bind_len, MatchBy by = MatchBy::NameThenAddress);

// A close-on-exec duplicate of s.fd for one worker (the worker owns and
// closes it). Returns the new fd, or -errno. The copy shares the open file
// description: O_NONBLOCK set by uv_tcp_open()/uv_udp_open() on one copy is
// set on all, which every user of the socket wants. A stream socket from
// systemd is already listening; listen() on a copy only changes the backlog.
int dup_for_worker(const InheritedSocket& s);

// Address equality as match() uses it. Exposed for tests.
bool same_address(const sockaddr* a, socklen_t a_len, const sockaddr* b, socklen_t b_len);

}  // namespace lb::app::systemd
