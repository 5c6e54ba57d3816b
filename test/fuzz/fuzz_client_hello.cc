// libFuzzer target: the TLS ClientHello reader (core/tls/client_hello.h) and
// JA4 (core/tls/ja4.h).
//
// The input is the first bytes a client sends to a passthrough listener.
// Checked besides "no crash, leak or UB":
//   - the answer is bounded: Complete consumes at most the input, and the
//     hello ends within kMaxClientHello; NeedMore never holds 16 KiB or more;
//     Invalid always says why;
//   - the header's promise that prefixes go NeedMore...NeedMore, then stay
//     Complete (same hello) or stay Invalid: the session re-parses the
//     growing buffer after each read and relies on it;
//   - bytes after the hello's record are never looked at;
//   - a Complete hello says what routing and logging rely on: a server name
//     of 1..255 printable bytes (when present) that route matching handles,
//     non-empty ALPN names, and a JA4 of the published shape;
//   - the same handshake payload in records of another size (chosen by the
//     input) parses to the same hello when it still fits the limit.
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/tls/client_hello.h"
#include "core/tls/ja4.h"

namespace {

#define FUZZ_CHECK(cond)                                                                                     \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      std::fprintf(stderr, "fuzz_client_hello: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                          \
    }                                                                                                        \
  } while (0)

namespace tls = lb::tls;

bool same_hello(const tls::ClientHello& a, const tls::ClientHello& b) {
  return a.legacy_version == b.legacy_version && a.supported_versions == b.supported_versions &&
         a.cipher_suites == b.cipher_suites && a.compression_methods == b.compression_methods &&
         a.extensions == b.extensions && a.has_sni == b.has_sni && a.sni == b.sni &&
         a.has_alpn == b.has_alpn && a.alpn == b.alpn && a.signature_algorithms == b.signature_algorithms &&
         a.supported_groups == b.supported_groups && a.ec_point_formats == b.ec_point_formats &&
         a.session_id_len == b.session_id_len;
}

// Parses a copy in an exactly sized heap block, so ASan sees a read of even
// one byte past it.
tls::ParseResult parse_copy(const uint8_t* data, size_t n, tls::ClientHello* out) {
  std::unique_ptr<uint8_t[]> buf(new uint8_t[n]);
  if (n > 0) std::memcpy(buf.get(), data, n);
  return tls::parse(buf.get(), n, out);
}

void check_complete(const tls::ClientHello& h) {
  if (h.has_sni) {
    FUZZ_CHECK(!h.sni.empty() && h.sni.size() <= 255);
    for (unsigned char c : h.sni) FUZZ_CHECK(c > 0x20 && c < 0x7f);
    // A route naming exactly this server name catches it (a trailing dot is
    // ignored on the name only, so such names are left out).
    if (h.sni.back() != '.') FUZZ_CHECK(tls::sni_matches(h.sni, h.sni));
  } else {
    FUZZ_CHECK(h.sni.empty());
  }
  for (const auto& a : h.alpn) FUZZ_CHECK(!a.empty() && a.size() <= 255);
  FUZZ_CHECK(!h.cipher_suites.empty() && !h.compression_methods.empty());
  const std::string fp = tls::ja4(h);
  // t + version (2) + d/i + counts (4) + ALPN (2), then two 12-digit hashes.
  FUZZ_CHECK(fp.size() == 36 && fp[0] == 't' && fp[10] == '_' && fp[23] == '_');
  FUZZ_CHECK(fp[3] ==
             (std::find(h.extensions.begin(), h.extensions.end(), tls::kExtServerName) != h.extensions.end()
                  ? 'd'
                  : 'i'));
  const std::string raw = tls::ja4(h, tls::Ja4Form::Raw);
  FUZZ_CHECK(raw.compare(0, 10, fp, 0, 10) == 0);
}

// The message bytes of a Complete parse, taken from its records (the last
// one only up to the hello's end).
std::vector<uint8_t> payload(const uint8_t* data, size_t consumed) {
  std::vector<uint8_t> out;
  for (size_t p = 0; p + 5 <= consumed;) {
    const size_t n = std::min(static_cast<size_t>(data[p + 3] << 8 | data[p + 4]), consumed - p - 5);
    out.insert(out.end(), data + p + 5, data + p + 5 + n);
    p += 5 + n;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tls::ClientHello full_hello;
  const tls::ParseResult full = parse_copy(data, size, &full_hello);
  switch (full.status) {
    case tls::Status::Complete:
      FUZZ_CHECK(full.consumed >= 5 + 4 + 41 && full.consumed <= size);
      check_complete(full_hello);
      break;
    case tls::Status::NeedMore:
      FUZZ_CHECK(size < tls::kMaxClientHello);
      break;
    case tls::Status::Invalid:
      FUZZ_CHECK(full.error != nullptr && full.error[0] != '\0');
      break;
  }

  // Prefixes: every length up to 64, then a sparse walk, and around the end
  // of a Complete hello's record.
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= size && n <= 64; ++n) lengths.push_back(n);
  for (size_t n = 65; n < size; n += 61) lengths.push_back(n);
  if (full.status == tls::Status::Complete) {
    lengths.push_back(full.consumed - 1);
    lengths.push_back(full.consumed);
  }
  std::sort(lengths.begin(), lengths.end());
  bool decided = false;
  for (size_t n : lengths) {
    tls::ClientHello h;
    const tls::ParseResult p = parse_copy(data, n, &h);
    if (!decided && p.status != tls::Status::NeedMore) decided = true;
    if (decided) {
      FUZZ_CHECK(p.status == full.status);
      if (p.status == tls::Status::Complete) {
        FUZZ_CHECK(p.consumed == full.consumed && same_hello(h, full_hello));
      }
    }
    if (full.status == tls::Status::Complete) {
      FUZZ_CHECK((n < full.consumed) == (p.status == tls::Status::NeedMore));
    }
  }
  if (full.status == tls::Status::NeedMore) FUZZ_CHECK(!decided);

  if (full.status == tls::Status::Complete) {
    // Only the records up to the hello's decide; other bytes after them do not.
    std::vector<uint8_t> more(data, data + full.consumed);
    more.push_back(0x17);
    tls::ClientHello h;
    const tls::ParseResult p = tls::parse(more.data(), more.size(), &h);
    FUZZ_CHECK(p.status == tls::Status::Complete && p.consumed == full.consumed && same_hello(h, full_hello));

    // Another framing of the same message.
    const std::vector<uint8_t> msg = payload(data, full.consumed);
    const size_t fragment = 1 + (size > 0 ? data[size - 1] : 0) % 97;
    std::vector<uint8_t> framed;
    for (size_t at = 0; at < msg.size(); at += fragment) {
      const size_t n = std::min(fragment, msg.size() - at);
      const uint8_t hdr[5] = {22, 3, 1, static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)};
      framed.insert(framed.end(), hdr, hdr + 5);
      framed.insert(framed.end(), msg.begin() + static_cast<long>(at),
                    msg.begin() + static_cast<long>(at + n));
    }
    // The hello ends inside the records: only its bytes count.
    const size_t hello_len =
        4 + (static_cast<size_t>(msg[1]) << 16 | static_cast<size_t>(msg[2]) << 8 | msg[3]);
    const size_t hello_end = (hello_len + fragment - 1) / fragment * 5 + hello_len;
    const tls::ParseResult again = parse_copy(framed.data(), framed.size(), &h);
    if (hello_end <= tls::kMaxClientHello) {
      FUZZ_CHECK(again.status == tls::Status::Complete && same_hello(h, full_hello));
    } else {
      FUZZ_CHECK(again.status == tls::Status::Invalid);
    }
  }
  return 0;
}
