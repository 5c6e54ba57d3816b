// End-to-end: UDP across an upgrade in place. The old program hands its
// listening sockets over (the same sockets, not new ones in a SO_REUSEPORT
// group) and keeps only the sessions that still owe a reply; from then on
// every datagram on those sockets is the new program's.
#include <signal.h>
#include <sys/socket.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/temp_dir.h"
#include "test/support/upgrade.h"

namespace lb::test {

// The old program keeps its sessions that owe a reply until the reply comes:
// it must not read the listening sockets meanwhile. It did, and dropped what
// it read from new clients (a retired listener opens no session), so new
// clients lost about half their questions for as long as an old session
// waited for its backend.
TEST_CASE("upgrade: new UDP clients are the new program's while the old one still owes a reply",
          "[e2e][upgrade][udp]") {
  TempDir dir;
  const std::string program = dir.path() + "/lb";
  REQUIRE(install_program(lb_binary(), program));
  Socket backend = udp_bind();  // answers when the test says so
  REQUIRE(backend);
  LbOptions options;
  options.binary = program;
  LbProcess lb(upgrade_config()
                   .listener("dns", "p", "protocol = \"udp\"\nudp_responses = 1\nsession_timeout = \"30s\"")
                   .pool("p")
                   .backend(fmt::format("127.0.0.1:{}", local_port(backend)))
                   .str(),
               options);
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("dns");
  REQUIRE(port != 0);

  // A question whose answer the backend holds back: the old program owes it.
  Socket held = udp_bind();
  REQUIRE(udp_send_to(held, "127.0.0.1", port, "held"));
  sockaddr_storage held_route{};
  REQUIRE(udp_receive_within(backend, in(seconds(10)), &held_route) == "held");

  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  const size_t from = lb.line_count();
  REQUIRE(::kill(lb.pid(), SIGUSR2) == 0);
  REQUIRE(await_handover(lb, 2, from, adopted));

  // New clients, one question each, answered by the backend at once. Stop
  // after a few losses: each one costs its deadline.
  int answered = 0, lost = 0;
  for (int i = 0; i < 40 && lost < 5; ++i) {
    Socket c = udp_bind();
    const std::string q = fmt::format("q{}", i);
    REQUIRE(udp_send_to(c, "127.0.0.1", port, q));
    sockaddr_storage route{};
    if (udp_receive_within(backend, in(seconds(3)), &route) != q) {
      ++lost;
      continue;
    }
    REQUIRE(udp_reply_to(backend, route, "a" + q));
    if (udp_receive_within(c, in(seconds(5))) == "a" + q)
      ++answered;
    else
      ++lost;
  }
  INFO(answered << " new clients answered, " << lost << " questions lost");
  CHECK(lost == 0);
  CHECK(answered == 40);

  // The held answer reaches its client through the old program, which then
  // leaves.
  REQUIRE(udp_reply_to(backend, held_route, "held answer"));
  CHECK(udp_receive_within(held, in(seconds(5))) == "held answer");
  CHECK(wait_gone(lb.pid(), in(seconds(30))));
}

}  // namespace lb::test
