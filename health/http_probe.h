// http probe: HTTP/1.1 `GET http_path` and a check of the status code.
//
// Only the status line matters, so the probe decides as soon as it has read
// it and never reads past kMaxResponse bytes (a misbehaving backend cannot
// make the health thread buffer without bound).
//
// Thread rules: as Probe (loop thread only).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "health/stream_probe.h"

namespace lb::health {

// Status code from "HTTP/1.x NNN reason"; nullopt when malformed.
std::optional<int> parse_status_line(std::string_view line);

// The request the probe sends; nullopt when path or host would break the
// request framing (control characters, spaces in the path, no leading '/').
std::optional<std::string> build_http_request(std::string_view path, std::string_view host);

class HttpProbe final : public StreamProbe {
 public:
  static constexpr size_t kMaxResponse = 16 * 1024;

  HttpProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb);

 private:
  void begin() override;
  void on_connected() override;
  void on_data(const char* data, size_t len) override;
  void on_read_end(int err) override;

  std::string request_;  // empty when the configuration cannot be sent
  conf::ExpectStatus expect_;
  std::string response_;
};

}  // namespace lb::health
