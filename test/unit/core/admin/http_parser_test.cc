#include "core/admin/http_parser.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "core/admin/http_response.h"

namespace lb::admin {
namespace {

using State = HttpRequestParser::State;

// Outcome of parsing a whole byte string, request after request, the way the
// server does: feed, take, feed the rest.
struct Outcome {
  std::vector<ParsedRequest> requests;
  State final_state = State::kIncomplete;
  int error_status = 0;
  size_t consumed = 0;
};

// Feeds `input` in pieces whose sizes come from `chunk_size(i)`.
template <typename ChunkFn>
Outcome parse_chunked(const std::string& input, const HttpLimits& limits, ChunkFn chunk_size) {
  HttpRequestParser p(limits);
  Outcome out;
  size_t pos = 0;
  size_t i = 0;
  while (pos < input.size()) {
    size_t n = std::min(chunk_size(i++), input.size() - pos);
    size_t off = 0;
    // The server's loop: after a complete request the rest of the chunk goes
    // to the next one.
    for (;;) {
      size_t used = p.feed(input.data() + pos + off, n - off);
      REQUIRE(used <= n - off);
      off += used;
      if (p.state() == State::kComplete) {
        out.requests.push_back(p.take());
        continue;
      }
      if (p.state() == State::kError) {
        out.final_state = State::kError;
        out.error_status = p.error_status();
        out.consumed = pos + off;
        return out;
      }
      // kIncomplete must mean the chunk was used up.
      REQUIRE(off == n);
      break;
    }
    pos += n;
  }
  // A request that ends exactly at the end of input was taken above.
  out.final_state = p.state();
  out.consumed = pos;
  return out;
}

Outcome parse_all(const std::string& input, const HttpLimits& limits = {}) {
  return parse_chunked(input, limits, [&](size_t) { return input.size() + 1; });
}

Outcome parse_bytewise(const std::string& input, const HttpLimits& limits = {}) {
  return parse_chunked(input, limits, [](size_t) { return size_t{1}; });
}

ParsedRequest parse_one(const std::string& input, const HttpLimits& limits = {}) {
  Outcome o = parse_all(input, limits);
  INFO(input);
  REQUIRE(o.final_state == State::kIncomplete);
  REQUIRE(o.requests.size() == 1);
  return std::move(o.requests[0]);
}

int error_of(const std::string& input, const HttpLimits& limits = {}) {
  Outcome whole = parse_all(input, limits);
  Outcome bytes = parse_bytewise(input, limits);
  INFO(input);
  CHECK(whole.final_state == State::kError);
  // Chunking must never change the verdict.
  CHECK(bytes.final_state == whole.final_state);
  CHECK(bytes.error_status == whole.error_status);
  return whole.error_status;
}

// Small deterministic PRNG (xorshift64*): reproducible fuzz runs everywhere.
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ULL;
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
};

}  // namespace

TEST_CASE("parser: simple GET", "[http_parser]") {
  ParsedRequest r = parse_one("GET /api/v1/status?x=1&y=%41 HTTP/1.1\r\nHost: lb\r\n\r\n");
  CHECK(r.request.method == "GET");
  CHECK(r.request.target == "/api/v1/status?x=1&y=%41");
  CHECK(r.request.path == "/api/v1/status");
  CHECK(r.request.query == "x=1&y=%41");  // the query stays raw
  REQUIRE(r.request.headers.size() == 1);
  CHECK(r.request.headers[0].first == "host");
  CHECK(r.request.headers[0].second == "lb");
  CHECK(r.request.body.empty());
  CHECK(r.version_minor == 1);
  CHECK(r.keep_alive);
}

TEST_CASE("parser: header names lower-cased, values trimmed, lookup", "[http_parser]") {
  ParsedRequest r = parse_one(
      "GET / HTTP/1.1\r\nX-Thing:  \t spaced value \t \r\nACCEPT:*/*\r\nEmpty:\r\n"
      "X-Thing: second\r\n\r\n");
  REQUIRE(r.request.headers.size() == 4);
  CHECK(r.request.headers[0] == std::pair<std::string, std::string>("x-thing", "spaced value"));
  CHECK(r.request.headers[1] == std::pair<std::string, std::string>("accept", "*/*"));
  CHECK(r.request.headers[2] == std::pair<std::string, std::string>("empty", ""));
  REQUIRE(r.request.header("x-thing") != nullptr);
  CHECK(*r.request.header("x-thing") == "spaced value");  // first occurrence
  CHECK(*r.request.header("empty") == "");
  CHECK(r.request.header("missing") == nullptr);
  CHECK(r.request.path == "/");
  CHECK(r.request.query.empty());
}

TEST_CASE("parser: percent-decoded path", "[http_parser]") {
  ParsedRequest r = parse_one("GET /api/v1/pools/web/backends/10.0.0.1%3A80%2Fx%20y+z? HTTP/1.1\r\n\r\n");
  CHECK(r.request.path == "/api/v1/pools/web/backends/10.0.0.1:80/x y+z");
  CHECK(r.request.query.empty());
  CHECK(r.request.target == "/api/v1/pools/web/backends/10.0.0.1%3A80%2Fx%20y+z?");

  std::string out;
  CHECK(percent_decode("%e2%82%AC", &out));
  CHECK(out == "\xe2\x82\xac");
  CHECK_FALSE(percent_decode("%", &out));
  CHECK_FALSE(percent_decode("%4", &out));
  CHECK_FALSE(percent_decode("a%g1", &out));
  CHECK_FALSE(percent_decode("%00", &out));
  CHECK(percent_decode("", &out));
  CHECK(out.empty());
}

TEST_CASE("parser: absolute-form and OPTIONS *", "[http_parser]") {
  ParsedRequest a = parse_one("GET http://lb.example:9900/metrics?a=b HTTP/1.1\r\n\r\n");
  CHECK(a.request.path == "/metrics");
  CHECK(a.request.query == "a=b");
  ParsedRequest b = parse_one("GET HTTPS://lb.example HTTP/1.1\r\n\r\n");
  CHECK(b.request.path == "/");
  ParsedRequest c = parse_one("OPTIONS * HTTP/1.1\r\n\r\n");
  CHECK(c.request.path == "*");
}

TEST_CASE("parser: POST body by Content-Length", "[http_parser]") {
  std::string body = "{\"state\":\"drain\"}";
  std::string req =
      "POST /api/v1/pools/web/backends/a HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nContent-Type: application/json\r\n\r\n" + body;
  ParsedRequest r = parse_one(req);
  CHECK(r.request.method == "POST");
  CHECK(r.request.body == body);
  CHECK(*r.request.header("content-length") == std::to_string(body.size()));

  // Repeated identical Content-Length is accepted.
  ParsedRequest d = parse_one("POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok");
  CHECK(d.request.body == "ok");
  // Explicit zero.
  CHECK(parse_one("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").request.body.empty());
}

TEST_CASE("parser: bare LF line endings and leading empty lines", "[http_parser]") {
  ParsedRequest r = parse_one("\r\n\nGET /x HTTP/1.0\nA: 1\nB: 2\r\n\n");
  CHECK(r.request.path == "/x");
  CHECK(r.request.headers.size() == 2);
  CHECK(r.version_minor == 0);
}

TEST_CASE("parser: keep-alive by version and Connection header", "[http_parser]") {
  CHECK(parse_one("GET / HTTP/1.1\r\n\r\n").keep_alive);
  CHECK_FALSE(parse_one("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
  CHECK_FALSE(parse_one("GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n").keep_alive);
  CHECK(parse_one("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n").keep_alive);
  CHECK_FALSE(parse_one("GET / HTTP/1.0\r\n\r\n").keep_alive);
  CHECK(parse_one("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
  CHECK_FALSE(parse_one("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").keep_alive);
  // Later minor versions are treated as 1.1.
  ParsedRequest r = parse_one("GET / HTTP/1.7\r\n\r\n");
  CHECK(r.version_minor == 7);
  CHECK(r.keep_alive);
}

TEST_CASE("parser: pipelined requests are split exactly", "[http_parser]") {
  std::string a = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n";
  std::string b = "POST /two HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  std::string c = "GET /three?q HTTP/1.1\r\n\r\n";
  std::string all = a + b + c;

  HttpRequestParser p({});
  size_t used = p.feed(all);
  CHECK(used == a.size());  // stops right after the first request
  REQUIRE(p.state() == State::kComplete);
  CHECK(p.feed(all.data() + used, all.size() - used) == 0);  // nothing while complete
  CHECK(p.take().request.path == "/one");
  CHECK(p.state() == State::kIncomplete);
  CHECK_FALSE(p.started());

  size_t used2 = p.feed(all.data() + used, all.size() - used);
  CHECK(used2 == b.size());
  REQUIRE(p.state() == State::kComplete);
  ParsedRequest two = p.take();
  CHECK(two.request.method == "POST");
  CHECK(two.request.body == "hello");
  CHECK(two.request.headers.size() == 1);  // nothing left over from request one

  size_t used3 = p.feed(all.data() + used + used2, all.size() - used - used2);
  CHECK(used3 == c.size());
  REQUIRE(p.state() == State::kComplete);
  CHECK(p.take().request.query == "q");
}

TEST_CASE("parser: any chunking gives the same requests", "[http_parser]") {
  std::string all =
      "GET /a%2Fb?x=1 HTTP/1.1\r\nHost: h\r\nX-Y: z\r\n\r\n"
      "POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
      "\r\nGET /c HTTP/1.0\nConnection: keep-alive\n\n"
      "PUT /d HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
  Outcome whole = parse_all(all);
  REQUIRE(whole.final_state == State::kIncomplete);
  REQUIRE(whole.requests.size() == 4);
  CHECK(whole.requests[0].request.path == "/a/b");
  CHECK(whole.requests[1].request.body == "hello world");
  CHECK(whole.requests[2].request.path == "/c");
  CHECK(whole.requests[2].keep_alive);
  CHECK(whole.requests[3].request.body == "abc");
  CHECK_FALSE(whole.requests[3].keep_alive);

  auto same = [&](const Outcome& o) {
    REQUIRE(o.requests.size() == whole.requests.size());
    for (size_t i = 0; i < o.requests.size(); ++i) {
      const HttpRequest& x = o.requests[i].request;
      const HttpRequest& y = whole.requests[i].request;
      CHECK(x.method == y.method);
      CHECK(x.target == y.target);
      CHECK(x.path == y.path);
      CHECK(x.query == y.query);
      CHECK(x.headers == y.headers);
      CHECK(x.body == y.body);
      CHECK(o.requests[i].keep_alive == whole.requests[i].keep_alive);
      CHECK(o.requests[i].version_minor == whole.requests[i].version_minor);
    }
  };
  same(parse_bytewise(all));
  Rng rng{0x9e3779b97f4a7c15ULL};
  for (int round = 0; round < 50; ++round) {
    same(parse_chunked(all, {}, [&](size_t) { return 1 + rng.below(17); }));
  }
}

TEST_CASE("parser: incomplete input stays incomplete", "[http_parser]") {
  std::string req = "POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd";
  for (size_t cut = 0; cut < req.size(); ++cut) {
    HttpRequestParser p({});
    CHECK(p.feed(req.data(), cut) == cut);
    CHECK(p.state() == State::kIncomplete);
    CHECK(p.started() == (cut > 0));
  }
}

TEST_CASE("parser: Expect 100-continue is reported once", "[http_parser]") {
  HttpRequestParser p({});
  std::string head = "POST /x HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
  CHECK(p.feed(head) == head.size());
  CHECK(p.state() == State::kIncomplete);
  CHECK(p.take_continue_request());
  CHECK_FALSE(p.take_continue_request());
  CHECK(p.feed("abc") == 3);
  REQUIRE(p.state() == State::kComplete);
  CHECK(p.take().request.body == "abc");

  // Not for HTTP/1.0, not without a body.
  HttpRequestParser q({});
  q.feed("POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  CHECK_FALSE(q.take_continue_request());
  HttpRequestParser r({});
  r.feed("POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
  CHECK(r.state() == State::kComplete);
  CHECK_FALSE(r.take_continue_request());
}

TEST_CASE("parser: malformed requests are 400", "[http_parser]") {
  const char* bad[] = {
      // request line
      "GET\r\n\r\n",
      "GET /\r\n\r\n",                   // HTTP/0.9 form
      "GET  / HTTP/1.1\r\n\r\n",         // double space
      "GET / HTTP/1.1 \r\n\r\n",         // trailing space
      " GET / HTTP/1.1\r\n\r\n",         // leading space
      "G(T / HTTP/1.1\r\n\r\n",          // non-token method
      "GET /a b HTTP/1.1\r\n\r\n",       // space in target
      "GET /\x7f HTTP/1.1\r\n\r\n",      // DEL in target
      "GET /\xc3\xa9 HTTP/1.1\r\n\r\n",  // raw UTF-8 in target
      "GET /\t HTTP/1.1\r\n\r\n",        // control in target
      "GET x HTTP/1.1\r\n\r\n",          // not origin-form
      "GET ftp://h/ HTTP/1.1\r\n\r\n",   // unknown scheme
      "GET http:///x HTTP/1.1\r\n\r\n",  // absolute-form without host
      "CONNECT h:443 HTTP/1.1\r\n\r\n",  // authority-form
      "GET * HTTP/1.1\r\n\r\n",          // asterisk-form outside OPTIONS
      "GET /#frag HTTP/1.1\r\n\r\n",     // fragment
      // version
      "GET / HTTP/2.0\r\n\r\n",
      "GET / HTTP/1.10\r\n\r\n",
      "GET / HTTP/1.\r\n\r\n",
      "GET / HTTP/1.x\r\n\r\n",
      "GET / http/1.1\r\n\r\n",
      "GET / HTTP/1\r\n\r\n",
      "GET / FOO\r\n\r\n",
      // line endings
      "GET / HTTP/1.1\r\r\n\r\n",
      "GET / HTTP/1.1\rX\n\r\n",
      "\rGET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\r\n\rX",
      // header lines
      "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
      "GET / HTTP/1.1\r\n: value\r\n\r\n",
      "GET / HTTP/1.1\r\nName : value\r\n\r\n",  // space before colon
      "GET / HTTP/1.1\r\nNa me: value\r\n\r\n",
      "GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n",  // obs-fold
      "GET / HTTP/1.1\r\n\tA: 1\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\x01\r\n\r\n",  // control char
      "GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n",
      "GET / HTTP/1.1\r\n(A): b\r\n\r\n",
      // Content-Length
      "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
      "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
      // percent-escapes
      "GET /a%2 HTTP/1.1\r\n\r\n",
      "GET /a%zz HTTP/1.1\r\n\r\n",
      "GET /a% HTTP/1.1\r\n\r\n",
      "GET /a%00b HTTP/1.1\r\n\r\n",
  };
  for (const char* input : bad) {
    CHECK(error_of(input) == 400);
  }
}

TEST_CASE("parser: NUL bytes anywhere in the head are 400", "[http_parser]") {
  std::string base = "GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
  for (size_t at = 0; at + 2 < base.size(); ++at) {
    std::string s = base;
    s.insert(at, 1, '\0');
    CHECK(error_of(s) == 400);
  }
}

TEST_CASE("parser: garbage is refused at the first impossible byte", "[http_parser]") {
  HttpRequestParser p({});
  std::string garbage = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";  // a TLS ClientHello
  CHECK(p.feed(garbage) == 1);
  CHECK(p.state() == State::kError);
  CHECK(p.error_status() == 400);
  CHECK_FALSE(p.error_detail().empty());
  CHECK(p.feed(garbage) == 0);  // an errored parser consumes nothing
}

TEST_CASE("parser: too many header lines are 400", "[http_parser]") {
  HttpLimits limits;
  limits.max_headers = 5;
  auto with_headers = [](int n) {
    std::string s = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < n; ++i) s += "H" + std::to_string(i) + ": v\r\n";
    return s + "\r\n";
  };
  CHECK(parse_one(with_headers(5), limits).request.headers.size() == 5);
  CHECK(error_of(with_headers(6), limits) == 400);
}

TEST_CASE("parser: head larger than max_header_bytes is 431", "[http_parser]") {
  HttpLimits limits;
  limits.max_header_bytes = 64;
  std::string line = "GET / HTTP/1.1\r\n";                               // 16 bytes
  std::string pad = "X: " + std::string(64 - 16 - 2 - 5, 'a') + "\r\n";  // to 62
  std::string exact = line + pad + "\r\n";
  REQUIRE(exact.size() == 64);
  CHECK(parse_one(exact, limits).request.headers.size() == 1);
  std::string over = line + "X: " + std::string(64 - 16 - 2 - 5 + 1, 'a') + "\r\n\r\n";
  CHECK(error_of(over, limits) == 431);

  // The whole head counts, the request line included, and the verdict comes
  // without waiting for the end of the line.
  HttpRequestParser p(limits);
  std::string endless = "GET /" + std::string(1000, 'a');
  CHECK(p.feed(endless) == 65);
  CHECK(p.state() == State::kError);
  CHECK(p.error_status() == 431);

  // Leading empty lines count too: an endless stream of CRLF cannot hold a
  // connection forever.
  CHECK(error_of(std::string(100, '\n'), limits) == 431);

  // The limit applies per request, not per connection.
  Outcome many = parse_all(exact + exact + exact, limits);
  CHECK(many.final_state == State::kIncomplete);
  CHECK(many.requests.size() == 3);
}

TEST_CASE("parser: body larger than max_body_bytes is 413 before any body byte", "[http_parser]") {
  HttpLimits limits;
  limits.max_body_bytes = 10;
  ParsedRequest ok = parse_one("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", limits);
  CHECK(ok.request.body == "0123456789");

  std::string head = "POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
  HttpRequestParser p(limits);
  CHECK(p.feed(head + "01234567890") == head.size());
  CHECK(p.state() == State::kError);
  CHECK(p.error_status() == 413);
  CHECK(error_of("POST / HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n", limits) == 413);
}

TEST_CASE("parser: Transfer-Encoding is 501", "[http_parser]") {
  CHECK(error_of("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == 501);
  CHECK(error_of("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n") == 501);
}

TEST_CASE("response: framing", "[http_response]") {
  HttpResponse r;
  r.status = 404;
  r.content_type = "application/json";
  r.body = "{\"error\":\"no such pool\"}";
  std::string s = serialize_response(r, {});
  CHECK(s ==
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 24\r\n"
        "Cache-Control: no-store\r\n\r\n{\"error\":\"no such pool\"}");

  ResponseFraming head_close;
  head_close.head = true;
  head_close.close = true;
  std::string h = serialize_response(r, head_close);
  CHECK(h.find("Content-Length: 24\r\n") != std::string::npos);
  CHECK(h.find("Connection: close\r\n") != std::string::npos);
  CHECK(h.substr(h.size() - 4) == "\r\n\r\n");  // no body

  ResponseFraming http10;
  http10.version_minor = 0;
  CHECK(serialize_response(r, http10).find("Connection: keep-alive\r\n") != std::string::npos);

  HttpResponse nc;
  nc.status = 204;
  nc.body = "ignored";
  std::string n = serialize_response(nc, {});
  CHECK(n == "HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\n\r\n");

  HttpResponse weird;
  weird.status = 299;
  CHECK(serialize_response(weird, {}).rfind("HTTP/1.1 299 \r\n", 0) == 0);

  // Handler mistakes cannot break the framing.
  HttpResponse bad_status;
  bad_status.status = 101;
  CHECK(serialize_response(bad_status, {}).rfind("HTTP/1.1 500 Internal Server Error\r\n", 0) == 0);
  HttpResponse injected;
  injected.content_type = "text/plain\r\nSet-Cookie: x=y";
  std::string inj = serialize_response(injected, {});
  CHECK(inj.rfind("HTTP/1.1 500 ", 0) == 0);
  CHECK(inj.find("Set-Cookie") == std::string::npos);

  HttpResponse extra;
  extra.content_type = "text/html; charset=utf-8";
  extra.headers = {{"Content-Security-Policy", "default-src 'self'"}, {"X-Frame-Options", "DENY"}};
  CHECK(serialize_response(extra, {}) ==
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 0\r\n"
        "Content-Security-Policy: default-src 'self'\r\nX-Frame-Options: DENY\r\n"
        "Cache-Control: no-store\r\n\r\n");
  for (auto [name, value] : std::vector<std::pair<std::string, std::string>>{
           {"X-Ok", "a\r\nSet-Cookie: x=y"}, {"Bad Name", "v"}, {"", "v"}, {"X:Y", "v"}}) {
    HttpResponse h;
    h.headers = {{name, value}};
    std::string out = serialize_response(h, {});
    CHECK(out.rfind("HTTP/1.1 500 ", 0) == 0);
    CHECK(out.find("Set-Cookie") == std::string::npos);
  }

  HttpResponse e = error_response(431, "request head too large");
  CHECK(e.status == 431);
  CHECK(e.body == "431 Request Header Fields Too Large: request head too large\n");
}

TEST_CASE("parser fuzz: random and mutated input never hangs or misbehaves", "[http_parser]") {
  const std::vector<std::string> seeds = {
      "GET /api/v1/status?x=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
      "POST /api/v1/pools/web/backends/10.0.0.1%3A80 HTTP/1.1\r\nContent-Length: 17\r\n"
      "Content-Type: application/json\r\n\r\n{\"state\":\"drain\"}",
      "HEAD /metrics HTTP/1.0\nConnection: keep-alive\n\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "OPTIONS * HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
  };
  const char alphabet[] = "GETPOST /%?:\r\n\t HTTP/1.0123456789abcdefABCDEF,-\x00\x7f\xff";
  HttpLimits limits;
  limits.max_header_bytes = 256;
  limits.max_body_bytes = 64;
  limits.max_headers = 8;

  Rng rng{12345};
  int completed = 0;
  int errored = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string input;
    if (iter % 4 == 0) {
      // Pure noise, from the HTTP-ish alphabet or any byte.
      size_t len = rng.below(300);
      for (size_t i = 0; i < len; ++i) {
        input.push_back(iter % 8 == 0 ? alphabet[rng.below(sizeof(alphabet) - 1)]
                                      : static_cast<char>(rng.below(256)));
      }
    } else {
      // Pipelined seeds with a few mutations: flip, insert, delete, duplicate.
      size_t count = 1 + rng.below(3);
      for (size_t i = 0; i < count; ++i) input += seeds[rng.below(seeds.size())];
      size_t mutations = rng.below(6);
      for (size_t m = 0; m < mutations && !input.empty(); ++m) {
        size_t at = rng.below(input.size());
        switch (rng.below(4)) {
          case 0:
            input[at] = static_cast<char>(rng.below(256));
            break;
          case 1:
            input.insert(at, 1, alphabet[rng.below(sizeof(alphabet) - 1)]);
            break;
          case 2:
            input.erase(at, 1 + rng.below(8));
            break;
          case 3:
            input.insert(at, input.substr(at, rng.below(40)));
            break;
        }
      }
    }

    Outcome whole = parse_all(input, limits);
    Outcome pieces = parse_chunked(input, limits, [&](size_t) { return 1 + rng.below(9); });
    // Termination is implied by getting here; the invariants:
    REQUIRE(whole.consumed <= input.size());
    REQUIRE(pieces.final_state == whole.final_state);
    REQUIRE(pieces.error_status == whole.error_status);
    REQUIRE(pieces.requests.size() == whole.requests.size());
    if (whole.final_state == State::kError) {
      ++errored;
      REQUIRE((whole.error_status == 400 || whole.error_status == 413 || whole.error_status == 431 ||
               whole.error_status == 501));
    }
    for (size_t i = 0; i < whole.requests.size(); ++i) {
      const HttpRequest& a = whole.requests[i].request;
      const HttpRequest& b = pieces.requests[i].request;
      ++completed;
      REQUIRE(a.method == b.method);
      REQUIRE(a.target == b.target);
      REQUIRE(a.headers == b.headers);
      REQUIRE(a.body == b.body);
      REQUIRE(!a.method.empty());
      REQUIRE(a.target.size() <= limits.max_header_bytes);
      REQUIRE(a.headers.size() <= limits.max_headers);
      REQUIRE(a.body.size() <= limits.max_body_bytes);
      REQUIRE(a.path.find('\0') == std::string::npos);
      for (const auto& h : a.headers) {
        for (char ch : h.first) REQUIRE(!(ch >= 'A' && ch <= 'Z'));
        REQUIRE(h.second.find_first_of(std::string("\r\n\0", 3)) == std::string::npos);
      }
    }
  }
  // The corpus must exercise both outcomes, or the test proves little.
  CHECK(completed > 500);
  CHECK(errored > 500);
}

}  // namespace lb::admin
