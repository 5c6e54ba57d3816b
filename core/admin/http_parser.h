// Incremental HTTP/1.x request parser with hard limits, for the admin server.
//
// The parser is a byte-level state machine: it never needs to see a request in
// one piece, never rescans what it has seen, and rejects a malformed request at
// the first byte that cannot belong to a valid one, so garbage is answered
// before the idle timeout and a slow client costs only the bytes it sent.
//
// What it accepts (a deliberate subset of RFC 9112):
//   request-line  = method SP request-target SP "HTTP/1." DIGIT (CR)LF
//   header-line   = token ":" OWS value OWS (CR)LF
//   body          = exactly Content-Length bytes (none when absent)
// Empty lines before the request line are skipped (RFC 9112 §2.2). A bare LF
// ends a line like CRLF; a CR anywhere else is an error.
//
// Statuses it reports:
//   400  bad request line or header line, a version other than HTTP/1.x, a NUL
//        or other control byte, obsolete line folding, more than
//        HttpLimits::max_headers header lines, a bad or conflicting
//        Content-Length, Transfer-Encoding together with Content-Length
//        (request smuggling shape), a malformed or NUL %-escape in the path.
//   431  request line + headers + the blank line longer than max_header_bytes
//        (also for an overlong request line: one limit for the whole head).
//   413  Content-Length above max_body_bytes, known before any body is read.
//   501  any Transfer-Encoding: chunked request bodies are not implemented; the
//        admin API has no use for them and Content-Length is what every client
//        sends for a small JSON body.
//
// Thread and ownership: a parser belongs to one connection and is used on its
// loop's thread only. It copies what it keeps; callers may reuse their buffers
// as soon as feed() returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/admin/http_server.h"

namespace lb::admin {

// One complete request plus what the connection needs to know about it.
struct ParsedRequest {
  HttpRequest request;
  int version_minor = 1;   // 0 for HTTP/1.0, 1 for HTTP/1.1 (and 1.2-1.9)
  bool keep_alive = true;  // from the version and the Connection header
};

class HttpRequestParser {
 public:
  enum class State {
    kIncomplete,  // wants more bytes
    kComplete,    // a request is ready: take() it
    kError,       // error_status() says what to answer; the connection closes
  };

  explicit HttpRequestParser(const HttpLimits& limits);

  // Consumes bytes of the current request and stops right after its last byte,
  // so the caller keeps the rest for the next pipelined request. Returns the
  // number of bytes consumed; consumes nothing once the state is kComplete or
  // kError.
  size_t feed(const char* data, size_t len);
  size_t feed(std::string_view data) { return feed(data.data(), data.size()); }

  State state() const { return state_; }

  // Moves the complete request out and readies the parser for the next one.
  // Only valid in kComplete.
  ParsedRequest take();

  // True once, when the head is complete, a body is still to come and the
  // client sent `Expect: 100-continue` over HTTP/1.1: it is waiting for an
  // interim "100 Continue" before sending the body.
  bool take_continue_request();

  // True once any byte of the current request has been consumed.
  bool started() const { return started_; }

  // In kError: 400, 413, 431 or 501, and a short human-readable cause.
  int error_status() const { return error_status_; }
  std::string_view error_detail() const { return error_detail_; }

 private:
  enum class Phase {
    kStart,    // before the request line: skipping empty lines
    kStartLF,  // CR seen in kStart
    kMethod,
    kTarget,
    kVersion,
    kRequestLineLF,  // CR seen after the version
    kHeaderStart,    // first byte of a header line, or of the blank line
    kHeaderName,
    kHeaderValue,
    kHeaderLF,      // CR seen in a header value
    kHeadersEndLF,  // CR seen at the start of a line: end of the head
    kBody,
  };

  bool head_byte(unsigned char c);
  bool finish_request_line();
  bool finish_header();
  bool finish_head();
  bool fail(int status, const char* detail);
  void reset();

  HttpLimits limits_;
  State state_ = State::kIncomplete;
  Phase phase_ = Phase::kStart;
  bool started_ = false;

  size_t head_bytes_ = 0;
  size_t header_count_ = 0;
  std::string version_;
  std::string name_;
  std::string value_;

  bool has_content_length_ = false;
  uint64_t content_length_ = 0;
  uint64_t body_remaining_ = 0;
  bool has_transfer_encoding_ = false;
  bool connection_close_ = false;
  bool connection_keep_alive_ = false;
  bool expect_continue_ = false;
  bool continue_pending_ = false;

  ParsedRequest out_;
  int error_status_ = 0;
  const char* error_detail_ = "";
};

// Decodes %XX escapes ('+' stays '+': that rule belongs to form bodies, not
// paths). Fails on a truncated or non-hex escape and on %00, so a decoded path
// can never smuggle a NUL into code that treats it as a C string. Routers that
// must tell an encoded '/' from a separator should split HttpRequest::target
// on '/' first and decode each segment with this.
bool percent_decode(std::string_view in, std::string* out);

}  // namespace lb::admin
