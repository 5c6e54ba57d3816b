#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/access_log.h"

using lb::core::AccessLog;
using lb::core::AccessRecord;

TEST_CASE("access log lines are JSON with the spec's fields", "[access_log]") {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(4242);
  inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
  AccessRecord r;
  r.listener = "we\"b";
  r.client = reinterpret_cast<sockaddr*>(&sin);
  r.backend = "b1";
  r.duration_ms = 12;
  r.bytes_to_backend = 100;
  r.bytes_to_client = 200;
  r.result = "ok";
  std::string out;
  lb::core::format_access_record(r, out);
  CHECK(out ==
        "{\"listener\":\"we\\\"b\",\"client\":\"10.1.2.3:4242\",\"backend\":\"b1\",\"duration_ms\":12,"
        "\"bytes_to_backend\":100,\"bytes_to_client\":200,\"result\":\"ok\"}\n");
  out.clear();
  r.backend = {};
  r.result = "refused";
  lb::core::format_access_record(r, out);
  CHECK(out.find("\"backend\":null") != std::string::npos);
  CHECK(out.find("\"result\":\"refused\"") != std::string::npos);
  CHECK(out.find("tls_version") == std::string::npos);  // not a TLS listener

  out.clear();
  r.tls = true;
  lb::core::format_access_record(r, out);
  CHECK(out.find("\"result\":\"refused\",\"sni\":null,\"tls_version\":null,\"alpn\":null,\"ja4\":null}\n") !=
        std::string::npos);
  out.clear();
  r.tls_version = "TLSv1.3";
  r.alpn = "h2";
  lb::core::format_access_record(r, out);
  CHECK(out.find("\"sni\":null,\"tls_version\":\"TLSv1.3\",\"alpn\":\"h2\",\"ja4\":null}\n") !=
        std::string::npos);
}

TEST_CASE("access log file is written off-thread and reopened", "[access_log]") {
  char tmpl[] = "/tmp/lb-access-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string path = std::string(tmpl) + "/access.log";
  std::string rotated = path + ".1";
  auto read_all = [](const std::string& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  auto wait_for = [&](const std::string& p, size_t lines) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      std::string s = read_all(p);
      if (static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) >= lines) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  {
    AccessLog log(path, 2);
    std::string err;
    REQUIRE(log.open(&err));
    AccessRecord r;
    r.listener = "web";
    log.write(0, r);
    log.write(1, r);
    REQUIRE(wait_for(path, 2));
    // logrotate: move the file away, then ask for a reopen.
    REQUIRE(std::rename(path.c_str(), rotated.c_str()) == 0);
    log.reopen();
    // Lines written after the reopen land in a new file at the old path.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (access(path.c_str(), F_OK) != 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    log.write(0, r);
    REQUIRE(wait_for(path, 1));
  }
  std::string rot = read_all(rotated);
  CHECK(std::count(rot.begin(), rot.end(), '\n') == 2);
  std::string cur = read_all(path);
  CHECK(std::count(cur.begin(), cur.end(), '\n') == 1);
  std::remove(path.c_str());
  std::remove(rotated.c_str());
  rmdir(tmpl);
}
