#include "core/tls/passthrough.h"

#include <algorithm>

#include "core/tls/ja4.h"

namespace lb::tls {

void Passthrough::set_sni(std::string_view name) {
  sni = name;
  sni_key = name;
  if (!sni_key.empty() && sni_key.back() == '.') sni_key.pop_back();
  for (char& c : sni_key) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
}

void Passthrough::learn(const ClientHello& hello, bool with_ja4) {
  if (hello.has_sni) set_sni(hello.sni);
  if (const char* v = version_name(hello.max_version())) tls_version = v;
  for (const auto& p : hello.alpn) {
    if (!alpn.empty()) alpn += ',';
    alpn += p;
  }
  if (with_ja4) ja4 = tls::ja4(hello);
}

bool Passthrough::observe(const char* data, size_t n) {
  if (decided_) return true;
  observed_.append(data, std::min(n, kMaxClientHello - observed_.size()));
  ClientHello hello;
  const ParseResult r = parse(reinterpret_cast<const uint8_t*>(observed_.data()), observed_.size(), &hello);
  if (r.status == Status::NeedMore && observed_.size() < kMaxClientHello) return false;
  if (r.status == Status::Complete) learn(hello, true);
  decided_ = true;
  std::string().swap(observed_);
  return true;
}

const std::string* route_pool(const conf::Listener& listener, const std::string& sni_key) {
  if (!sni_key.empty()) {
    for (const auto& route : listener.routes) {
      for (const auto& pattern : route.sni) {
        if (sni_matches(sni_key, pattern)) return &route.pool;
      }
    }
  }
  return &listener.pool;
}

}  // namespace lb::tls
