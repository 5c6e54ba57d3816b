// libFuzzer target: the dns health probe's reply parsing (health/dns.h).
//
// The input is a datagram as it would arrive from the probed server. Checked
// besides "no crash, leak or UB" (the parser follows compression pointers, so
// loops and out-of-range offsets are the interesting cases):
//   - a parsed message has exactly QDCOUNT questions, each name within the
//     255-byte wire limit, lower case;
//   - judge_reply() agrees with parse_message(): a response carrying the
//     probe's ID that does not parse is a Fail, one that parses is judged by
//     its question and RCODE as the contract says;
//   - round trip: for every parsed question name the probe could ask,
//     build_query() echoed back as a NOERROR reply passes the judgement.
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "health/dns.h"

namespace {

#define FUZZ_CHECK(cond)                                                                            \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      std::fprintf(stderr, "fuzz_dns: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                 \
    }                                                                                               \
  } while (0)

namespace dns = lb::health::dns;

// Our own query, turned into the reply a server sends when it has no answer.
void check_echo(uint16_t id, const std::string& name, uint8_t rcode) {
  auto query = dns::build_query(id, name);
  if (!query) return;  // a name the probe config would refuse
  std::vector<uint8_t> reply = *query;
  reply[2] |= 0x80;                                       // QR
  reply[3] = static_cast<uint8_t>(0x80 | (rcode & 0xf));  // RA, RCODE
  const dns::Judgement j = dns::judge_reply(reply.data(), reply.size(), id, name);
  const bool passing = (rcode & 0xf) == dns::kRcodeNoError || (rcode & 0xf) == dns::kRcodeNxDomain;
  FUZZ_CHECK(j.verdict == (passing ? dns::Verdict::Pass : dns::Verdict::Fail));
  FUZZ_CHECK(!j.reason.empty());
  // The same reply under another ID is somebody else's.
  const uint16_t other = static_cast<uint16_t>(id + 1);
  FUZZ_CHECK(dns::judge_reply(reply.data(), reply.size(), other, name).verdict == dns::Verdict::Ignore);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto msg = dns::parse_message(data, size);
  if (size < 12) FUZZ_CHECK(!msg);

  const uint16_t id = size >= 2 ? static_cast<uint16_t>(data[0] << 8 | data[1]) : 0;
  // Judge as the probe does, for the name the reply asks about (so the
  // question comparison is reached) and for a fixed one.
  std::string name = msg && !msg->questions.empty() ? msg->questions.front().name : ".";
  for (const std::string& n : {name, std::string("health.example")}) {
    const dns::Judgement j = dns::judge_reply(data, size, id, n);
    FUZZ_CHECK(!j.reason.empty());
    if (size < 12) {
      FUZZ_CHECK(j.verdict != dns::Verdict::Pass);
    } else if (!(data[2] & 0x80)) {
      FUZZ_CHECK(j.verdict == dns::Verdict::Ignore);
    } else if (!msg) {
      FUZZ_CHECK(j.verdict == dns::Verdict::Fail);
    } else if (j.verdict == dns::Verdict::Pass) {
      const uint8_t rc = msg->header.rcode;
      FUZZ_CHECK(rc == dns::kRcodeNoError || rc == dns::kRcodeNxDomain);
      FUZZ_CHECK(msg->header.qdcount <= 1);
    }
  }
  if (!msg) return 0;

  FUZZ_CHECK(msg->questions.size() == msg->header.qdcount);
  FUZZ_CHECK(msg->header.opcode <= 15 && msg->header.rcode <= 15);
  for (const auto& q : msg->questions) {
    FUZZ_CHECK(q.name.size() <= 253);
    for (char c : q.name) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'));
    check_echo(id, q.name, msg->header.rcode);
  }
  (void)dns::rcode_name(msg->header.rcode);
  return 0;
}
