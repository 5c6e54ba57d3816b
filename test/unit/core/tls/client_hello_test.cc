// The ClientHello reader (core/tls/client_hello.h): hellos of real clients
// (openssl s_client, Python's ssl, curl; captured live), every way of cutting
// them into TCP segments and TLS records, and hostile input.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/tls/client_hello.h"
#include "core/tls/ja4.h"
#include "test/support/tls_clients.h"
#include "test/support/tls_hello.h"

namespace tls = lb::tls;
namespace th = lb::test::tls_hello;
using lb::test::in;
using lb::test::seconds;

namespace {

tls::ParseResult parse(const std::string& bytes, tls::ClientHello* out = nullptr) {
  tls::ClientHello scratch;
  return tls::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), out ? out : &scratch);
}

bool complete(const std::string& bytes) { return parse(bytes).status != tls::Status::NeedMore; }

// Every proper prefix needs more; the whole is Complete with the same hello.
void require_every_prefix_needs_more(const std::string& bytes) {
  for (size_t n = 0; n < bytes.size(); ++n) {
    const auto r = parse(bytes.substr(0, n));
    INFO("prefix " << n << " of " << bytes.size() << ": " << (r.error ? r.error : ""));
    REQUIRE(r.status == tls::Status::NeedMore);
  }
}

// The handshake payload of a captured single-record hello, cut again into
// records of `fragment` bytes.
std::string reframe(const std::string& captured, size_t fragment) {
  const size_t len = static_cast<uint8_t>(captured[3]) << 8 | static_cast<uint8_t>(captured[4]);
  REQUIRE(captured.size() >= 5 + len);
  return th::records(captured.substr(5, len), fragment);
}

void require_same(const tls::ClientHello& a, const tls::ClientHello& b) {
  CHECK(a.sni == b.sni);
  CHECK(a.alpn == b.alpn);
  CHECK(a.cipher_suites == b.cipher_suites);
  CHECK(a.extensions == b.extensions);
  CHECK(a.signature_algorithms == b.signature_algorithms);
  CHECK(a.supported_versions == b.supported_versions);
  CHECK(tls::ja4(a) == tls::ja4(b));
}

struct RealClient {
  const char* name;
  std::vector<std::string> (*argv)(uint16_t, const std::string&);
};

const RealClient kClients[] = {
    {"openssl s_client", lb::test::openssl_client_argv},
    {"python ssl", lb::test::python_client_argv},
    {"curl", lb::test::curl_client_argv},
};

std::string capture(const RealClient& c, const std::string& sni) {
  return lb::test::capture_first_bytes([&](uint16_t port) { return c.argv(port, sni); }, complete,
                                       in(seconds(30)));
}

}  // namespace

TEST_CASE("real clients' hellos parse, with their server name and ALPN", "[tls][client_hello]") {
  for (const auto& client : kClients) {
    INFO(client.name);
    const std::string bytes = capture(client, "Api.Example.COM");
    tls::ClientHello h;
    const auto r = parse(bytes, &h);
    INFO("error: " << (r.error ? r.error : "none") << ", " << bytes.size() << " bytes");
    REQUIRE(r.status == tls::Status::Complete);
    CHECK(r.consumed == bytes.size());
    CHECK(h.has_sni);
    // As sent (curl lower-cases the URL's host itself); matching ignores case.
    CHECK(h.sni == (std::string(client.name) == "curl" ? "api.example.com" : "Api.Example.COM"));
    CHECK(h.alpn == std::vector<std::string>{"h2", "http/1.1"});
    CHECK(h.max_version() == 0x0304);
    CHECK(h.legacy_version == 0x0303);
    CHECK(std::string(tls::version_name(h.max_version())) == "1.3");
    CHECK(std::find(h.cipher_suites.begin(), h.cipher_suites.end(), 0x1301) != h.cipher_suites.end());
    CHECK(h.extensions.front() != 0xffff);
    CHECK(!h.signature_algorithms.empty());
    CHECK(!h.supported_groups.empty());
    // The fingerprint: TLS over TCP, 1.3, a domain, ALPN h2; and the same
    // for a second connection of the same client (JA4 ignores the random,
    // the key shares and, sorted, the order of extensions).
    const std::string fp = tls::ja4(h);
    CHECK(fp.substr(0, 4) == "t13d");
    CHECK(fp.substr(8, 2) == "h2");
    CHECK(fp.size() == 36);
    tls::ClientHello again;
    REQUIRE(parse(capture(client, "other.example.com"), &again).status == tls::Status::Complete);
    CHECK(tls::ja4(again) == fp);
  }
}

TEST_CASE("real clients' hellos without a server name", "[tls][client_hello]") {
  for (const auto& client : kClients) {
    INFO(client.name);
    tls::ClientHello h;
    REQUIRE(parse(capture(client, ""), &h).status == tls::Status::Complete);
    CHECK_FALSE(h.has_sni);
    CHECK(h.sni.empty());
    CHECK(std::find(h.extensions.begin(), h.extensions.end(), tls::kExtServerName) == h.extensions.end());
    CHECK(tls::ja4(h).substr(0, 4) == "t13i");
  }
}

TEST_CASE("a real hello in one-byte segments and in many records", "[tls][client_hello]") {
  const std::string bytes = capture(kClients[0], "frag.example.com");
  tls::ClientHello whole;
  REQUIRE(parse(bytes, &whole).status == tls::Status::Complete);

  SECTION("one byte per segment: every prefix needs more, the whole is complete") {
    require_every_prefix_needs_more(bytes);
  }
  SECTION("split over two records, and over one record per byte") {
    for (size_t fragment : {size_t{1}, size_t{2}, size_t{3}, size_t{5}, size_t{100}, bytes.size() / 2}) {
      INFO("fragment " << fragment);
      const std::string framed = reframe(bytes, fragment);
      tls::ClientHello h;
      const auto r = parse(framed, &h);
      INFO((r.error ? r.error : ""));
      REQUIRE(r.status == tls::Status::Complete);
      CHECK(r.consumed == framed.size());
      require_same(h, whole);
    }
    require_every_prefix_needs_more(reframe(bytes, 7));
  }
  SECTION("bytes after the hello are never looked at") {
    tls::ClientHello h;
    const auto r = parse(bytes + "\x17\x03\x03garbage", &h);
    REQUIRE(r.status == tls::Status::Complete);
    CHECK(r.consumed == bytes.size());
    require_same(h, whole);
  }
}

TEST_CASE("not TLS: decided on the first byte", "[tls][client_hello]") {
  for (const char* text :
       {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "SSH-2.0-OpenSSH_9.2\r\n", "PROXY TCP4 ", "\x80"}) {
    INFO(text);
    const auto r = parse(std::string(text, 1));
    CHECK(r.status == tls::Status::Invalid);
    CHECK(std::string(r.error) == "not a TLS handshake");
  }
  CHECK(parse(std::string(1, '\0')).status == tls::Status::Invalid);
  CHECK(parse("").status == tls::Status::NeedMore);
}

TEST_CASE("malformed records and messages are Invalid as early as the bytes allow", "[tls][client_hello]") {
  const std::string msg = th::message(th::typical("a.example"));
  const std::string good = th::records(msg);
  REQUIRE(parse(good).status == tls::Status::Complete);

  auto invalid_at = [](const std::string& bytes, size_t at, const std::string& why) {
    INFO("expect " << why << " at " << at);
    for (size_t n = 0; n < at; ++n) REQUIRE(parse(bytes.substr(0, n)).status == tls::Status::NeedMore);
    for (size_t n : {at, bytes.size()}) {
      const auto r = parse(bytes.substr(0, n));
      REQUIRE(r.status == tls::Status::Invalid);
      CHECK(std::string(r.error) == why);
    }
  };
  std::string b = good;
  b[1] = 2;  // record version 2.x
  invalid_at(b, 2, "bad record version");
  b = good;
  b[3] = 0x40;
  b[4] = 0x01;  // 16385 > 2^14
  invalid_at(b, 5, "bad record length");
  invalid_at(std::string("\x16\x03\x01\x00\x00", 5), 5, "bad record length");
  b = good;
  b[5] = 2;  // a ServerHello
  invalid_at(b, 6, "not a ClientHello");
  // A second record of another type (an alert) while the message is incomplete.
  b = th::records(msg.substr(0, 10)) + th::records(msg.substr(10), 16384, 21);
  invalid_at(b, 16, "record other than handshake inside ClientHello");
  // Declared length too short for any ClientHello.
  invalid_at(th::records(std::string("\x01\x00\x00\x05", 4) + std::string(5, 'x')), 9,
             "ClientHello too short");
}

TEST_CASE("oversize: more than 16 KiB before the hello ends", "[tls][client_hello]") {
  th::Hello h = th::typical("big.example");
  SECTION("declared length past the limit: Invalid on the handshake header") {
    h.extensions.push_back({0xfe99, std::string(16384, 'p')});
    const std::string bytes = th::records(th::message(h), 16000);
    const auto r = parse(bytes.substr(0, 9));
    REQUIRE(r.status == tls::Status::Invalid);
    CHECK(std::string(r.error) == "too large");
  }
  SECTION("fits in one record but not with the headers of many small ones") {
    h.extensions.push_back({0xfe99, std::string(14000, 'p')});
    const std::string msg = th::message(h);
    REQUIRE(parse(th::records(msg)).status == tls::Status::Complete);
    const std::string bytes = th::records(msg, 16);  // 5 bytes of header per 16
    const auto r = parse(bytes);
    REQUIRE(r.status == tls::Status::Invalid);
    CHECK(std::string(r.error) == "too large");
    // Decided before 16 KiB of input.
    size_t first = 0;
    while (parse(bytes.substr(0, first)).status == tls::Status::NeedMore) ++first;
    CHECK(first <= tls::kMaxClientHello);
  }
  SECTION("just under the limit is fine") {
    const size_t base = th::records(th::message(h)).size();
    h.extensions.push_back({0xfe99, std::string(tls::kMaxClientHello - base - 4, 'p')});
    const std::string bytes = th::records(th::message(h));
    REQUIRE(bytes.size() == tls::kMaxClientHello);
    CHECK(parse(bytes).status == tls::Status::Complete);
    h.extensions.back().second.push_back('p');
    CHECK(parse(th::records(th::message(h))).status == tls::Status::Invalid);
  }
}

TEST_CASE("a hello that ends inside a record still arriving is complete", "[tls][client_hello]") {
  // Found by fuzz_client_hello: the record goes on past the message, and
  // only part of it is here; consumed must stay within what was received.
  const std::string msg = th::message(th::typical("rec.example"));
  const std::string bytes = th::records(msg + std::string(100, 'x'));
  const size_t hello_end = 5 + msg.size();
  for (size_t n : {hello_end, hello_end + 1, bytes.size()}) {
    tls::ClientHello h;
    const auto r = parse(bytes.substr(0, n), &h);
    REQUIRE(r.status == tls::Status::Complete);
    CHECK(r.consumed == hello_end);
    CHECK(h.sni == "rec.example");
  }
  CHECK(parse(bytes.substr(0, hello_end - 1)).status == tls::Status::NeedMore);
}

TEST_CASE("truncated hellos need more, whatever the cut", "[tls][client_hello]") {
  require_every_prefix_needs_more(th::records(th::message(th::typical("t.example"))));
  require_every_prefix_needs_more(th::records(th::message(th::typical("t.example")), 3));
}

TEST_CASE("malformed bodies are Invalid once the message is whole", "[tls][client_hello]") {
  auto verdict = [](const th::Hello& h) {
    const auto r = parse(th::records(th::message(h)));
    return r.status == tls::Status::Invalid ? std::string(r.error) : std::string("valid");
  };
  th::Hello h = th::typical("x.example");
  CHECK(verdict(h) == "valid");

  th::Hello dup = h;
  dup.extensions.push_back({0x0000, th::sni("y.example")});
  CHECK(verdict(dup) == "duplicate extension");

  th::Hello two_names = h;
  {
    const std::string list = th::sni("a.example").substr(2) + th::sni("b.example").substr(2);
    std::string body;
    th::put16(&body, list.size());
    two_names.extensions[0].second = body + list;
  }
  CHECK(verdict(two_names) == "two host names in server_name");

  th::Hello bad_char = h;
  bad_char.extensions[0].second = th::sni(std::string("a\0b", 3));
  CHECK(verdict(bad_char) == "bad character in server name");

  th::Hello empty_alpn = h;
  empty_alpn.extensions[1].second = th::alpn({""});
  CHECK(verdict(empty_alpn) == "bad ALPN extension");

  th::Hello short_list = h;
  short_list.extensions[1].second += "x";  // list length no longer covers the body
  CHECK(verdict(short_list) == "bad ALPN extension");

  th::Hello odd_versions = h;
  odd_versions.extensions[4].second = std::string("\x03\x03\x04\x03", 4);
  CHECK(verdict(odd_versions) == "bad supported_versions extension");

  th::Hello long_session = h;
  long_session.session_id = std::string(33, 's');
  CHECK(verdict(long_session) == "bad session id");

  th::Hello odd_ciphers = h;
  odd_ciphers.ciphers.clear();
  CHECK(verdict(odd_ciphers) == "bad cipher suites");

  th::Hello old = h;
  old.extensions.clear();
  old.omit_extensions = true;
  CHECK(verdict(old) == "valid");  // TLS 1.0-1.2 hellos may have no extensions

  // Bytes after the extensions block but inside the message.
  std::string msg = th::message(h) + "zz";
  msg[3] = static_cast<char>(static_cast<uint8_t>(msg[3]) + 2);
  const auto r = parse(th::records(msg));
  REQUIRE(r.status == tls::Status::Invalid);
  CHECK(std::string(r.error) == "bad extensions length");
}

TEST_CASE("garbage: never a crash, never Complete by accident", "[tls][client_hello]") {
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (int round = 0; round < 2000; ++round) {
    std::string bytes = th::records(th::message(th::typical("g.example")));
    // Flip a few bytes after the record header.
    for (int k = 0; k < 3; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      bytes[5 + x % (bytes.size() - 5)] = static_cast<char>(x >> 32);
    }
    tls::ClientHello h;
    const auto r = parse(bytes, &h);
    if (r.status == tls::Status::Complete) {
      CHECK(r.consumed <= bytes.size());
      CHECK(h.sni.size() <= 255);
    } else if (r.status == tls::Status::Invalid) {
      CHECK(r.error != nullptr);
    }
  }
}

TEST_CASE("route patterns: exact or one label under *., case-insensitive", "[tls][sni]") {
  CHECK(tls::sni_matches("api.example.com", "api.example.com"));
  CHECK(tls::sni_matches("API.Example.Com", "api.example.COM"));
  CHECK(tls::sni_matches("api.example.com.", "api.example.com"));
  CHECK_FALSE(tls::sni_matches("api.example.com", "example.com"));
  CHECK_FALSE(tls::sni_matches("xapi.example.com", "api.example.com"));
  CHECK(tls::sni_matches("a.example.net", "*.example.net"));
  CHECK(tls::sni_matches("A.EXAMPLE.NET", "*.example.net"));
  CHECK_FALSE(tls::sni_matches("example.net", "*.example.net"));
  CHECK_FALSE(tls::sni_matches(".example.net", "*.example.net"));
  CHECK_FALSE(tls::sni_matches("a.b.example.net", "*.example.net"));
  CHECK_FALSE(tls::sni_matches("aexample.net", "*.example.net"));
  CHECK_FALSE(tls::sni_matches("", "*.example.net"));
}

TEST_CASE("version names for the access log", "[tls]") {
  CHECK(std::string(tls::version_name(0x0304)) == "1.3");
  CHECK(std::string(tls::version_name(0x0303)) == "1.2");
  CHECK(std::string(tls::version_name(0x0301)) == "1.0");
  CHECK(tls::version_name(0x7f1c) == nullptr);
}
