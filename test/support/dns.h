// DNS for end-to-end tests: the wire format of A queries (just enough to ask
// and to read an answer) and a real dnsmasq serving on a loopback port.
//
// Thread rules: Dnsmasq belongs to the test thread that started it (its
// ChildProcess must be spawned from a thread that outlives it); the free
// functions are pure.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "test/support/child_process.h"
#include "test/support/deadline.h"

namespace lb::test {

// An A query for `name` with ID `id` and RD set.
std::string dns_query(uint16_t id, const std::string& name);
// The ID of a DNS message (0 when too short).
uint16_t dns_id(const std::string& reply);
// The first A record's address in a reply ("" when there is none).
std::string dns_first_a(const std::string& reply);

// A port below the ephemeral range (32768+) free for both TCP and UDP on
// 127.0.0.1 right now (0 if none was found).
uint16_t free_port_pair();

// dnsmasq on a loopback port, answering example.test with `answer` itself
// (no upstream servers, no hosts file).
class Dnsmasq {
 public:
  explicit Dnsmasq(std::string answer) : answer_(std::move(answer)) {}
  // Starts dnsmasq and waits until it answers a query. dnsmasq binds TCP and
  // UDP on its port, so the port must be free for both; it is taken below the
  // kernel's ephemeral range, where the suite's own connections never are.
  // Another process may still take it first: then it tries again on another
  // port.
  bool start(Deadline deadline);
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // dnsmasq's pid while it runs (0 before start()).
  pid_t pid() const { return proc_ ? proc_->pid() : 0; }

 private:
  bool answers(Deadline deadline);
  std::string answer_;
  uint16_t port_ = 0;
  std::unique_ptr<ChildProcess> proc_;
};

}  // namespace lb::test
