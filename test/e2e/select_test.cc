// End-to-end: the selectors as clients see them — consistent hashing sticky
// per client address and agreed on by independent lb processes, and least
// connections steering new connections to the emptier backend.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <set>
#include <vector>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// Connects to 127.0.0.1:port from the source address `src` (any 127/8
// address works on loopback) and returns the Name backend's greeting.
std::string served_from(const std::string& src, uint16_t port, Deadline deadline) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, src.c_str(), &a.sin_addr);
  sockaddr_in d{};
  d.sin_family = AF_INET;
  d.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
  std::string name;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::connect(fd, reinterpret_cast<sockaddr*>(&d), sizeof d) == 0) {
    char buf[256];
    while (name.find('\n') == std::string::npos) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, poll_timeout_ms(deadline)) <= 0) break;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      name.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  auto nl = name.find('\n');
  return nl == std::string::npos ? "" : name.substr(0, nl);
}

std::string hash_config(const std::string& selector, const std::vector<const TestBackend*>& backends,
                        bool reverse, unsigned workers = 2) {
  std::string out = global_section(workers) + fmt::format(R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"

[[pool]]
name = "web"
selector = "{}"
hash_key = "source_ip"
[pool.health_check]
type = "none"
)",
                                                          selector);
  std::vector<const TestBackend*> order = backends;
  if (reverse) std::reverse(order.begin(), order.end());
  // ids are the backends' names, so placement depends on them and not on ports.
  for (size_t i = 0; i < order.size(); ++i) {
    size_t idx = std::find(backends.begin(), backends.end(), order[i]) - backends.begin();
    out += fmt::format("\n[[pool.backend]]\naddress = \"{}\"\nid = \"node-{}\"\n", order[i]->address(), idx);
  }
  return out;
}

std::string source(int i) { return fmt::format("127.0.{}.{}", 1 + i / 200, 2 + i % 200); }

std::string digest_of(const LbProcess& lb) {
  auto r = http_get(lb.admin_port(), "/api/v1/status");
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  if (j.is_discarded()) return "";
  return j["pools"][0]["table_digest"].is_string() ? j["pools"][0]["table_digest"].get<std::string>() : "";
}

}  // namespace

TEST_CASE("consistent hashing: sticky per client, spread over all, agreed by two processes",
          "[e2e][select]") {
  for (std::string selector : {"maglev", "ring_hash"}) {
    DYNAMIC_SECTION(selector) {
      std::vector<std::unique_ptr<TestBackend>> owned;
      std::vector<const TestBackend*> backends;
      for (int i = 0; i < 4; ++i) {
        owned.push_back(std::make_unique<TestBackend>(TestBackend::named(fmt::format("node-{}\n", i))));
        REQUIRE(owned.back()->ok());
        backends.push_back(owned.back().get());
      }
      // Two independent lb processes; the second lists the backends in the
      // opposite order (placement must not depend on file order).
      LbProcess a(hash_config(selector, backends, false));
      LbProcess b(hash_config(selector, backends, true));
      REQUIRE(a.wait_started());
      REQUIRE(b.wait_started());
      std::string da = digest_of(a);
      CHECK(da.size() == 16);
      CHECK(da == digest_of(b));

      const int clients = 120;
      std::map<std::string, int> per_backend;
      for (int i = 0; i < clients; ++i) {
        std::string src = source(i);
        std::string first = served_from(src, a.listener_port("web"), in(seconds(5)));
        REQUIRE(!first.empty());
        // Sticky: the same client lands on the same backend again (other
        // worker, other source port) ...
        CHECK(served_from(src, a.listener_port("web"), in(seconds(5))) == first);
        // ... and the other process agrees.
        CHECK(served_from(src, b.listener_port("web"), in(seconds(5))) == first);
        per_backend[first]++;
      }
      // Spread over every backend, none starved (fair share is 30).
      CHECK(per_backend.size() == 4);
      for (auto& [name, n] : per_backend) {
        INFO(name);
        CHECK(n >= 10);
      }
      CHECK(a.terminate() == 0);
      CHECK(b.terminate() == 0);
    }
  }
}

TEST_CASE("least_connections sends new connections to the emptier backend", "[e2e][select]") {
  TestBackend busy(TestBackend::named("busy\n"));
  TestBackend idle(TestBackend::named("idle\n"));
  REQUIRE(busy.ok());
  REQUIRE(idle.ok());
  std::string cfg = ConfigBuilder()
                        .global(2, true)
                        .listener("web", "web")
                        .pool("web", "none", R"(selector = "least_connections")")
                        .backend(busy.address(), "busy")
                        .backend(idle.address(), "idle");
  LbProcess lb(cfg);
  REQUIRE(lb.wait_started());
  uint16_t port = lb.listener_port("web");
  auto lb_active = [&](const std::string& id) {
    auto m = fetch_metrics(lb.admin_port());
    return m ? m->value("lb_backend_active", {{"pool", "web"}, {"backend", id}}) : std::nullopt;
  };
  auto open = [&](std::string* name) {
    Socket s = tcp_connect("127.0.0.1", port, in(seconds(5)));
    REQUIRE(s);
    ReadResult r = read_until(s, "\n", in(seconds(5)));
    REQUIRE(r.end == ReadEnd::Complete);
    *name = r.data.substr(0, r.data.size() - 1);
    return s;
  };
  // Six long connections: least connections alternates between the two.
  std::vector<Socket> on_busy, on_idle;
  for (int i = 0; i < 6; ++i) {
    std::string name;
    Socket s = open(&name);
    (name == "busy" ? on_busy : on_idle).push_back(std::move(s));
  }
  CHECK(on_busy.size() == 3);
  CHECK(on_idle.size() == 3);
  // Close those on "idle": it becomes the emptier backend.
  on_idle.clear();
  REQUIRE(wait_until([&] { return lb_active("idle") == 0.0 && lb_active("busy") == 3.0; }, in(seconds(5))));
  // The next three all go to "idle" (0, 1, 2 active against busy's 3).
  for (int i = 0; i < 3; ++i) {
    std::string name;
    on_idle.push_back(open(&name));
    CHECK(name == "idle");
  }
  on_busy.clear();
  on_idle.clear();
  CHECK(lb.terminate() == 0);
}

}  // namespace lb::test
