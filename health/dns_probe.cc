#include "health/dns_probe.h"

#include <string_view>
#include <utility>

#include "health/dns.h"
#include "health/random.h"

namespace lb::health {

DnsProbe::DnsProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb)
    : DatagramProbe(loop, std::move(address), check.timeout, std::move(cb)),
      name_(check.dns_query),
      id_(static_cast<uint16_t>(random_u64())) {}

bool DnsProbe::payload(std::string* out, std::string* error) {
  auto q = dns::build_query(id_, name_);
  if (!q) {
    *error = "dns: invalid dns_query \"" + name_ + "\"";
    return false;
  }
  out->assign(q->begin(), q->end());
  return true;
}

void DnsProbe::on_datagram(const char* data, size_t len) {
  auto j = dns::judge_reply(reinterpret_cast<const uint8_t*>(data), len, id_, name_);
  if (j.verdict == dns::Verdict::Ignore) return;
  finish(j.verdict == dns::Verdict::Pass, std::move(j.reason));
}

UdpProbe::UdpProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb)
    : DatagramProbe(loop, std::move(address), check.timeout, std::move(cb)),
      send_(check.udp_send),
      expect_(check.udp_expect) {}

void UdpProbe::on_datagram(const char* data, size_t len) {
  if (expect_.empty()) return finish(true, "udp reply received");
  if (std::string_view(data, len).find(expect_) != std::string_view::npos)
    return finish(true, "udp reply matches");
  finish(false, "udp reply does not contain the expected text");
}

}  // namespace lb::health
