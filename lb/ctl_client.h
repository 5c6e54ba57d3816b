// `lb ctl`'s HTTP client: one request on a fresh blocking connection to the
// admin API, with a deadline. All ctl ever needs, so no HTTP library.
//
// Thread: the calling thread; blocking sockets, no libuv.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <string>

namespace lb::app::ctl {

struct Reply {
  int status = 0;  // 0: no HTTP answer (error says why)
  std::string body;
  std::string error;
};

class Client {
 public:
  Client(sockaddr_storage addr, socklen_t len, std::string host, std::string token)
      : addr_(addr), len_(len), host_(std::move(host)), token_(std::move(token)) {}

  // One request ("Connection: close"); a POST carries `body` as JSON.
  Reply request(const std::string& method, const std::string& target, const std::string& body = "") const;

 private:
  Reply parse(const std::string& in) const;

  sockaddr_storage addr_;
  socklen_t len_;
  std::string host_;
  std::string token_;
};

// The API's own words: {"error": "..."} when it sent that, else the body.
std::string api_error(const Reply& r);

// A path segment percent-encoded (unreserved characters and ':' kept).
std::string percent_encode(const std::string& s);

}  // namespace lb::app::ctl
