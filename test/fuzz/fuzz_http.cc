// libFuzzer target: the admin server's incremental HTTP/1.x request parser,
// driven the way HttpServer's Connection::consume() drives it, plus response
// framing for what it parses.
//
// Input layout (so the fuzzer controls how TCP splits the stream):
//   byte 0      bits 0-2: how many chunk-size bytes follow (0 = feed the
//               stream in one piece); bit 3: tight HttpLimits, so the 413 /
//               431 / too-many-headers paths are reachable within -max_len.
//   next bytes  chunk sizes (value + 1), used in a cycle.
//   rest        the bytes the client sends on one connection.
//
// Checked besides "no crash, leak or UB":
//   - feed() consumes everything it is given while the request is incomplete
//     (the server drops what it does not consume unless it has paused), and
//     nothing once a request is complete or failed;
//   - a request never exceeds the limits; a parsed request is well formed
//     (token method, visible-ASCII target, NUL-free decoded path, body as
//     long as its Content-Length) and error statuses are the documented ones;
//   - splitting the stream differently never changes what is parsed: the
//     sequence of requests/errors equals the one-piece parse;
//   - every response the server would write is well framed (Content-Length
//     matches, no stray line breaks) whatever the request carried.
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/admin/http_parser.h"
#include "core/admin/http_response.h"
#include "core/admin/http_server.h"

namespace {

#define FUZZ_CHECK(cond)                                                                             \
  do {                                                                                               \
    if (!(cond)) {                                                                                   \
      std::fprintf(stderr, "fuzz_http: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                  \
    }                                                                                                \
  } while (0)

using lb::admin::HttpLimits;
using lb::admin::HttpRequestParser;
using lb::admin::HttpResponse;
using lb::admin::ParsedRequest;
using lb::admin::ResponseFraming;

// What the connection saw, in order: one entry per complete request or error.
struct Event {
  bool error = false;
  int status = 0;  // error only
  ParsedRequest req;
};

bool same(const Event& a, const Event& b) {
  if (a.error != b.error) return false;
  if (a.error) return a.status == b.status;
  const auto& x = a.req;
  const auto& y = b.req;
  return x.version_minor == y.version_minor && x.keep_alive == y.keep_alive &&
         x.request.method == y.request.method && x.request.target == y.request.target &&
         x.request.path == y.request.path && x.request.query == y.request.query &&
         x.request.headers == y.request.headers && x.request.body == y.request.body;
}

bool is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

void check_request(const ParsedRequest& p, const HttpLimits& limits) {
  const auto& r = p.request;
  FUZZ_CHECK(!r.method.empty());
  for (unsigned char c : r.method) FUZZ_CHECK(is_tchar(c));
  FUZZ_CHECK(!r.target.empty());
  for (unsigned char c : r.target) FUZZ_CHECK(c > 0x20 && c < 0x7f);
  FUZZ_CHECK(!r.path.empty());
  FUZZ_CHECK(r.path.find('\0') == std::string::npos);
  FUZZ_CHECK(p.version_minor >= 0 && p.version_minor <= 9);
  FUZZ_CHECK(r.headers.size() <= limits.max_headers);
  FUZZ_CHECK(r.body.size() <= limits.max_body_bytes);
  for (const auto& [name, value] : r.headers) {
    FUZZ_CHECK(!name.empty());
    for (unsigned char c : name) FUZZ_CHECK(is_tchar(c) && !(c >= 'A' && c <= 'Z'));
    for (unsigned char c : value) FUZZ_CHECK(c >= 0x20 || c == '\t');
  }
  if (const std::string* cl = r.header("content-length")) {
    FUZZ_CHECK(std::strtoull(cl->c_str(), nullptr, 10) == r.body.size());
  } else {
    FUZZ_CHECK(r.body.empty());
  }
}

// Stand-in for lb's admin handler: routes on decoded path segments the way
// http_parser.h tells routers to, and reflects request data into the answer
// so that response framing sees hostile content.
HttpResponse handle(const lb::admin::HttpRequest& req) {
  HttpResponse resp;
  std::string_view rest = req.target;
  if (size_t q = rest.find('?'); q != std::string_view::npos) rest = rest.substr(0, q);
  std::string seg;
  size_t segments = 0;
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    if (slash != 0 && !lb::admin::percent_decode(rest.substr(0, slash), &seg)) {
      resp.status = 400;
      resp.body = "bad escape\n";
      return resp;
    }
    FUZZ_CHECK(seg.find('\0') == std::string::npos);
    ++segments;
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  static constexpr int kStatuses[] = {200, 204, 304, 404, 405, 503, 99, 600};
  resp.status = kStatuses[(req.path.size() + segments) % 8];
  if (const std::string* accept = req.header("accept")) resp.content_type = *accept;
  resp.body = req.path + "\n" + req.body;
  return resp;
}

// A response must parse back: status line, header lines ended by CRLF, and
// exactly Content-Length bytes after the blank line (none for HEAD/204/304).
void check_response(const std::string& out, bool head) {
  FUZZ_CHECK(out.compare(0, 9, "HTTP/1.1 ") == 0);
  size_t end = out.find("\r\n\r\n");
  FUZZ_CHECK(end != std::string::npos);
  std::string_view heads(out.data(), end + 2);
  const int status = std::atoi(out.c_str() + 9);
  FUZZ_CHECK(status >= 200 && status <= 599);
  long long length = -1;
  size_t pos = 0;
  while (pos < heads.size()) {
    size_t eol = heads.find("\r\n", pos);
    FUZZ_CHECK(eol != std::string_view::npos);
    std::string_view line = heads.substr(pos, eol - pos);
    for (unsigned char c : line) FUZZ_CHECK(c >= 0x20 || c == '\t');
    if (line.substr(0, 16) == "Content-Length: ") {
      length = std::atoll(std::string(line.substr(16)).c_str());
    }
    pos = eol + 2;
  }
  const size_t body = out.size() - (end + 4);
  if (status == 204 || status == 304) {
    FUZZ_CHECK(length == -1 && body == 0);
  } else {
    FUZZ_CHECK(length >= 0);
    FUZZ_CHECK(body == (head ? 0 : static_cast<size_t>(length)));
  }
}

// One connection, as HttpServer's read path handles it. Returns the events;
// stops where the server would stop reading (error or non-keep-alive answer).
std::vector<Event> run(std::string_view stream, const std::vector<size_t>& chunks, const HttpLimits& limits) {
  std::vector<Event> events;
  HttpRequestParser parser(limits);
  size_t next_chunk = 0;
  size_t request_bytes = 0;  // consumed for the current request
  bool done = false;
  while (!stream.empty() && !done) {
    size_t n = stream.size();
    if (!chunks.empty()) n = std::min(n, chunks[next_chunk++ % chunks.size()]);
    std::string_view chunk = stream.substr(0, n);
    stream.remove_prefix(n);

    // Connection::consume().
    size_t off = 0;
    while (!done) {
      const size_t used = parser.feed(chunk.data() + off, chunk.size() - off);
      FUZZ_CHECK(used <= chunk.size() - off);
      off += used;
      request_bytes += used;
      FUZZ_CHECK(request_bytes <= limits.max_header_bytes + limits.max_body_bytes);
      const auto state = parser.state();
      if (state == HttpRequestParser::State::kIncomplete) {
        FUZZ_CHECK(off == chunk.size());
        (void)parser.take_continue_request();
        break;
      }
      // Nothing more is taken until the request is taken.
      FUZZ_CHECK(parser.feed(chunk.data() + off, chunk.size() - off) == 0);
      if (state == HttpRequestParser::State::kComplete) {
        FUZZ_CHECK(parser.started());
        Event e;
        e.req = parser.take();
        FUZZ_CHECK(!parser.started());
        FUZZ_CHECK(parser.state() == HttpRequestParser::State::kIncomplete);
        check_request(e.req, limits);
        ResponseFraming framing;
        framing.head = e.req.request.method == "HEAD";
        framing.close = !e.req.keep_alive;
        framing.version_minor = e.req.version_minor;
        check_response(lb::admin::serialize_response(handle(e.req.request), framing), framing.head);
        done = framing.close;
        events.push_back(std::move(e));
        request_bytes = 0;
      } else {
        const int status = parser.error_status();
        FUZZ_CHECK(status == 400 || status == 413 || status == 431 || status == 501);
        FUZZ_CHECK(!parser.error_detail().empty());
        ResponseFraming framing;
        framing.close = true;
        check_response(
            lb::admin::serialize_response(lb::admin::error_response(status, parser.error_detail()), framing),
            false);
        Event e;
        e.error = true;
        e.status = status;
        events.push_back(std::move(e));
        done = true;
      }
    }
  }
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t control = data[0];
  size_t nchunks = control & 7;
  if (nchunks > size - 1) nchunks = size - 1;
  std::vector<size_t> chunks;
  for (size_t i = 0; i < nchunks; ++i) chunks.push_back(static_cast<size_t>(data[1 + i]) + 1);
  const std::string_view stream(reinterpret_cast<const char*>(data + 1 + nchunks), size - 1 - nchunks);

  HttpLimits limits;  // the server's defaults
  if (control & 8) {
    limits.max_header_bytes = 200;
    limits.max_body_bytes = 48;
    limits.max_headers = 4;
  }

  const std::vector<Event> split = run(stream, chunks, limits);
  if (!chunks.empty()) {
    const std::vector<Event> whole = run(stream, {}, limits);
    FUZZ_CHECK(split.size() == whole.size());
    for (size_t i = 0; i < split.size(); ++i) FUZZ_CHECK(same(split[i], whole[i]));
  }
  return 0;
}
