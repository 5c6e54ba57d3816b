// libFuzzer target: the PROXY protocol v1/v2 codec (core/proxy_protocol.h).
//
// The input is the first bytes a client sends on a connection that expects a
// PROXY header. Checked besides "no crash, leak or UB":
//   - the answer is bounded: Done consumes at most the input and at most
//     kMaxHeader (kV1MaxLine for v1); NeedMore never holds more than a
//     header could be; Invalid always says why;
//   - the header's promise that "once a prefix is Invalid or Done, every
//     longer buffer starting with it gives the same answer": prefixes of the
//     input go NeedMore...NeedMore, then stay Done (same length and
//     addresses) or stay Invalid. The session re-parses the growing buffer
//     after each read and depends on this;
//   - bytes after the header are never looked at: a Done header followed by
//     other payload parses the same;
//   - round trip: addresses of a Done, non-local header, written again with
//     write_v2() and write_v1(), parse back to the same addresses (the path
//     accept_proxy_protocol + proxy_protocol takes), also when the two ends
//     differ in family (v4 mapped into v6).
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/proxy_protocol.h"

namespace {

#define FUZZ_CHECK(cond)                                                                              \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      std::fprintf(stderr, "fuzz_proxy: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                   \
    }                                                                                                 \
  } while (0)

namespace proxy = lb::core::proxy;
using proxy::ParseResult;
using proxy::Status;

// Family, address and port; the rest of a sockaddr_storage is padding.
bool same_addr(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

bool same_result(const ParseResult& a, const ParseResult& b) {
  if (a.status != b.status) return false;
  // Invalid is final whatever follows; its reason may be refined by later
  // bytes ("oversized" at 107 bytes, "bad v1 line" once the byte after a CR
  // is known), which is harmless: the session stops at the first Invalid.
  if (a.status != Status::Done) return true;
  if (a.consumed != b.consumed || a.header.local != b.header.local) return false;
  if (a.header.local) return true;
  return a.header.dgram == b.header.dgram && same_addr(a.header.src, b.header.src) &&
         same_addr(a.header.dst, b.header.dst);
}

void check_one(const ParseResult& r, const uint8_t* data, size_t size) {
  switch (r.status) {
    case Status::Done:
      FUZZ_CHECK(r.consumed > 0 && r.consumed <= size);
      FUZZ_CHECK(r.consumed <= proxy::kMaxHeader);
      if (data[0] == 'P') FUZZ_CHECK(r.consumed <= proxy::kV1MaxLine);
      if (!r.header.local) {
        const int f = r.header.src.ss_family;
        FUZZ_CHECK(f == AF_INET || f == AF_INET6);
        FUZZ_CHECK(r.header.dst.ss_family == f);
      }
      break;
    case Status::NeedMore:
      FUZZ_CHECK(size < proxy::kMaxHeader);
      if (size > 0 && data[0] == 'P') FUZZ_CHECK(size < proxy::kV1MaxLine);
      break;
    case Status::Invalid:
      FUZZ_CHECK(r.error != nullptr && r.error[0] != '\0');
      break;
  }
}

// Every prefix length up to 160 (covers every v1 line and the v2 fixed part
// and address blocks), then a sparse walk to the end and the lengths around
// the header's end: exhaustive checking would make each run quadratic.
std::vector<size_t> prefix_lengths(size_t size, const ParseResult& full) {
  std::vector<size_t> out;
  for (size_t n = 0; n <= size && n <= 160; ++n) out.push_back(n);
  for (size_t n = 161; n < size; n += 97) out.push_back(n);
  if (full.status == Status::Done) {
    out.push_back(full.consumed - 1);
    out.push_back(full.consumed);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void check_prefixes(const uint8_t* data, size_t size, const ParseResult& full) {
  // Each prefix gets its own exactly sized heap block, so ASan catches a read
  // of even one byte past it (a reused vector's spare capacity would not).
  bool decided = false;  // a shorter prefix was already Done/Invalid
  ParseResult first_decided;
  size_t first_len = 0;
  for (size_t n : prefix_lengths(size, full)) {
    std::unique_ptr<uint8_t[]> buf(new uint8_t[n]);
    if (n > 0) std::memcpy(buf.get(), data, n);
    const ParseResult p = proxy::parse(buf.get(), n);
    check_one(p, buf.get(), n);
    if (decided) {
      FUZZ_CHECK(n < first_len || same_result(p, first_decided));
    } else if (p.status != Status::NeedMore) {
      decided = true;
      first_decided = p;
      first_len = n;
      FUZZ_CHECK(same_result(p, full));
    }
    if (full.status == Status::Done) {
      FUZZ_CHECK((n < full.consumed) == (p.status == Status::NeedMore));
    }
  }
  if (full.status == Status::NeedMore) FUZZ_CHECK(!decided);
}

void check_round_trip(const proxy::Header& h, const uint8_t* payload, size_t payload_len) {
  const auto* src = reinterpret_cast<const sockaddr*>(&h.src);
  const auto* dst = reinterpret_cast<const sockaddr*>(&h.dst);

  // v2, followed by arbitrary payload that must not change the answer.
  std::vector<uint8_t> out(proxy::kMaxWrittenHeader + payload_len);
  const size_t n2 = proxy::write_v2(src, dst, h.dgram, out.data(), proxy::kMaxWrittenHeader);
  FUZZ_CHECK(n2 > 0 && n2 <= proxy::kMaxWrittenHeader);
  FUZZ_CHECK(proxy::write_v2(src, dst, h.dgram, out.data() + n2, n2 - 1) == 0);
  if (payload_len > 0) std::memcpy(out.data() + n2, payload, payload_len);
  ParseResult r = proxy::parse(out.data(), n2 + payload_len);
  FUZZ_CHECK(r.status == Status::Done && r.consumed == n2 && !r.header.local);
  FUZZ_CHECK(r.header.dgram == h.dgram);
  FUZZ_CHECK(same_addr(r.header.src, h.src) && same_addr(r.header.dst, h.dst));

  // v1 (stream only on the wire, but the addresses must survive).
  char line[proxy::kMaxWrittenHeader];
  const size_t n1 = proxy::write_v1(src, dst, line, sizeof line);
  FUZZ_CHECK(n1 > 0 && n1 <= proxy::kV1MaxLine);
  FUZZ_CHECK(proxy::write_v1(src, dst, line, n1 - 1) == 0);
  r = proxy::parse(reinterpret_cast<const uint8_t*>(line), n1);
  FUZZ_CHECK(r.status == Status::Done && r.consumed == n1 && !r.header.local);
  FUZZ_CHECK(same_addr(r.header.src, h.src) && same_addr(r.header.dst, h.dst));

  // Mixed families: the IPv4 end is written as v4-mapped IPv6.
  sockaddr_in6 other{};
  other.sin6_family = AF_INET6;
  other.sin6_port = htons(443);
  other.sin6_addr.s6_addr[15] = 1;  // ::1
  const auto* other_sa = reinterpret_cast<const sockaddr*>(&other);
  const size_t nm = proxy::write_v2(src, other_sa, false, out.data(), proxy::kMaxWrittenHeader);
  r = proxy::parse(out.data(), nm);
  FUZZ_CHECK(r.status == Status::Done && !r.header.local);
  FUZZ_CHECK(r.header.src.ss_family == AF_INET6 && r.header.dst.ss_family == AF_INET6);
  const auto& got = reinterpret_cast<const sockaddr_in6&>(r.header.src);
  if (h.src.ss_family == AF_INET) {
    const auto& want = reinterpret_cast<const sockaddr_in&>(h.src);
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    FUZZ_CHECK(std::memcmp(got.sin6_addr.s6_addr, kMapped, 12) == 0);
    FUZZ_CHECK(std::memcmp(got.sin6_addr.s6_addr + 12, &want.sin_addr, 4) == 0);
    FUZZ_CHECK(got.sin6_port == want.sin_port);
  } else {
    FUZZ_CHECK(same_addr(r.header.src, h.src));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ParseResult full = proxy::parse(data, size);
  check_one(full, data, size);
  check_prefixes(data, size, full);

  if (full.status == Status::Done) {
    // Only the header's bytes decide: the same header with the rest of the
    // input cut off, or replaced, reads the same.
    std::vector<uint8_t> head(data, data + full.consumed);
    FUZZ_CHECK(same_result(proxy::parse(head.data(), head.size()), full));
    head.push_back(static_cast<uint8_t>(size < full.consumed + 1 ? 0 : ~data[full.consumed]));
    FUZZ_CHECK(same_result(proxy::parse(head.data(), head.size()), full));

    if (!full.header.local) {
      check_round_trip(full.header, data + full.consumed, size - full.consumed);
    }
  }

  // The health checker's header: always a well-formed LOCAL.
  uint8_t local[proxy::kV2FixedSize];
  FUZZ_CHECK(proxy::write_v2_local(local, sizeof local) == sizeof local);
  const ParseResult l = proxy::parse(local, sizeof local);
  FUZZ_CHECK(l.status == Status::Done && l.header.local && l.consumed == sizeof local);
  return 0;
}
