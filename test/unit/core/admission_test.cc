// Admission: the edge rules in the documented order, the same for TCP and
// UDP, and everything counted given back.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <memory>
#include <string>

#include "conf/load.h"
#include "core/admission.h"

using lb::core::Acl;
using lb::core::Admission;
using lb::core::ListenerRuntime;
using lb::core::ListenerStats;
using lb::core::PrefixSet;
using lb::core::Refusal;
using lb::core::SharedState;

namespace {

sockaddr_storage v4(const char* ip) {
  sockaddr_storage ss{};
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  sin->sin_family = AF_INET;
  inet_pton(AF_INET, ip, &sin->sin_addr);
  return ss;
}
const sockaddr* sa(const sockaddr_storage& ss) { return reinterpret_cast<const sockaddr*>(&ss); }

// A listener that denies 10.0.0.3, with the given limits.
std::shared_ptr<ListenerRuntime> listener(uint64_t max_connections, uint64_t per_source) {
  auto rt = std::make_shared<ListenerRuntime>();
  rt->cfg.name = std::string("edge");
  rt->cfg.max_connections = max_connections;
  rt->cfg.max_connections_per_source = per_source;
  rt->cfg.deny = {*lb::conf::parse_cidr("10.0.0.3/32")};
  rt->cfg.proxy_protocol_trusted = {*lb::conf::parse_cidr("10.9.0.0/16")};
  rt->acl = Acl(rt->cfg.allow, rt->cfg.deny);
  rt->proxy_trusted = PrefixSet(rt->cfg.proxy_protocol_trusted);
  rt->stats = std::make_shared<ListenerStats>(1);
  return rt;
}

}  // namespace

TEST_CASE("admission: the global limit comes before allow/deny", "[admission]") {
  SharedState shared;
  shared.max_connections = 1;
  auto rt = listener(0, 0);
  Admission first;
  REQUIRE(first.admit(shared, *rt, sa(v4("10.0.0.1"))) == Refusal::None);
  // A denied client past the limit is a limit, as at a TCP accept.
  Admission denied;
  CHECK(denied.admit(shared, *rt, sa(v4("10.0.0.3"))) == Refusal::Limit);
  CHECK(shared.active_connections.load() == 1);
  first.release(shared, *rt->stats, sa(v4("10.0.0.1")));
  CHECK(denied.admit(shared, *rt, sa(v4("10.0.0.3"))) == Refusal::Acl);
  // A refusal gives back what the earlier steps took.
  CHECK(shared.active_connections.load() == 0);
  CHECK(rt->stats->open.load() == 0);
}

TEST_CASE("admission: the listener's limit comes before allow/deny", "[admission]") {
  SharedState shared;
  auto rt = listener(1, 0);
  Admission first;
  REQUIRE(first.admit(shared, *rt, sa(v4("10.0.0.1"))) == Refusal::None);
  Admission denied;
  CHECK(denied.admit(shared, *rt, sa(v4("10.0.0.3"))) == Refusal::Limit);
  CHECK(rt->stats->open.load() == 1);
  first.release(shared, *rt->stats, sa(v4("10.0.0.1")));
  CHECK(rt->stats->open.load() == 0);
  CHECK(shared.active_connections.load() == 0);
}

TEST_CASE("admission: allow/deny comes before the per-source limit", "[admission]") {
  SharedState shared;
  auto rt = listener(0, 1);
  Admission a, b, c;
  REQUIRE(a.admit(shared, *rt, sa(v4("10.0.0.1"))) == Refusal::None);
  CHECK(a.holds_source());
  CHECK(b.admit(shared, *rt, sa(v4("10.0.0.1"))) == Refusal::Limit);
  CHECK(rt->stats->sources.count(sa(v4("10.0.0.1"))) == 1);
  // A denied source is refused by the ACL and never counted per source.
  CHECK(c.admit(shared, *rt, sa(v4("10.0.0.3"))) == Refusal::Acl);
  CHECK(rt->stats->sources.count(sa(v4("10.0.0.3"))) == 0);
  CHECK(shared.active_connections.load() == 1);
  a.release(shared, *rt->stats, sa(v4("10.0.0.1")));
  a.release(shared, *rt->stats, sa(v4("10.0.0.1")));  // idempotent
  CHECK(rt->stats->sources.count(sa(v4("10.0.0.1"))) == 0);
  CHECK(shared.active_connections.load() == 0);
  CHECK(rt->stats->open.load() == 0);
}

TEST_CASE("admission: TCP's steps apart give the same answers, the header's source decides", "[admission]") {
  SharedState shared;
  auto rt = listener(0, 1);
  // Step 1 at accept, step 2 on the real peer, steps 3 and 4 on the address
  // the PROXY header gave.
  Admission a;
  REQUIRE(a.open(shared, *rt) == Refusal::None);
  CHECK(Admission::proxy_peer_trusted(*rt, sa(v4("10.9.1.1"))));
  CHECK_FALSE(Admission::proxy_peer_trusted(*rt, sa(v4("10.0.0.1"))));
  CHECK(a.admit_client(shared, *rt, sa(v4("10.0.0.3"))) == Refusal::Acl);
  CHECK_FALSE(a.holds_place());
  CHECK(shared.active_connections.load() == 0);
  // No list: any peer may send a header.
  rt->proxy_trusted = PrefixSet();
  CHECK(Admission::proxy_peer_trusted(*rt, sa(v4("10.0.0.1"))));
}

TEST_CASE("admission: a resumed connection is counted but never refused", "[admission]") {
  SharedState shared;
  shared.max_connections = 1;
  auto rt = listener(1, 1);
  Admission a, resumed;
  REQUIRE(a.admit(shared, *rt, sa(v4("10.0.0.1"))) == Refusal::None);
  resumed.readmit(shared, *rt, sa(v4("10.0.0.1")));
  CHECK(shared.active_connections.load() == 2);
  CHECK(rt->stats->open.load() == 2);
  CHECK(rt->stats->sources.count(sa(v4("10.0.0.1"))) == 2);
  a.release(shared, *rt->stats, sa(v4("10.0.0.1")));
  resumed.release(shared, *rt->stats, sa(v4("10.0.0.1")));
  CHECK(shared.active_connections.load() == 0);
  CHECK(rt->stats->open.load() == 0);
  CHECK(rt->stats->sources.count(sa(v4("10.0.0.1"))) == 0);
}
