// dns probe: one A/IN query for `dns_query` with a random ID over a connected
// UDP socket. The matching reply passes with NOERROR or NXDOMAIN (the server
// answers; whether the name exists is not the backend's health) and fails
// with any other RCODE. Datagrams that are not the reply (other ID, other
// question) are ignored, so only the timeout ends a probe that never gets it.
//
// Thread rules: as Probe (loop thread only).
#pragma once

#include <string>

#include "health/datagram_probe.h"

namespace lb::health {

class DnsProbe final : public DatagramProbe {
 public:
  DnsProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb);

 private:
  bool payload(std::string* out, std::string* error) override;
  void on_datagram(const char* data, size_t len) override;

  std::string name_;
  uint16_t id_ = 0;
};

// The udp probe: send `udp_send`; the first reply must contain `udp_expect`
// (any reply passes when it is empty).
class UdpProbe final : public DatagramProbe {
 public:
  UdpProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb);

 private:
  bool payload(std::string* out, std::string*) override {
    *out = send_;
    return true;
  }
  void on_datagram(const char* data, size_t len) override;

  std::string send_;
  std::string expect_;
};

}  // namespace lb::health
