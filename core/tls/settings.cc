#include "core/tls/settings.h"

#include <arpa/inet.h>

namespace lb::tls {

ServerSettings server_settings(const conf::Listener& l) {
  ServerSettings s;
  for (const auto& c : l.certificates) s.certificates.push_back({c.cert, c.key});
  s.min_version = l.tls_min_version == conf::TlsVersion::V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
  s.ciphers = l.tls_ciphers;
  s.alpn = l.alpn;
  s.client_ca = l.client_ca;
  s.session_tickets = l.session_tickets;
  return s;
}

ClientSettings client_settings(const conf::PoolTls& t) {
  ClientSettings s;
  s.verify = t.verify;
  s.ca_file = t.ca_file;
  s.cert = t.cert;
  s.key = t.key;
  s.server_name = t.sni;
  return s;
}

std::string backend_server_name(const ClientContext& ctx, const conf::Endpoint& backend,
                                std::string_view client_sni) {
  const std::string& setting = ctx.server_name();
  if (setting == "$client" && !client_sni.empty()) return std::string(client_sni);
  if (!setting.empty() && setting != "$client") return setting;
  if (!backend.host.empty()) return backend.host;
  char text[INET6_ADDRSTRLEN] = "";
  if (backend.addr.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&backend.addr)->sin6_addr, text, sizeof text);
  else
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&backend.addr)->sin_addr, text, sizeof text);
  return text;
}

const ServerContext* Contexts::listener(const std::string& name) const {
  auto it = listeners.find(name);
  return it == listeners.end() ? nullptr : it->second.get();
}

const ClientContext* Contexts::pool(const std::string& name) const {
  auto it = pools.find(name);
  return it == pools.end() ? nullptr : it->second.get();
}

bool load_contexts(const conf::Config& cfg, const std::shared_ptr<TicketKeyStore>& tickets, Contexts* out,
                   std::vector<std::string>* errors) {
  Contexts next;
  for (const auto& l : cfg.listeners) {
    if (l.tls != conf::TlsMode::Terminate) continue;
    std::string error;
    auto ctx = ServerContext::load(server_settings(l), tickets, &error);
    if (!ctx) {
      errors->push_back("listener " + l.name + ": " + error);
      continue;
    }
    next.listeners[l.name] = std::move(ctx);
  }
  for (const auto& p : cfg.pools) {
    if (!p.tls.enabled) continue;
    std::string error;
    auto ctx = ClientContext::load(client_settings(p.tls), &error);
    if (!ctx) {
      errors->push_back("pool " + p.name + ": " + error);
      continue;
    }
    next.pools[p.name] = std::move(ctx);
  }
  if (!errors->empty()) return false;
  *out = std::move(next);
  return true;
}

std::vector<CheckFinding> check_contexts(const conf::Config& cfg, const Contexts& contexts,
                                         int64_t now_unix) {
  std::vector<CheckFinding> out;
  for (const auto& l : cfg.listeners) {
    const ServerContext* ctx = contexts.listener(l.name);
    if (!ctx) continue;
    std::vector<std::string> names;
    for (const auto& r : l.routes) names.insert(names.end(), r.sni.begin(), r.sni.end());
    for (auto& f : ctx->check(names, now_unix))
      out.push_back({f.error, "listener " + l.name + ": " + f.message});
  }
  return out;
}

}  // namespace lb::tls
