#include "core/admin/http_parser.h"

#include <algorithm>

namespace lb::admin {
namespace {

// RFC 9110 §5.6.2 token characters.
bool is_tchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

char to_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (to_lower(a[i]) != to_lower(b[i])) return false;
  }
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Content-Length is 1*DIGIT (RFC 9110 §8.6). Signs, spaces inside, hex and
// lists are all refused: each is a known way to make two parsers disagree.
bool parse_content_length(std::string_view s, uint64_t* out) {
  if (s.empty() || s.size() > 18) return false;  // 18 digits cannot overflow
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

constexpr std::string_view kVersionPrefix = "HTTP/1.";

}  // namespace

bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c != '%') {
      out->push_back(c);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex_value(in[i + 1]);
    int lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    int v = hi * 16 + lo;
    if (v == 0) return false;
    out->push_back(static_cast<char>(v));
    i += 2;
  }
  return true;
}

HttpRequestParser::HttpRequestParser(const HttpLimits& limits) : limits_(limits) {}

void HttpRequestParser::reset() {
  state_ = State::kIncomplete;
  phase_ = Phase::kStart;
  started_ = false;
  head_bytes_ = 0;
  header_count_ = 0;
  version_.clear();
  name_.clear();
  value_.clear();
  has_content_length_ = false;
  content_length_ = 0;
  body_remaining_ = 0;
  has_transfer_encoding_ = false;
  connection_close_ = false;
  connection_keep_alive_ = false;
  expect_continue_ = false;
  continue_pending_ = false;
  out_ = ParsedRequest{};
  error_status_ = 0;
  error_detail_ = "";
}

bool HttpRequestParser::fail(int status, const char* detail) {
  state_ = State::kError;
  error_status_ = status;
  error_detail_ = detail;
  return false;
}

ParsedRequest HttpRequestParser::take() {
  ParsedRequest r = std::move(out_);
  reset();
  return r;
}

bool HttpRequestParser::take_continue_request() {
  bool r = continue_pending_;
  continue_pending_ = false;
  return r;
}

size_t HttpRequestParser::feed(const char* data, size_t len) {
  if (state_ != State::kIncomplete) return 0;
  size_t i = 0;
  if (len > 0) started_ = true;
  while (i < len && phase_ != Phase::kBody) {
    if (!head_byte(static_cast<unsigned char>(data[i++]))) return i;
    if (state_ == State::kComplete) return i;
  }
  if (phase_ == Phase::kBody && i < len) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(body_remaining_, len - i));
    out_.request.body.append(data + i, n);
    body_remaining_ -= n;
    i += n;
  }
  if (phase_ == Phase::kBody && body_remaining_ == 0) {
    continue_pending_ = false;
    state_ = State::kComplete;
  }
  return i;
}

// One byte of the request line or headers. Returns false on error (state_ is
// then kError).
bool HttpRequestParser::head_byte(unsigned char c) {
  if (++head_bytes_ > limits_.max_header_bytes) {
    return fail(431, "request head too large");
  }
  if (c == 0) return fail(400, "NUL byte in request head");
  HttpRequest& req = out_.request;
  switch (phase_) {
    case Phase::kStart:
      if (c == '\n') return true;
      if (c == '\r') {
        phase_ = Phase::kStartLF;
        return true;
      }
      if (!is_tchar(c)) return fail(400, "invalid method");
      req.method.push_back(static_cast<char>(c));
      phase_ = Phase::kMethod;
      return true;

    case Phase::kStartLF:
      if (c != '\n') return fail(400, "bare CR");
      phase_ = Phase::kStart;
      return true;

    case Phase::kMethod:
      if (c == ' ') {
        phase_ = Phase::kTarget;
        return true;
      }
      if (!is_tchar(c)) return fail(400, "invalid method");
      req.method.push_back(static_cast<char>(c));
      return true;

    case Phase::kTarget:
      if (c == ' ') {
        if (req.target.empty()) return fail(400, "empty request target");
        phase_ = Phase::kVersion;
        return true;
      }
      // Visible ASCII only: no controls, no spaces, no raw UTF-8.
      if (c < 0x21 || c > 0x7e) return fail(400, "invalid request target");
      req.target.push_back(static_cast<char>(c));
      return true;

    case Phase::kVersion:
      if (c == '\r' || c == '\n') {
        if (version_.size() != kVersionPrefix.size() + 1) {
          return fail(400, "unsupported HTTP version");
        }
        if (c == '\r') {
          phase_ = Phase::kRequestLineLF;
          return true;
        }
        return finish_request_line();
      }
      if (version_.size() < kVersionPrefix.size()) {
        if (c != static_cast<unsigned char>(kVersionPrefix[version_.size()])) {
          return fail(400, "unsupported HTTP version");
        }
      } else if (version_.size() == kVersionPrefix.size()) {
        if (c < '0' || c > '9') return fail(400, "unsupported HTTP version");
      } else {
        return fail(400, "unsupported HTTP version");
      }
      version_.push_back(static_cast<char>(c));
      return true;

    case Phase::kRequestLineLF:
      if (c != '\n') return fail(400, "bare CR");
      return finish_request_line();

    case Phase::kHeaderStart:
      if (c == '\r') {
        phase_ = Phase::kHeadersEndLF;
        return true;
      }
      if (c == '\n') return finish_head();
      if (c == ' ' || c == '\t') return fail(400, "obsolete header line folding");
      if (!is_tchar(c)) return fail(400, "invalid header name");
      name_.push_back(to_lower(static_cast<char>(c)));
      phase_ = Phase::kHeaderName;
      return true;

    case Phase::kHeaderName:
      if (c == ':') {
        phase_ = Phase::kHeaderValue;
        return true;
      }
      // Includes whitespace before the colon, refused by RFC 9112 §5.1.
      if (!is_tchar(c)) return fail(400, "invalid header name");
      name_.push_back(to_lower(static_cast<char>(c)));
      return true;

    case Phase::kHeaderValue:
      if (c == '\r') {
        phase_ = Phase::kHeaderLF;
        return true;
      }
      if (c == '\n') return finish_header();
      if ((c < 0x20 && c != '\t') || c == 0x7f) {
        return fail(400, "control character in header value");
      }
      value_.push_back(static_cast<char>(c));
      return true;

    case Phase::kHeaderLF:
      if (c != '\n') return fail(400, "bare CR");
      return finish_header();

    case Phase::kHeadersEndLF:
      if (c != '\n') return fail(400, "bare CR");
      return finish_head();

    case Phase::kBody:
      break;
  }
  return fail(400, "internal parser state");
}

bool HttpRequestParser::finish_request_line() {
  HttpRequest& req = out_.request;
  out_.version_minor = version_.back() - '0';

  // origin-form ("/p?q"), absolute-form ("http://host/p?q", which RFC 9112
  // §3.2.2 obliges a server to accept) and "OPTIONS *". No authority-form:
  // this server is nobody's CONNECT proxy.
  std::string_view t = req.target;
  if (t == "*") {
    if (req.method != "OPTIONS") return fail(400, "invalid request target");
    req.path = "*";
  } else {
    if (t.front() != '/') {
      size_t scheme_end = t.find("://");
      std::string_view scheme = t.substr(0, scheme_end);
      if (scheme_end == std::string_view::npos || !(iequals(scheme, "http") || iequals(scheme, "https"))) {
        return fail(400, "invalid request target");
      }
      t.remove_prefix(scheme_end + 3);
      size_t path_start = t.find_first_of("/?");
      if (path_start == 0) return fail(400, "invalid request target");  // no host
      t = path_start == std::string_view::npos ? std::string_view() : t.substr(path_start);
    }
    if (t.find('#') != std::string_view::npos) {
      return fail(400, "fragment in request target");
    }
    size_t q = t.find('?');
    std::string_view raw_path = t.substr(0, q);
    if (q != std::string_view::npos) req.query.assign(t.substr(q + 1));
    if (raw_path.empty()) raw_path = "/";
    if (!percent_decode(raw_path, &req.path)) return fail(400, "bad percent-escape in path");
  }
  phase_ = Phase::kHeaderStart;
  return true;
}

bool HttpRequestParser::finish_header() {
  if (++header_count_ > limits_.max_headers) return fail(400, "too many header lines");
  std::string_view value = trim_ows(value_);

  if (name_ == "content-length") {
    uint64_t n = 0;
    if (!parse_content_length(value, &n)) return fail(400, "invalid Content-Length");
    // A repeated identical value is harmless (RFC 9112 §6.3 allows treating
    // it as one); differing values are a smuggling attempt.
    if (has_content_length_ && n != content_length_) {
      return fail(400, "conflicting Content-Length");
    }
    has_content_length_ = true;
    content_length_ = n;
  } else if (name_ == "transfer-encoding") {
    has_transfer_encoding_ = true;
  } else if (name_ == "connection") {
    std::string_view rest = value;
    while (!rest.empty()) {
      size_t comma = rest.find(',');
      std::string_view tok = trim_ows(rest.substr(0, comma));
      if (iequals(tok, "close")) connection_close_ = true;
      if (iequals(tok, "keep-alive")) connection_keep_alive_ = true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  } else if (name_ == "expect") {
    if (iequals(value, "100-continue")) expect_continue_ = true;
  }

  out_.request.headers.emplace_back(std::move(name_), std::string(value));
  name_.clear();
  value_.clear();
  phase_ = Phase::kHeaderStart;
  return true;
}

bool HttpRequestParser::finish_head() {
  if (has_transfer_encoding_) {
    if (has_content_length_) return fail(400, "both Transfer-Encoding and Content-Length");
    return fail(501, "Transfer-Encoding is not supported");
  }
  if (content_length_ > limits_.max_body_bytes) return fail(413, "request body too large");

  out_.keep_alive =
      out_.version_minor == 0 ? (connection_keep_alive_ && !connection_close_) : !connection_close_;
  body_remaining_ = content_length_;
  if (body_remaining_ == 0) {
    state_ = State::kComplete;
    return true;
  }
  out_.request.body.reserve(static_cast<size_t>(content_length_));
  phase_ = Phase::kBody;
  continue_pending_ = expect_continue_ && out_.version_minor >= 1;
  return true;
}

}  // namespace lb::admin
