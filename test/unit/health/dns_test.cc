#include "health/dns.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

namespace lb::health::dns {
namespace {

using Bytes = std::vector<uint8_t>;

// Turns a query into the reply a server would send: QR, RA and an RCODE.
Bytes reply_to(Bytes q, uint8_t rcode) {
  q[2] |= 0x80;
  q[3] = static_cast<uint8_t>(0x80 | rcode);
  return q;
}

Judgement judge(const Bytes& b, uint16_t id, std::string_view name) {
  return judge_reply(b.data(), b.size(), id, name);
}

// Our own tiny PRNG for the mutation tests (deterministic across runs).
struct Rng {
  uint64_t s;
  uint64_t next() {
    s += 0x9e3779b97f4a7c15ULL;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
};

TEST_CASE("dns: names encode to wire labels", "[health][dns]") {
  CHECK(*encode_name(".") == Bytes{0});
  CHECK(*encode_name("") == Bytes{0});
  CHECK(*encode_name("a.bc") == Bytes{1, 'a', 2, 'b', 'c', 0});
  CHECK(*encode_name("a.bc.") == Bytes{1, 'a', 2, 'b', 'c', 0});
  CHECK_FALSE(encode_name("a..b"));
  CHECK_FALSE(encode_name(".a"));
  CHECK_FALSE(encode_name(std::string(64, 'x')));
  CHECK(encode_name(std::string(63, 'x')));
  // 4 labels of 63 = 4*64 + 1 = 257 bytes on the wire: too long.
  std::string l(63, 'x');
  CHECK_FALSE(encode_name(l + "." + l + "." + l + "." + l));
  CHECK(encode_name(l + "." + l + "." + l + "." + std::string(61, 'x')));  // 255
}

TEST_CASE("dns: a query has the ID, RD and one A/IN question", "[health][dns]") {
  auto q = build_query(0xbeef, "Example.COM");
  REQUIRE(q);
  const Bytes expected = {0xbe, 0xef, 0x01, 0x00, 0,   1, 0,   0,   0,   0, 0, 0, 7, 'E', 'x',
                          'a',  'm',  'p',  'l',  'e', 3, 'C', 'O', 'M', 0, 0, 1, 0, 1};
  CHECK(*q == expected);

  auto m = parse_message(q->data(), q->size());
  REQUIRE(m);
  CHECK(m->header.id == 0xbeef);
  CHECK_FALSE(m->header.qr);
  CHECK(m->header.rd);
  CHECK(m->header.opcode == 0);
  REQUIRE(m->questions.size() == 1);
  CHECK(m->questions[0].name == "example.com");
  CHECK(m->questions[0].qtype == kTypeA);
  CHECK(m->questions[0].qclass == kClassIn);
  CHECK_FALSE(build_query(1, "bad..name"));
}

TEST_CASE("dns: reply verdicts", "[health][dns]") {
  const Bytes q = *build_query(0x1234, "probe.test");
  CHECK(judge(reply_to(q, 0), 0x1234, "probe.test").verdict == Verdict::Pass);
  CHECK(judge(reply_to(q, 0), 0x1234, "PROBE.test.").verdict == Verdict::Pass);
  CHECK(judge(reply_to(q, 3), 0x1234, "probe.test").verdict == Verdict::Pass);
  auto servfail = judge(reply_to(q, 2), 0x1234, "probe.test");
  CHECK(servfail.verdict == Verdict::Fail);
  CHECK(servfail.reason == "dns SERVFAIL");
  CHECK(judge(reply_to(q, 5), 0x1234, "probe.test").verdict == Verdict::Fail);
  CHECK(judge(reply_to(q, 9), 0x1234, "probe.test").reason == "dns RCODE 9");
  // Not ours: other ID, not a response, another question.
  CHECK(judge(reply_to(q, 0), 0x1235, "probe.test").verdict == Verdict::Ignore);
  CHECK(judge(q, 0x1234, "probe.test").verdict == Verdict::Ignore);
  CHECK(judge(reply_to(q, 0), 0x1234, "other.test").verdict == Verdict::Ignore);
  Bytes aaaa = reply_to(q, 0);
  aaaa[aaaa.size() - 3] = 28;
  CHECK(judge(aaaa, 0x1234, "probe.test").verdict == Verdict::Ignore);
  // Our ID and QR but cut inside the question: malformed.
  Bytes cut = reply_to(q, 0);
  cut.resize(cut.size() - 2);
  CHECK(judge(cut, 0x1234, "probe.test").verdict == Verdict::Fail);
  // Too short for an ID at all.
  CHECK(judge(Bytes{0x12}, 0x1234, "probe.test").verdict == Verdict::Ignore);
  // Error replies without a question fail (they are not ignored).
  Bytes formerr = {0x12, 0x34, 0x80, 0x81, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(judge(formerr, 0x1234, "probe.test").verdict == Verdict::Fail);
  // Without a question section the RCODE alone decides.
  Bytes noq = {0x12, 0x34, 0x80, 0x80, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(judge(noq, 0x1234, "probe.test").verdict == Verdict::Pass);
  Bytes noq_nx = {0x12, 0x34, 0x80, 0x83, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK(judge(noq_nx, 0x1234, "probe.test").verdict == Verdict::Pass);
}

TEST_CASE("dns: the root query and its reply", "[health][dns]") {
  const Bytes q = *build_query(7, ".");
  CHECK(q.size() == 12 + 1 + 4);
  CHECK(judge(reply_to(q, 0), 7, ".").verdict == Verdict::Pass);
  CHECK(judge(reply_to(q, 0), 7, "").verdict == Verdict::Pass);
  CHECK(judge(reply_to(q, 0), 7, "x").verdict == Verdict::Ignore);
}

TEST_CASE("dns: compressed names are followed, pointer loops refused", "[health][dns]") {
  // Two questions; the second is "www" + pointer to the first name at 12.
  Bytes m = {0, 1, 0x81, 0x80, 0, 2, 0,   0,   0,   0,    0,  0, 3, 'f', 'o', 'o',
             0, 0, 1,    0,    1, 3, 'w', 'w', 'w', 0xc0, 12, 0, 1, 0,   1};
  auto p = parse_message(m.data(), m.size());
  REQUIRE(p);
  REQUIRE(p->questions.size() == 2);
  CHECK(p->questions[0].name == "foo");
  CHECK(p->questions[1].name == "www.foo");
  CHECK(p->questions[1].qtype == 1);

  Bytes loop = {0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1};
  CHECK_FALSE(parse_message(loop.data(), loop.size()));
  Bytes forward = {0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 200, 0, 1, 0, 1};
  CHECK_FALSE(parse_message(forward.data(), forward.size()));
  Bytes reserved = {0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 1, 0, 1};
  CHECK_FALSE(parse_message(reserved.data(), reserved.size()));
  // A claimed question count the packet cannot hold.
  Bytes many = {0, 1, 0x81, 0x80, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1};
  CHECK_FALSE(parse_message(many.data(), many.size()));
  CHECK_FALSE(parse_message(nullptr, 0));
}

TEST_CASE("dns: every truncation and random mutation parses safely", "[health][dns]") {
  const Bytes reply = reply_to(*build_query(0x4242, "a.b.example"), 0);
  for (size_t n = 0; n < reply.size(); ++n) {
    Bytes cut(reply.begin(), reply.begin() + static_cast<long>(n));
    CHECK_FALSE(parse_message(cut.data(), cut.size()));
    CHECK(judge(cut, 0x4242, "a.b.example").verdict != Verdict::Pass);
  }
  CHECK(parse_message(reply.data(), reply.size()));

  Rng rng{1};
  size_t parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    Bytes b = reply;
    int flips = 1 + static_cast<int>(rng.next() % 4);
    for (int f = 0; f < flips; ++f) b[rng.next() % b.size()] ^= static_cast<uint8_t>(1 + rng.next() % 255);
    if (rng.next() % 4 == 0) b.resize(rng.next() % (b.size() + 1));
    if (parse_message(b.data(), b.size())) ++parsed;
    judge(b, 0x4242, "a.b.example");
  }
  for (int i = 0; i < 20000; ++i) {
    Bytes b(rng.next() % 64);
    for (auto& x : b) x = static_cast<uint8_t>(rng.next());
    parse_message(b.data(), b.size());
    judge(b, static_cast<uint16_t>(rng.next()), ".");
  }
  CHECK(parsed > 0);  // the mutations did not only produce garbage
}

}  // namespace
}  // namespace lb::health::dns
