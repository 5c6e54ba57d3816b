// The kernel behaviour lb's accept path relies on: a connection accepted from
// a listening socket that has TCP_NODELAY has it too, so a worker sets it once
// on its listening socket instead of once per connection.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include <catch2/catch.hpp>

#include "core/socket.h"

namespace {

int nodelay_of(int fd) {
  int v = -1;
  socklen_t len = sizeof v;
  REQUIRE(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0);
  return v;
}

// Accepts one connection on a fresh listener; `listener_nodelay` set on it first.
int accepted_nodelay(bool listener_nodelay) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int l = lb::core::make_reuseport_socket(reinterpret_cast<sockaddr*>(&a), sizeof a, SOCK_STREAM);
  REQUIRE(l >= 0);
  int one = 1;
  if (listener_nodelay) REQUIRE(::setsockopt(l, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
  REQUIRE(::listen(l, 8) == 0);
  sockaddr_storage bound{};
  socklen_t blen = 0;
  REQUIRE(lb::core::local_address(l, &bound, &blen));
  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(c >= 0);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&bound), blen) == 0);
  int s = -1;
  for (int i = 0; i < 1000 && s < 0; ++i) {  // the listener is non-blocking
    s = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (s < 0) REQUIRE(errno == EAGAIN);
    if (s < 0) ::usleep(1000);
  }
  REQUIRE(s >= 0);
  int v = nodelay_of(s);
  ::close(s);
  ::close(c);
  ::close(l);
  return v;
}

}  // namespace

TEST_CASE("accepted sockets inherit TCP_NODELAY from the listening socket", "[socket]") {
  CHECK(accepted_nodelay(true) != 0);
  // And it is the listener's setting that does it: without it, Nagle is on.
  CHECK(accepted_nodelay(false) == 0);
}

TEST_CASE("backend keepalive follows idle_timeout within bounds", "[socket][keepalive]") {
  using namespace std::chrono;
  auto p = lb::core::backend_keepalive(minutes(10));  // the default idle_timeout
  CHECK(p.idle_s == 60);
  CHECK(p.interval_s == 20);
  CHECK(p.count == 3);
  p = lb::core::backend_keepalive(seconds(30));
  CHECK(p.idle_s == 3);
  CHECK(p.interval_s == 1);
  // A dead backend is found well before idle_timeout closes the connection.
  CHECK(p.idle_s + p.interval_s * p.count < 30 / 2);
  p = lb::core::backend_keepalive(milliseconds(200));  // never below 1 s
  CHECK(p.idle_s == 1);
  CHECK(p.interval_s == 1);
  p = lb::core::backend_keepalive(hours(24));  // never above 60 s + 3 x 20 s
  CHECK(p.idle_s == 60);
  CHECK(p.interval_s == 20);
}

TEST_CASE("set_keepalive sets SO_KEEPALIVE and the three TCP timings", "[socket][keepalive]") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(lb::core::set_keepalive(fd, {7, 2, 3}));
  auto opt = [fd](int level, int name) {
    int v = -1;
    socklen_t len = sizeof v;
    REQUIRE(::getsockopt(fd, level, name, &v, &len) == 0);
    return v;
  };
  CHECK(opt(SOL_SOCKET, SO_KEEPALIVE) == 1);
  CHECK(opt(IPPROTO_TCP, TCP_KEEPIDLE) == 7);
  CHECK(opt(IPPROTO_TCP, TCP_KEEPINTVL) == 2);
  CHECK(opt(IPPROTO_TCP, TCP_KEEPCNT) == 3);
  ::close(fd);
}
