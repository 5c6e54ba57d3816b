#include "lb/ctl_client.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <unistd.h>

#include <fmt/format.h>
#include <strings.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace lb::app::ctl {

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kRequestTimeout = std::chrono::seconds(10);
constexpr size_t kMaxResponseBytes = 64 << 20;

bool wait(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return false;
  }
}

}  // namespace

Reply Client::request(const std::string& method, const std::string& target, const std::string& body) const {
  Reply r;
  const auto deadline = Clock::now() + kRequestTimeout;
  int fd = ::socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    r.error = fmt::format("socket: {}", std::strerror(errno));
    return r;
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr_), len_) != 0 && errno != EINPROGRESS) {
    r.error = fmt::format("cannot connect to the admin API at {}: {}", host_, std::strerror(errno));
    return r;
  }
  if (!wait(fd, POLLOUT, deadline)) {
    r.error = fmt::format("cannot connect to the admin API at {}: timed out", host_);
    return r;
  }
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
  if (soerr != 0) {
    r.error = fmt::format("cannot connect to the admin API at {}: {}", host_, std::strerror(soerr));
    return r;
  }
  std::string req =
      fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: lb-ctl/{}\r\n", method,
                  target, host_, LB_VERSION);
  if (!token_.empty()) req += "Authorization: Bearer " + token_ + "\r\n";
  if (method == "POST")
    req += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
  req += "\r\n" + body;
  size_t sent = 0;
  while (sent < req.size()) {
    ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      if (!wait(fd, POLLOUT, deadline)) {
        r.error = "timed out sending the request";
        return r;
      }
    } else {
      // The server may have answered and closed early: read what it said.
      break;
    }
  }
  std::string in;
  for (;;) {
    char buf[16384];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      in.append(buf, static_cast<size_t>(n));
      if (in.size() > kMaxResponseBytes) {
        r.error = "response too large";
        return r;
      }
      continue;
    }
    if (n == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (!wait(fd, POLLIN, deadline)) {
        r.error = "timed out waiting for the admin API's answer";
        return r;
      }
      continue;
    }
    if (in.empty()) {
      // An [admin] allow list that does not include us closes the
      // connection without a word.
      r.error = fmt::format("the admin API at {} closed the connection: {}", host_, std::strerror(errno));
      return r;
    }
    break;
  }
  return parse(in);
}

Reply Client::parse(const std::string& in) const {
  Reply r;
  size_t head_end = in.find("\r\n\r\n");
  if (in.empty()) {
    r.error = fmt::format("the admin API at {} closed the connection without an answer", host_);
    return r;
  }
  if (head_end == std::string::npos || in.rfind("HTTP/1.", 0) != 0 || in.size() < 12) {
    r.error = "malformed answer from the admin API";
    return r;
  }
  r.status = std::atoi(in.c_str() + 9);
  std::string head = in.substr(0, head_end);
  r.body = in.substr(head_end + 4);
  // Content-Length frames the body; with Connection: close the end of the
  // stream does too, so only a short body is an error.
  for (size_t pos = head.find("\r\n"); pos != std::string::npos; pos = head.find("\r\n", pos + 2)) {
    std::string line = head.substr(pos + 2, head.find("\r\n", pos + 2) - pos - 2);
    if (line.size() > 15 && strncasecmp(line.c_str(), "content-length:", 15) == 0) {
      size_t n = std::strtoul(line.c_str() + 15, nullptr, 10);
      if (r.body.size() < n) {
        r.status = 0;
        r.error = "truncated answer from the admin API";
      } else {
        r.body.resize(n);
      }
    }
  }
  return r;
}

// The API's own words: {"error": "..."} when it sent that, else the body.
std::string api_error(const Reply& r) {
  if (r.status == 0) return r.error;
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, false);
  std::string msg;
  if (j.is_object() && j.contains("error") && j["error"].is_string())
    msg = j["error"].get<std::string>();
  else
    msg = r.body;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
  return fmt::format("HTTP {}: {}", r.status, msg);
}

std::string percent_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == ':')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

}  // namespace lb::app::ctl
