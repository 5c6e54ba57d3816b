#include "test/support/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "test/support/udp.h"

namespace lb::test {

std::string dns_query(uint16_t id, const std::string& name) {
  std::string q;
  q += static_cast<char>(id >> 8);
  q += static_cast<char>(id & 0xff);
  q += std::string("\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", 10);  // RD, 1 question
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    q += static_cast<char>(dot - start);
    q += name.substr(start, dot - start);
    start = dot + 1;
  }
  q += std::string("\x00\x00\x01\x00\x01", 5);  // root, type A, class IN
  return q;
}

uint16_t dns_id(const std::string& r) {
  return r.size() >= 2 ? static_cast<uint16_t>((static_cast<uint8_t>(r[0]) << 8) | static_cast<uint8_t>(r[1]))
                       : 0;
}

std::string dns_first_a(const std::string& r) {
  if (r.size() < 12) return "";
  size_t i = 12;
  while (i < r.size() && r[i] != 0) i += static_cast<uint8_t>(r[i]) + 1;
  i += 5;  // root label, type, class
  // Answer: name (a pointer, 2 bytes), type, class, ttl, rdlength, rdata.
  if (i + 16 > r.size()) return "";
  i += 2 + 2 + 2 + 4;
  uint16_t len = static_cast<uint16_t>((static_cast<uint8_t>(r[i]) << 8) | static_cast<uint8_t>(r[i + 1]));
  i += 2;
  if (len != 4 || i + 4 > r.size()) return "";
  char buf[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, r.data() + i, buf, sizeof buf);
  return buf;
}

uint16_t free_port_pair() {
  static uint32_t seed = static_cast<uint32_t>(::getpid()) * 2654435761u;
  for (int tries = 0; tries < 200; ++tries) {
    seed = seed * 1103515245u + 12345u;
    uint16_t port = static_cast<uint16_t>(20000 + (seed >> 8) % 12000);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int u = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int t = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok = ::bind(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
              ::bind(t, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(u);
    ::close(t);
    if (ok) return port;
  }
  return 0;
}

bool Dnsmasq::start(Deadline deadline) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    port_ = free_port_pair();
    proc_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--port=" + std::to_string(port_), "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv",
        "--no-hosts", "--pid-file=", "--user=root", "--address=/example.test/" + answer_,
        "--log-facility=-"});
    if (answers(std::min(deadline, in(seconds(10))))) return true;
    WARN("dnsmasq on port " << port_ << " did not answer: " << proc_->output());
    proc_.reset();
  }
  return false;
}

bool Dnsmasq::answers(Deadline deadline) {
  int fd = udp_socket();
  bool ok = wait_until(
      [&] {
        send_to(fd, port_, dns_query(1, "example.test"));
        auto r = recv_within(fd, in(milliseconds(100)));
        return r && dns_id(*r) == 1;
      },
      deadline, milliseconds(1));
  ::close(fd);
  return ok;
}

}  // namespace lb::test
