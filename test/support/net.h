// Client-side socket helpers for end-to-end tests.
//
// Every socket made here is non-blocking and close-on-exec; the blocking-style
// helpers (connect, write_all, read_exact, read_until_eof) wait with poll(2)
// against an explicit deadline, so a stuck peer fails a test instead of hanging
// it. Nothing here throws or asserts: results say what happened and the test
// decides what is a failure.
//
// Thread rules: a Socket is owned by one thread at a time (movable, not
// copyable); the free functions are thread-safe.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "test/support/deadline.h"

namespace lb::test {

// An owned file descriptor; closed on destruction.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(other.release()) {}
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { close(); }

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void close();

 private:
  int fd_ = -1;
};

// "127.0.0.1" / "::1" (no brackets) plus a port, as a sockaddr. Returns false
// when `host` is not an IP literal.
bool make_sockaddr(const std::string& host, uint16_t port, sockaddr_storage* out, socklen_t* len);

// Connects to host:port (an IP literal). Returns an invalid Socket on failure
// and, if `error` is given, stores the errno (ETIMEDOUT when the deadline hit).
Socket tcp_connect(const std::string& host, uint16_t port, Deadline deadline, int* error = nullptr);
// The same from a chosen local address (e.g. "127.0.0.2": any 127/8 address
// is local), to appear to lb as another client; "" = the kernel's choice.
Socket tcp_connect_from(const std::string& source, const std::string& host, uint16_t port, Deadline deadline,
                        int* error = nullptr);
Socket tcp_connect_start_from(const std::string& source, const std::string& host, uint16_t port,
                              int* error = nullptr, int rcvbuf = 0, int mss = 0);

// Like tcp_connect, but for tests that open very many connections: returns as
// soon as the connect is in progress. Use wait_connected() before I/O.
// `rcvbuf` > 0 sets SO_RCVBUF and `mss` > 0 TCP_MAXSEG before the connect: a
// client that takes little before it must read, and whose MSS (an internet
// client's 1400 rather than loopback's 64 KiB) keeps the kernel from sizing
// the peer's send buffer in megabytes at once.
Socket tcp_connect_start(const std::string& host, uint16_t port, int* error = nullptr, int rcvbuf = 0,
                         int mss = 0);
// Waits until a tcp_connect_start() socket is connected; 0 or an errno.
int wait_connected(const Socket& s, Deadline deadline);

// How a read ended.
enum class ReadEnd {
  Complete,  // read_exact: got every byte asked for
  Eof,       // peer closed (orderly FIN)
  Reset,     // ECONNRESET (or another socket error, see `error`)
  Timeout,   // deadline passed first
};
const char* to_string(ReadEnd);

struct ReadResult {
  std::string data;
  ReadEnd end = ReadEnd::Timeout;
  int error = 0;  // errno for Reset
};

// Writes every byte unless the deadline passes or the socket fails; returns
// the number of bytes written (== data.size() on success).
size_t write_all(const Socket& s, std::string_view data, Deadline deadline);
// Reads exactly `n` bytes, or fewer if the stream ends or the deadline passes.
ReadResult read_exact(const Socket& s, size_t n, Deadline deadline);
// Reads until EOF / reset / deadline.
ReadResult read_until_eof(const Socket& s, Deadline deadline);
// Reads until `delimiter` has been seen (inclusive) / EOF / reset / deadline;
// `Complete` when the delimiter arrived.
ReadResult read_until(const Socket& s, std::string_view delimiter, Deadline deadline);

// Sends `out` while concurrently receiving until `expect_in` bytes arrived (or
// EOF / reset / deadline). Needed for echo tests: sending a large payload
// without reading would deadlock once every buffer on the path is full.
// If `shutdown_after_send`, the write side is shut down after the last byte.
ReadResult exchange(const Socket& s, std::string_view out, size_t expect_in, Deadline deadline,
                    bool shutdown_after_send = false);

// A new connection to 127.0.0.1:port that echoes `payload` back in full
// (each step bounded by five seconds).
bool echoes(uint16_t port, const std::string& payload);

// Whether the socket's peer has closed: waits until readable, then peeks.
// Returns Eof/Reset when closed, Timeout when the connection is still open
// (nothing arrived) at the deadline, Complete when data is waiting instead.
ReadEnd wait_closed(const Socket& s, Deadline deadline);

// shutdown(SHUT_WR): sends FIN, keeps receiving.
bool shutdown_write(const Socket& s);
// Sets SO_RCVBUF / SO_SNDBUF (the kernel doubles and clamps the value).
bool set_recv_buffer(const Socket& s, int bytes);
bool set_send_buffer(const Socket& s, int bytes);
// SO_LINGER {1, 0}: close() then sends RST instead of FIN.
bool set_linger_reset(const Socket& s);

// A port on `host` where nothing listens: binds an ephemeral port and closes
// it again. Connecting there is refused at once (loopback answers RST) —
// unless the kernel hands the port to someone else meanwhile, which on an
// otherwise quiet test machine is unlikely within a test's lifetime.
uint16_t refused_port(const std::string& host = "127.0.0.1");

// A listening socket (no SO_REUSEPORT, so nobody else can bind the port),
// bound to host:0 unless `port` is given. Used to hold a port busy.
Socket tcp_listen(const std::string& host, uint16_t port = 0, int backlog = 128);
// The local port of a bound socket (0 on error).
uint16_t local_port(const Socket& s);

// Random bytes (not cryptographic; a fixed seed gives a reproducible payload).
std::string random_bytes(size_t n, uint64_t seed = 0x6c62'6532'6521ULL);

// Offset of the first byte where `a` and `b` differ (a length difference
// counts at the shorter length); std::string::npos when equal. Tests compare
// large payloads with it so a failure prints an offset, not megabytes.
size_t mismatch_offset(std::string_view a, std::string_view b);

// A UDP socket bound to host:port (an IP literal; port 0 = any). Invalid on failure.
Socket udp_bind(const std::string& host = "127.0.0.1", uint16_t port = 0);
// One datagram to host:port; true when the whole datagram was sent.
bool udp_send_to(const Socket& s, const std::string& host, uint16_t port, std::string_view data);
// One datagram on `s` within the deadline (a deadline already past still
// takes one that is waiting): its bytes, and its sender in `from`; empty
// when none came.
std::string udp_receive_within(const Socket& s, Deadline deadline, sockaddr_storage* from = nullptr);
// One datagram back to `to` (a sender udp_receive_within gave).
bool udp_reply_to(const Socket& s, const sockaddr_storage& to, std::string_view data);

// Bytes waiting in the receive queue of the local UDP socket bound to `port`
// (any address), from /proc/net/udp and udp6; -1 when no such socket exists.
// Tells a test that another process (lb) has read what was sent to it.
long udp_receive_queue(uint16_t port);

// The kernel's timer of the established TCP socket (in this network
// namespace, IPv4 or IPv6) whose peer port is `remote_port`, from
// /proc/net/tcp{,6}: `active` 2 is the keepalive timer pending, 0 none (1
// retransmit, 4 zero-window probe); `when_ticks` how soon it fires, in
// clock ticks (sysconf(_SC_CLK_TCK)). nullopt when there is no such socket.
struct TcpTimer {
  int active = 0;
  long when_ticks = 0;
};
std::optional<TcpTimer> tcp_timer_to(uint16_t remote_port);

// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
uint64_t raise_fd_limit();

}  // namespace lb::test
