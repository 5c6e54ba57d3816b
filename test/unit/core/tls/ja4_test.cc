// JA4 (core/tls/ja4.h) against the values published in FoxIO's JA4
// specification (technical_details/JA4.md): its worked example, raw and
// original-order forms, the hash without signature algorithms, and the ALPN
// edge cases. The example hello is rebuilt from the lists the specification
// prints, with GREASE added everywhere it may appear (it must not count).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/tls/client_hello.h"
#include "core/tls/ja4.h"
#include "test/support/tls_hello.h"

namespace tls = lb::tls;
namespace th = lb::test::tls_hello;

namespace {

tls::ClientHello parsed(const th::Hello& h) {
  const std::string bytes = th::records(th::message(h));
  tls::ClientHello out;
  const auto r = tls::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &out);
  INFO((r.error ? r.error : ""));
  REQUIRE(r.status == tls::Status::Complete);
  return out;
}

// The specification's example: ciphers and extensions in the order of its
// JA4_ro line, signature algorithms as listed.
th::Hello spec_example(bool grease, bool with_sigalgs = true) {
  th::Hello h;
  h.ciphers = {0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9,
               0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035};
  if (grease) h.ciphers.insert(h.ciphers.begin(), 0x3a3a);
  const std::vector<uint16_t> order = {0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d,
                                       0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015};
  if (grease) h.extensions.push_back({0x1a1a, ""});
  for (uint16_t type : order) {
    std::string body;
    switch (type) {
      case 0x0000:
        body = th::sni("example.com");
        break;
      case 0x0010:
        body = th::alpn({"h2", "http/1.1"});
        break;
      case 0x000d:
        if (!with_sigalgs) continue;
        body = th::u16_list({0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601});
        break;
      case 0x002b:
        body = grease ? th::versions({0x7a7a, 0x0304, 0x0303}) : th::versions({0x0304, 0x0303});
        break;
      case 0x000a:
        body = grease ? th::u16_list({0x2a2a, 0x001d, 0x0017}) : th::u16_list({0x001d, 0x0017});
        break;
      case 0x000b:
        body = std::string("\x01\x00", 2);
        break;
      default:
        break;  // opaque, empty
    }
    h.extensions.push_back({type, body});
  }
  if (grease) h.extensions.push_back({0xfafa, std::string(1, '\0')});
  return h;
}

std::string alpn_part(const std::vector<std::string>& protocols) {
  th::Hello h = th::typical("a.example");
  h.extensions[1].second = th::alpn(protocols);
  return tls::ja4(parsed(h)).substr(8, 2);
}

}  // namespace

TEST_CASE("JA4 of the specification's example", "[tls][ja4]") {
  for (bool grease : {false, true}) {
    INFO("GREASE " << grease);
    const tls::ClientHello h = parsed(spec_example(grease));
    CHECK(tls::ja4(h) == "t13d1516h2_8daaf6152771_e5627efa2ab1");
    CHECK(tls::ja4(h, tls::Ja4Form::Raw) ==
          "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
          "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
          "0403,0804,0401,0503,0805,0501,0806,0601");
    CHECK(tls::ja4(h, tls::Ja4Form::RawOriginal) ==
          "t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,0035_"
          "001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015_"
          "0403,0804,0401,0503,0805,0501,0806,0601");
    CHECK(tls::ja4(h, tls::Ja4Form::Original) == "t13d1516h2_acb858a92679_18f69afefd3d");
  }
}

TEST_CASE("JA4 without signature algorithms: no trailing underscore in the hashed text", "[tls][ja4]") {
  // The specification hashes the example's extension list alone (000d still
  // in it) to 6d807ffa2a79: a hello whose signature_algorithms list is empty,
  // which the reader refuses on the wire, so the parsed example is emptied.
  tls::ClientHello h = parsed(spec_example(false));
  h.signature_algorithms.clear();
  CHECK(tls::ja4(h) == "t13d1516h2_8daaf6152771_6d807ffa2a79");
  // Without the extension at all, one fewer extension and another list.
  const tls::ClientHello none = parsed(spec_example(false, false));
  CHECK(tls::ja4(none).substr(0, 10) == "t13d1515h2");
  CHECK(tls::ja4(none, tls::Ja4Form::Raw).find("0012,0015,0017") != std::string::npos);
  CHECK(tls::ja4(none, tls::Ja4Form::Raw).back() == '1');  // ends with ff01, no '_'
}

TEST_CASE("JA4 ALPN characters: first and last, or hex digits when not alphanumeric", "[tls][ja4]") {
  CHECK(alpn_part({"h2"}) == "h2");
  CHECK(alpn_part({"http/1.1", "h2"}) == "h1");
  CHECK(alpn_part({"x"}) == "xx");
  // The specification's list of non-alphanumeric cases.
  CHECK(alpn_part({"\xab"}) == "ab");
  CHECK(alpn_part({"\xab\xcd"}) == "ad");
  CHECK(alpn_part({"\x30\xab"}) == "3b");
  CHECK(alpn_part({"\x30\x31\xab\xcd"}) == "3d");
  CHECK(alpn_part({"\x30\xab\xcd\x31"}) == "01");
  th::Hello none = th::typical("a.example");
  none.extensions.erase(none.extensions.begin() + 1);
  CHECK(tls::ja4(parsed(none)).substr(8, 2) == "00");
}

TEST_CASE("JA4 fields: version, no SNI, counts capped at 99, empty lists", "[tls][ja4]") {
  th::Hello h = th::typical("");
  CHECK(tls::ja4(parsed(h)).substr(0, 4) == "t13i");
  // No supported_versions: the legacy version decides.
  h.extensions.pop_back();
  CHECK(tls::ja4(parsed(h)).substr(0, 3) == "t12");
  h.legacy_version = 0x0301;
  CHECK(tls::ja4(parsed(h)).substr(0, 3) == "t10");
  h.legacy_version = 0x0300;
  CHECK(tls::ja4(parsed(h)).substr(0, 3) == "ts3");
  // 120 ciphers count as 99.
  h.ciphers.clear();
  for (uint16_t c = 1; c <= 120; ++c) h.ciphers.push_back(c);
  CHECK(tls::ja4(parsed(h)).substr(4, 2) == "99");
  // Only GREASE ciphers and only SNI/ALPN extensions: zero hashes.
  th::Hello bare;
  bare.ciphers = {0x0a0a};
  bare.extensions = {{0x0000, th::sni("a.example")}, {0x0010, th::alpn({"h2"})}};
  CHECK(tls::ja4(parsed(bare)) == "t12d0002h2_000000000000_000000000000");
}
