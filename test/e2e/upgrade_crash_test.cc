// End-to-end: the new program crashes right after taking over (lb_crash, a
// test build that aborts once it has reported SERVING). What happens:
//  - the old lb has stopped accepting (the new one served) and tries to
//    move its connections; the new one never acknowledges a batch, so the
//    old one keeps them: established connections carry on in the old
//    process, which exits once they close;
//  - under systemd the new program was MAINPID when it died, so Restart=
//    starts lb again; the listening sockets survive in the descriptor store
//    (emulated here by the fake notify socket, which holds what lb stored):
//    connections arriving meanwhile wait in the accept queue, and the
//    restarted lb takes the sockets back from LISTEN_FDS and serves them.
#include <signal.h>

#include <fmt/format.h>
#include <algorithm>
#include <catch2/catch.hpp>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"
#include "test/support/notify_socket.h"
#include "test/support/temp_dir.h"
#include "test/support/upgrade.h"

namespace lb::test {
namespace {

std::string config(uint16_t port, const std::string& backend) {
  return upgrade_config()
      .listener("web", "p", "", fmt::format("127.0.0.1:{}", port))
      .pool("p")
      .backend(backend)
      .str();
}

TEST_CASE("upgrade: a new program that crashes after taking over loses no connection",
          "[e2e][upgrade][crash]") {
  NotifySocket notify;
  REQUIRE(notify.ok());
  TestBackend echo(TestBackend::echo());
  REQUIRE(echo.ok());
  TempDir dir;
  const std::string program = dir.path() + "/lb";
  REQUIRE(install_program(lb_binary(), program));
  const uint16_t port = refused_port();
  LbOptions options;
  options.binary = program;
  options.env = {"NOTIFY_SOCKET=" + notify.path()};
  LbProcess lb(config(port, echo.address()), options);
  REQUIRE(notify.wait_for("READY=1", in(kStartTimeout)));
  // A copy: messages() grows (and moves) as more arrive. The descriptors
  // stay the NotifySocket's.
  const std::vector<int> stored =
      std::find_if(notify.messages().begin(), notify.messages().end(), [](const auto& m) {
        return has_line(m.text, "FDSTORE=1");
      })->fds;
  REQUIRE(stored.size() == 2);

  // An established connection, which must survive the crash.
  Socket held = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(held);
  REQUIRE(exchange(held, "before", 6, in(seconds(5))).data == "before");

  REQUIRE(install_program(lb_crash_binary(), program));
  const size_t from = lb.line_count();
  REQUIRE(lb.signal(SIGUSR2));
  std::vector<std::unique_ptr<AdoptedLb>> adopted;
  REQUIRE(await_handover(lb, 2, from, adopted));
  const pid_t crashed = adopted.back()->pid;
  // systemd was told the crashing program is the main process now.
  CHECK(notify.wait_for(fmt::format("MAINPID={}", crashed), in(seconds(10))));
  CHECK(wait_gone(crashed, in(seconds(30))));
  // The old program kept its connection instead of moving it.
  auto kept = lb.wait_for_line(std::regex(R"(^info upgrade moved connections count=0 kept=([0-9]+) )"),
                               in(seconds(30)), from);
  REQUIRE(kept);
  CHECK(std::stoi(kept->substr(kept->find("kept=") + 5)) >= 1);
  CHECK(exchange(held, "after the crash", 15, in(seconds(10))).data == "after the crash");

  // Nobody accepts now, but the stored sockets exist: a client waits in the
  // accept queue until lb is back.
  Socket queued = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(queued);
  REQUIRE(write_all(queued, "queued", in(seconds(5))) == 6);

  // Restart=: a new lb with the stored sockets, as systemd passes them.
  LbOptions again;
  again.env = {"NOTIFY_SOCKET=" + notify.path(), "LISTEN_FDS=2", "LISTEN_FDNAMES=web:web"};
  again.listen_fds = stored;
  LbProcess restarted(config(port, echo.address()), again);
  REQUIRE(restarted.wait_started());
  CHECK(read_exact(queued, 6, in(seconds(10))).data == "queued");
  CHECK(echoes(port, "after the restart"));

  // The old program leaves once its connection closes.
  held.close();
  CHECK(wait_gone(lb.pid(), in(seconds(30))));
  queued.close();
  REQUIRE(restarted.signal(SIGTERM));
  CHECK(restarted.wait_exit(in(kStopTimeout)) == 0);
}

}  // namespace
}  // namespace lb::test
