#include "core/tls/passthrough.h"

#include "core/tls/ja4.h"

namespace lb::tls {

void Passthrough::learn(const ClientHello& hello) {
  if (hello.has_sni) {
    sni = hello.sni;
    sni_key = hello.sni;
    if (!sni_key.empty() && sni_key.back() == '.') sni_key.pop_back();
    for (char& c : sni_key) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
  }
  if (const char* v = version_name(hello.max_version())) tls_version = v;
  for (const auto& p : hello.alpn) {
    if (!alpn.empty()) alpn += ',';
    alpn += p;
  }
  ja4 = tls::ja4(hello);
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
