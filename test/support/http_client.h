// A minimal HTTP/1.1 client for lb's admin API in end-to-end tests.
//
// One request per connection ("Connection: close"); the response body is
// framed by Content-Length, chunked encoding, or the end of the stream.
// Nothing throws: a failed exchange has status 0 and says why in `error`.
//
// Thread rules: free functions, thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "test/support/deadline.h"

namespace lb::test {

struct HttpResponse {
  int status = 0;  // 0: no (valid) response, see `error`
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string error;

  // Case-insensitive header lookup (first occurrence).
  std::optional<std::string> header(const std::string& name) const;
};

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// `extra` header lines are sent as given; a POST/PUT or a body gets
// "Content-Type: application/json" unless `extra` names a Content-Type.
HttpResponse http_request(const std::string& host, uint16_t port, const std::string& method,
                          const std::string& path, const std::string& body, Deadline deadline,
                          const HttpHeaders& extra = {});

inline HttpResponse http_get(uint16_t port, const std::string& path, Deadline deadline = in(seconds(5)),
                             const std::string& host = "127.0.0.1") {
  return http_request(host, port, "GET", path, "", deadline);
}

inline HttpResponse http_post(uint16_t port, const std::string& path, const std::string& body,
                              Deadline deadline = in(seconds(5)), const std::string& host = "127.0.0.1") {
  return http_request(host, port, "POST", path, body, deadline);
}

// Sends `raw` bytes as they are (malformed requests) and parses the answer.
HttpResponse http_raw(uint16_t port, const std::string& raw, Deadline deadline = in(seconds(5)),
                      const std::string& host = "127.0.0.1");

}  // namespace lb::test
