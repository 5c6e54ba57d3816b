#include "health/http_probe.h"

#include <utility>

namespace lb::health {

namespace {

bool has_control_char(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

std::optional<int> parse_status_line(std::string_view line) {
  // "HTTP/" DIGIT "." DIGIT SP 3DIGIT [SP reason]
  if (line.size() < 12 || line.substr(0, 5) != "HTTP/") return std::nullopt;
  if (!is_digit(line[5]) || line[6] != '.' || !is_digit(line[7]) || line[8] != ' ') return std::nullopt;
  if (!is_digit(line[9]) || !is_digit(line[10]) || !is_digit(line[11])) return std::nullopt;
  if (line.size() > 12 && line[12] != ' ') return std::nullopt;
  int code = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  if (code < 100) return std::nullopt;
  return code;
}

std::optional<std::string> build_http_request(std::string_view path, std::string_view host) {
  if (path.empty() || path[0] != '/' || has_control_char(path) || path.find(' ') != std::string_view::npos)
    return std::nullopt;
  if (host.empty() || has_control_char(host)) return std::nullopt;
  std::string r;
  r.reserve(64 + path.size() + host.size());
  r.append("GET ").append(path).append(" HTTP/1.1\r\n");
  r.append("Host: ").append(host).append("\r\n");
  r.append("Connection: close\r\nUser-Agent: lb-health\r\nAccept: */*\r\n\r\n");
  return r;
}

HttpProbe::HttpProbe(uv_loop_t* loop, ProbeAddress address, const conf::HealthCheck& check, Callback cb)
    : StreamProbe(loop, std::move(address), check.timeout, std::move(cb)), expect_(check.expect_status) {
  const std::string& host = check.http_host.empty() ? address_.host : check.http_host;
  if (auto r = build_http_request(check.http_path, host)) request_ = std::move(*r);
}

void HttpProbe::begin() {
  if (request_.empty()) return fail_later("http: invalid http_path or Host");
  StreamProbe::begin();
}

void HttpProbe::on_connected() {
  write(std::move(request_));
  start_reading();
}

void HttpProbe::on_data(const char* data, size_t len) {
  size_t room = kMaxResponse - response_.size();
  response_.append(data, len < room ? len : room);
  // Tolerate a bare LF as line end, as most HTTP clients do.
  size_t eol = response_.find('\n');
  if (eol == std::string::npos) {
    if (response_.size() >= kMaxResponse) return finish(false, "http: no status line in the first 16KiB");
    return;
  }
  std::string_view line(response_.data(), eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  auto status = parse_status_line(line);
  if (!status) {
    std::string shown(line.substr(0, 64));
    for (char& c : shown)
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return finish(false, "http: malformed status line \"" + shown + "\"");
  }
  bool pass = expect_.matches(*status);
  finish(pass, "http status " + std::to_string(*status));
}

void HttpProbe::on_read_end(int err) {
  finish(false, err == UV_EOF ? std::string("http: connection closed before the status line")
                              : "http: read: " + uv_reason(err));
}

}  // namespace lb::health
