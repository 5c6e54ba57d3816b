#include "test/support/http_client.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

#include "test/support/net.h"

namespace lb::test {

namespace {

bool iequals(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// Buffered reader over a non-blocking socket with a deadline.
class Reader {
 public:
  Reader(const Socket& s, Deadline deadline) : s_(s), deadline_(deadline) {}

  // Reads more into buf(); false on EOF, error or deadline (see eof()).
  bool fill() {
    for (;;) {
      char tmp[16384];
      ssize_t n = ::recv(s_.fd(), tmp, sizeof(tmp), 0);
      if (n > 0) {
        buf_.append(tmp, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        eof_ = true;  // reset counts as the end of the stream
        return false;
      }
      pollfd p{s_.fd(), POLLIN, 0};
      if (::poll(&p, 1, poll_timeout_ms(deadline_)) <= 0 && expired(deadline_)) return false;
    }
  }
  // Ensures buf() holds `delim`; returns its position or npos.
  size_t find(const std::string& delim, size_t from = 0) {
    for (;;) {
      size_t pos = buf_.find(delim, from);
      if (pos != std::string::npos) return pos;
      if (!fill()) return std::string::npos;
    }
  }
  bool need(size_t n) {
    while (buf_.size() < n) {
      if (!fill()) return false;
    }
    return true;
  }
  std::string& buf() { return buf_; }
  bool eof() const { return eof_; }

 private:
  const Socket& s_;
  Deadline deadline_;
  std::string buf_;
  bool eof_ = false;
};

HttpResponse exchange_http(const std::string& host, uint16_t port, const std::string& request,
                           bool head_request, Deadline deadline) {
  HttpResponse r;
  int err = 0;
  Socket s = tcp_connect(host, port, deadline, &err);
  if (!s) {
    r.error = fmt::format("connect to {}:{} failed: errno {}", host, port, err);
    return r;
  }
  if (write_all(s, request, deadline) != request.size()) {
    // The server may answer and close before reading everything (e.g. 400
    // on garbage); still try to read its answer.
  }
  Reader in(s, deadline);
  size_t header_end = in.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    r.error =
        in.eof() ? "connection closed before a complete response head" : "timeout reading response head";
    return r;
  }
  std::string head = in.buf().substr(0, header_end);
  in.buf().erase(0, header_end + 4);

  size_t line_end = head.find("\r\n");
  std::string status_line = head.substr(0, line_end);
  // "HTTP/1.x SSS reason"
  if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) {
    r.error = "malformed status line: " + status_line;
    return r;
  }
  int status = std::atoi(status_line.substr(9, 3).c_str());
  r.reason = status_line.size() > 13 ? status_line.substr(13) : "";
  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t end = head.find("\r\n", pos);
    if (end == std::string::npos) end = head.size();
    std::string line = head.substr(pos, end - pos);
    pos = end + 2;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    size_t first = value.find_first_not_of(" \t");
    size_t last = value.find_last_not_of(" \t");
    value = first == std::string::npos ? "" : value.substr(first, last - first + 1);
    r.headers.emplace_back(line.substr(0, colon), value);
  }

  auto content_length = r.header("Content-Length");
  auto transfer_encoding = r.header("Transfer-Encoding");
  if (head_request || status == 204 || status == 304 || (status >= 100 && status < 200)) {
    // no body
  } else if (transfer_encoding && transfer_encoding->find("chunked") != std::string::npos) {
    std::string body;
    for (;;) {
      size_t eol = in.find("\r\n");
      if (eol == std::string::npos) {
        r.error = "truncated chunked body";
        return r;
      }
      size_t chunk = std::strtoul(in.buf().substr(0, eol).c_str(), nullptr, 16);
      in.buf().erase(0, eol + 2);
      if (chunk == 0) break;  // trailers, if any, are ignored
      if (!in.need(chunk + 2)) {
        r.error = "truncated chunk";
        return r;
      }
      body.append(in.buf(), 0, chunk);
      in.buf().erase(0, chunk + 2);
    }
    r.body = std::move(body);
  } else if (content_length) {
    size_t n = std::strtoul(content_length->c_str(), nullptr, 10);
    if (!in.need(n)) {
      r.error = fmt::format("body shorter than Content-Length {} ({} bytes)", n, in.buf().size());
      return r;
    }
    r.body = in.buf().substr(0, n);
  } else {
    while (in.fill()) {
    }
    if (!in.eof()) {
      r.error = "timeout reading a body framed by the end of the stream";
      return r;
    }
    r.body = in.buf();
  }
  r.status = status;
  return r;
}

}  // namespace

std::optional<std::string> HttpResponse::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (iequals(k, name)) return v;
  }
  return std::nullopt;
}

HttpResponse http_request(const std::string& host, uint16_t port, const std::string& method,
                          const std::string& path, const std::string& body, Deadline deadline,
                          const HttpHeaders& extra) {
  std::string host_header = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port)
                                                                : fmt::format("{}:{}", host, port);
  std::string request =
      fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", method, path, host_header);
  bool content_type = false;
  for (const auto& [name, value] : extra) {
    request += fmt::format("{}: {}\r\n", name, value);
    content_type = content_type || iequals(name, "Content-Type");
  }
  if (!body.empty() || method == "POST" || method == "PUT") {
    if (!content_type) request += "Content-Type: application/json\r\n";
    request += fmt::format("Content-Length: {}\r\n", body.size());
  }
  request += "\r\n";
  request += body;
  return exchange_http(host, port, request, method == "HEAD", deadline);
}

HttpResponse http_raw(uint16_t port, const std::string& raw, Deadline deadline, const std::string& host) {
  return exchange_http(host, port, raw, false, deadline);
}

}  // namespace lb::test
