// End-to-end: lb relays TCP streams byte-exact, with half-close in both
// directions and server-speaks-first backends, over IPv4 and IPv6.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include "test/support/backend_server.h"
#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

// One listener "web" on `bind` in front of pool "web" with one backend.
std::string single_backend_config(const std::string& backend, const std::string& bind = "127.0.0.1:0") {
  return ConfigBuilder()
      .global()
      .listener("web", "web", R"(connect_timeout = "2s")", bind)
      .pool("web")
      .backend(backend);
}

TEST_CASE("10 MB of random bytes are echoed byte-exact through lb", "[e2e][tcp]") {
  TestBackend backend(TestBackend::echo());
  REQUIRE(backend.ok());
  LbProcess lb(single_backend_config(backend.address()));
  REQUIRE(lb.wait_started());
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  Socket client = tcp_connect("127.0.0.1", port, in(seconds(5)));
  REQUIRE(client);
  const std::string payload = random_bytes(10 << 20);
  // exchange() writes and reads concurrently (poll), as an echo needs.
  ReadResult got = exchange(client, payload, payload.size(), in(seconds(60)));
  INFO("read ended: " << to_string(got.end) << " errno " << got.error);
  REQUIRE(got.data.size() == payload.size());
  CHECK(mismatch_offset(got.data, payload) == std::string::npos);
  CHECK(backend.bytes_received() == payload.size());

  // The client's FIN travels to the backend, whose close comes back as EOF.
  REQUIRE(shutdown_write(client));
  ReadResult tail = read_until_eof(client, in(seconds(5)));
  CHECK(tail.end == ReadEnd::Eof);
  CHECK(tail.data.empty());
  client.close();
  CHECK(backend.wait_active(0, in(seconds(5))));

  CHECK(lb.terminate() == 0);
}

TEST_CASE("client half-close: the backend answers after the client's EOF", "[e2e][tcp][half-close]") {
  // The backend can only answer once it has seen EOF, so this passes only if
  // lb forwards the client's FIN as a shutdown (not a close) and keeps the
  // backend-to-client direction flowing afterwards.
  TestBackend backend(TestBackend::read_until_eof_then_reply(
      [](const std::string& in) { return "got " + std::to_string(in.size()) + " bytes:" + in; }));
  REQUIRE(backend.ok());
  LbProcess lb(single_backend_config(backend.address()));
  REQUIRE(lb.wait_started());

  Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  REQUIRE(client);
  const std::string request = random_bytes(200 * 1024, 7);
  REQUIRE(write_all(client, request, in(seconds(10))) == request.size());
  REQUIRE(shutdown_write(client));

  ReadResult got = read_until_eof(client, in(seconds(10)));
  const std::string expected = "got " + std::to_string(request.size()) + " bytes:" + request;
  CHECK(got.end == ReadEnd::Eof);
  REQUIRE(got.data.size() == expected.size());
  CHECK(mismatch_offset(got.data, expected) == std::string::npos);
  CHECK(backend.wait_active(0, in(seconds(5))));
  client.close();

  CHECK(lb.terminate() == 0);
}

TEST_CASE("backend speaks first and closes: the client gets the greeting, then EOF",
          "[e2e][tcp][half-close]") {
  // The client sends nothing at all: lb must connect the backend as soon as
  // it accepts, relay what the backend says, then propagate its close.
  const std::string greeting = "220 hello from the backend\r\n";
  TestBackend backend(TestBackend::send_then_close(greeting));
  REQUIRE(backend.ok());
  LbProcess lb(single_backend_config(backend.address()));
  REQUIRE(lb.wait_started());

  for (int i = 0; i < 3; ++i) {
    Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
    REQUIRE(client);
    ReadResult got = read_until_eof(client, in(seconds(5)));
    CHECK(got.data == greeting);
    CHECK(got.end == ReadEnd::Eof);
  }
  CHECK(backend.accepted() == 3);

  CHECK(lb.terminate() == 0);
}

TEST_CASE("backend half-closes first: the client sees EOF and can still send", "[e2e][tcp][half-close]") {
  // The backend's FIN must become a shutdown towards the client, not a full
  // close: the client->backend direction keeps flowing until the client's own
  // EOF.
  const std::string greeting = "bye for now\n";
  TestBackend backend(TestBackend::send_then_half_close(greeting));
  REQUIRE(backend.ok());
  LbProcess lb(single_backend_config(backend.address()));
  REQUIRE(lb.wait_started());

  Socket client = tcp_connect("127.0.0.1", lb.listener_port("web"), in(seconds(5)));
  REQUIRE(client);
  ReadResult got = read_until_eof(client, in(seconds(5)));
  CHECK(got.data == greeting);
  REQUIRE(got.end == ReadEnd::Eof);

  const std::string data = random_bytes(512 * 1024, 11);
  REQUIRE(write_all(client, data, in(seconds(10))) == data.size());
  CHECK(backend.wait_bytes_received(data.size(), in(seconds(10))));
  CHECK(backend.bytes_received() == data.size());
  REQUIRE(shutdown_write(client));
  // The client's FIN reaches the backend, which then closes.
  CHECK(backend.wait_active(0, in(seconds(5))));
  client.close();

  CHECK(lb.terminate() == 0);
}

TEST_CASE("IPv6: a listener on [::1] relays to a backend on [::1]", "[e2e][tcp][ipv6]") {
  TestBackend backend(TestBackend::echo("::1"));
  REQUIRE(backend.ok());
  LbProcess lb(single_backend_config(backend.address(), "[::1]:0"));
  REQUIRE(lb.wait_started());
  auto addresses = lb.listener_addresses("web");
  REQUIRE(addresses.size() == 1);
  CHECK(addresses[0].rfind("[::1]:", 0) == 0);
  const uint16_t port = lb.listener_port("web");
  REQUIRE(port != 0);

  Socket client = tcp_connect("::1", port, in(seconds(5)));
  REQUIRE(client);
  const std::string payload = random_bytes(256 * 1024, 3);
  ReadResult got = exchange(client, payload, payload.size(), in(seconds(20)));
  REQUIRE(got.data.size() == payload.size());
  CHECK(mismatch_offset(got.data, payload) == std::string::npos);
  CHECK(backend.accepted() == 1);
  // Graceful stop waits for open connections (up to shutdown_timeout).
  client.close();

  CHECK(lb.terminate() == 0);
}

}  // namespace
}  // namespace lb::test
