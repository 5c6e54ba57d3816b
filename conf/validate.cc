// Second pass: rules that involve more than one key or object, and the
// defaults that depend on them. A key that the first pass rejected is skipped
// here (ObjectSrc::bad), so a single mistake yields a single error.

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "conf/internal.h"

namespace lb::conf {

namespace {

// `OBJ: pool "x": no such pool`, for a listener's and a route's pool key. A
// reference can only be judged when every pool's name is known.
class PoolRefs {
 public:
  PoolRefs(const Config& cfg, const ConfigSrc& src) : cfg_(cfg), known_(!src.root.bad.count("pool")) {
    for (size_t i = 0; i < cfg.pools.size(); ++i) {
      names_.push_back(cfg.pools[i].name);
      if (src.pools[i].obj.bad.count("name")) known_ = false;
    }
  }
  void check(const ObjectSrc& o, const std::string& pool, Diags& d) const {
    if (!known_ || !o.usable("pool") || cfg_.find_pool(pool) != nullptr) return;
    std::string hint = suggestion(pool, names_);
    d.error(o.value_pos("pool"),
            fmt::format("{}: pool {}: no such pool{}", o.label, quote(pool),
                        hint.empty() ? "" : fmt::format(" (did you mean {}?)", quote(hint))));
  }

 private:
  const Config& cfg_;
  bool known_;
  std::vector<std::string> names_;
};

void check_listeners(const Config& cfg, const ConfigSrc& src, Diags& d) {
  // A malformed `listener` key was reported already; "none configured" would
  // only repeat it.
  if (cfg.listeners.empty() && !src.root.bad.count("listener")) d.error("no listener configured");

  std::map<std::string, size_t> names;  // name -> first listener index
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const Listener& l = cfg.listeners[i];
    const ObjectSrc& o = src.listeners[i].obj;
    if (!o.usable("name")) continue;
    auto [it, inserted] = names.emplace(l.name, i);
    if (!inserted) {
      d.error(o.value_pos("name"), fmt::format("{}: name {} already used by the listener at line {}", o.label,
                                               quote(l.name), src.listeners[it->second].obj.pos.line));
    }
  }

  const PoolRefs refs(cfg, src);
  for (size_t i = 0; i < cfg.listeners.size(); ++i)
    refs.check(src.listeners[i].obj, cfg.listeners[i].pool, d);

  // Keys that only make sense for one protocol. Only the combinations that
  // cannot work are refused; a harmless leftover (connect_timeout on a udp
  // listener) is not.
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const Listener& l = cfg.listeners[i];
    const ObjectSrc& o = src.listeners[i].obj;
    if (o.bad.count("protocol")) continue;
    if (l.protocol == Protocol::Udp) {
      if (o.usable("proxy_protocol") && l.proxy_protocol == ProxyProtocol::V1) {
        d.error(o.value_pos("proxy_protocol"),
                fmt::format(R"({}: proxy_protocol "v1": udp listeners support only "v2")", o.label));
      }
      if (o.usable("accept_proxy_protocol") && l.accept_proxy_protocol) {
        d.error(o.value_pos("accept_proxy_protocol"),
                fmt::format("{}: accept_proxy_protocol: not available for udp listeners", o.label));
      }
      if (o.usable("proxy_protocol_trusted") && !l.proxy_protocol_trusted.empty()) {
        d.error(o.value_pos("proxy_protocol_trusted"),
                fmt::format("{}: proxy_protocol_trusted: not available for udp listeners", o.label));
      }
      // Each address multiplies the sessions one backend can hold; they are
      // expanded into a list, so a huge prefix is a mistake.
      uint64_t addresses = 0;
      for (const Cidr& c : l.udp_source) {
        int host_bits = (c.family == AF_INET6 ? 128 : 32) - c.prefix_len;
        addresses += host_bits > 11 ? 4096 : (uint64_t{1} << host_bits);
      }
      if (o.usable("udp_source") && addresses > 1024) {
        d.error(o.value_pos("udp_source"),
                fmt::format("{}: udp_source: at most 1024 addresses (a /22 of IPv4)", o.label));
      }
    } else if (o.usable("udp_responses") && l.udp_responses != 0) {
      d.error(o.value_pos("udp_responses"),
              fmt::format("{}: udp_responses: only meaningful for udp listeners", o.label));
    }
    if (l.protocol != Protocol::Udp && o.usable("udp_source") && !l.udp_source.empty()) {
      d.error(o.value_pos("udp_source"),
              fmt::format("{}: udp_source: only meaningful for udp listeners", o.label));
    }
  }

  // Two sockets of one protocol cannot bind the same address. Port 0 asks the
  // kernel for a fresh port each time, so it never collides.
  struct Owner {
    size_t listener;
    SourcePos pos;
  };
  std::map<std::string, Owner> binds;  // "tcp 1.2.3.4:80" -> first user
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const Listener& l = cfg.listeners[i];
    const ListenerSrc& ls = src.listeners[i];
    for (size_t j = 0; j < l.bind.size(); ++j) {
      const Endpoint& ep = l.bind[j];
      if (ep.port() == 0) continue;
      auto [it, inserted] = binds.emplace(fmt::format("{} {}", to_string(l.protocol), ep.to_string()),
                                          Owner{i, ls.bind_items[j]});
      if (inserted) continue;
      const Owner& first = it->second;
      if (first.listener == i) {
        d.error(ls.bind_items[j], fmt::format("{}: bind {}: listed twice (also at line {})", ls.obj.label,
                                              quote(ep.text), first.pos.line));
      } else {
        d.error(ls.bind_items[j], fmt::format("{}: bind {}: already used by {} listener {} at line {}",
                                              ls.obj.label, quote(ep.text), to_string(l.protocol),
                                              quote(cfg.listeners[first.listener].name), first.pos.line));
      }
    }
  }
}

void check_pools(const Config& cfg, const ConfigSrc& src, Diags& d) {
  std::map<std::string, size_t> names;
  for (size_t i = 0; i < cfg.pools.size(); ++i) {
    const Pool& p = cfg.pools[i];
    const PoolSrc& ps = src.pools[i];
    if (ps.obj.usable("name")) {
      auto [it, inserted] = names.emplace(p.name, i);
      if (!inserted) {
        d.error(ps.obj.value_pos("name"),
                fmt::format("{}: name {} already used by the pool at line {}", ps.obj.label, quote(p.name),
                            src.pools[it->second].obj.pos.line));
      }
    }

    if (p.backends.empty() && !ps.obj.bad.count("backend")) {
      d.error(ps.obj.pos, fmt::format("{}: no backends (add a [[pool.backend]] table)", ps.obj.label));
    }

    // Ids name backends in hashing, metrics and the admin API: one per pool.
    std::map<std::string, size_t> ids;
    for (size_t j = 0; j < p.backends.size(); ++j) {
      const Backend& b = p.backends[j];
      const ObjectSrc& bs = ps.backends[j];
      if (b.id.empty() || bs.bad.count("id")) continue;
      const bool id_written = bs.usable("id") && b.id != b.address.text;
      if (!id_written && bs.bad.count("address")) continue;  // already reported
      auto [it, inserted] = ids.emplace(b.id, j);
      if (inserted) continue;
      const int first_line = ps.backends[it->second].pos.line;
      // An id written in the file is the culprit; a defaulted one is the address.
      if (id_written) {
        d.error(bs.value_pos("id"), fmt::format("{}: id {} already used by the backend at line {}", bs.label,
                                                quote(b.id), first_line));
      } else {
        d.error(bs.value_pos("address"),
                fmt::format("{}: id {} (its address) already used by the backend at line {}; "
                            "give one of them a distinct id",
                            bs.label, quote(b.id), first_line));
      }
    }
  }
}

// Pool references of listeners' routes, and the keys that only mean
// something for one TLS mode. A key written for another mode is refused: a
// certificate on a passthrough listener or ALPN on a plain one would be
// silently ignored, and the operator believes something that is not true.
void check_listener_tls(const Config& cfg, const ConfigSrc& src, Diags& d) {
  const PoolRefs refs(cfg, src);
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const Listener& l = cfg.listeners[i];
    const ListenerSrc& ls = src.listeners[i];
    const ObjectSrc& o = ls.obj;

    for (size_t r = 0; r < l.routes.size(); ++r) {
      const ObjectSrc& rs = ls.routes[r];
      const SniRoute& route = l.routes[r];
      refs.check(rs, route.pool, d);
      // First match wins: a name routed already can never reach this route.
      for (size_t k = 0; k < route.sni.size(); ++k) {
        for (size_t e = 0; e <= r; ++e) {
          const auto& earlier = l.routes[e].sni;
          const size_t end = e == r ? k : earlier.size();
          if (std::find(earlier.begin(), earlier.begin() + static_cast<long>(end), route.sni[k]) ==
              earlier.begin() + static_cast<long>(end)) {
            continue;
          }
          d.error(ls.route_sni_items[r][k],
                  fmt::format("{}: sni {}: already routed by route #{} (the first match wins)", rs.label,
                              quote(route.sni[k]), e + 1));
          break;
        }
      }
    }

    if (o.bad.count("tls") || o.bad.count("protocol")) continue;
    if (l.protocol == Protocol::Udp) {
      if (l.tls != TlsMode::Off) {
        d.error(o.value_pos("tls"),
                fmt::format("{}: tls {}: only for tcp listeners", o.label, quote(to_string(l.tls))));
      }
      continue;
    }
    const std::string mode = quote(to_string(l.tls));
    for (const char* key : {"tls_min_version", "tls_ciphers", "alpn", "client_ca", "session_tickets"}) {
      if (l.tls != TlsMode::Terminate && o.usable(key)) {
        d.error(o.key_pos(key),
                fmt::format(R"({}: {}: only meaningful with tls = "terminate" (this listener has tls = {}))",
                            o.label, key, mode));
      }
    }
    if (l.tls == TlsMode::Off && o.usable("tls_handshake_timeout")) {
      d.error(
          o.key_pos("tls_handshake_timeout"),
          fmt::format(R"({}: tls_handshake_timeout: only meaningful with tls = "passthrough" or "terminate")",
                      o.label));
    }
    if (l.tls == TlsMode::Off && !l.routes.empty()) {
      d.error(
          ls.routes[0].pos,
          fmt::format(R"({}: [[listener.route]] needs tls = "passthrough" or "terminate" (no server name )"
                      "is read on a plain listener)",
                      o.label));
    }
    if (l.tls != TlsMode::Terminate && !l.certificates.empty()) {
      d.error(
          ls.certificates[0].pos,
          fmt::format(R"({}: [[listener.certificate]] needs tls = "terminate" (this listener has tls = {}))",
                      o.label, mode));
    }
    if (l.tls == TlsMode::Terminate && l.certificates.empty() && !o.bad.count("certificate")) {
      d.error(o.value_pos("tls"),
              fmt::format(R"({}: tls = "terminate" needs at least one [[listener.certificate]] (cert, key))",
                          o.label));
    }
  }
}

// hash_key = "sni" and [pool.tls] depend on the listeners that reach the
// pool, as their default pool or through a route.
void check_pool_tls(const Config& cfg, const ConfigSrc& src, Diags& d) {
  for (size_t i = 0; i < cfg.pools.size(); ++i) {
    const Pool& p = cfg.pools[i];
    const PoolSrc& ps = src.pools[i];
    const Listener* plain = nullptr;        // a tcp listener without TLS
    const Listener* passthrough = nullptr;  // a passthrough listener
    const Listener* udp = nullptr;
    for (size_t li = 0; li < cfg.listeners.size(); ++li) {
      const Listener& l = cfg.listeners[li];
      // A listener whose tls key was refused has no mode to judge by.
      if (src.listeners[li].obj.bad.count("tls")) continue;
      bool uses = l.pool == p.name;
      for (const SniRoute& r : l.routes) uses = uses || r.pool == p.name;
      if (!uses) continue;
      if (l.protocol == Protocol::Udp) {
        udp = udp ? udp : &l;
      } else if (l.tls == TlsMode::Off) {
        plain = plain ? plain : &l;
      } else if (l.tls == TlsMode::Passthrough) {
        passthrough = passthrough ? passthrough : &l;
      }
    }
    const Listener* non_tls = plain ? plain : udp;
    if (ps.obj.usable("hash_key") && p.hash_key == HashKey::Sni && non_tls != nullptr) {
      d.error(ps.obj.value_pos("hash_key"),
              fmt::format(R"({}: hash_key "sni": only for pools of TLS listeners (listener {} has no TLS))",
                          ps.obj.label, quote(non_tls->name)));
    }
    const ObjectSrc& ts = ps.tls;
    if (p.tls.enabled && passthrough != nullptr) {
      d.error(ts.value_pos("enabled"),
              fmt::format("{}: enabled: listener {} passes the client's own TLS through; it cannot be "
                          "encrypted again (use tls = \"terminate\" there)",
                          ts.label, quote(passthrough->name)));
    }
    if (p.tls.enabled && udp != nullptr) {
      d.error(ts.value_pos("enabled"),
              fmt::format("{}: enabled: not available for pools of udp listeners (listener {})", ts.label,
                          quote(udp->name)));
    }
    if (p.tls.sni == "$client" && ts.usable("sni") && plain != nullptr) {
      d.error(ts.value_pos("sni"),
              fmt::format(R"({}: sni "$client": listener {} has no TLS, so no client server name)", ts.label,
                          quote(plain->name)));
    }
    if (ts.usable("cert") != ts.usable("key") || p.tls.cert.empty() != p.tls.key.empty()) {
      const char* missing = p.tls.cert.empty() ? "cert" : "key";
      if (!ts.bad.count("cert") && !ts.bad.count("key")) {
        d.error(ts.key_pos(p.tls.cert.empty() ? "key" : "cert"),
                fmt::format("{}: {} is needed too (a client certificate and its key go together)", ts.label,
                            missing));
      }
    }
  }
}

// "tcp if any tcp listener uses the pool, else none": a pool only reached by
// udp listeners has no generic probe that is right for it.
void resolve_health_defaults(Config& cfg) {
  for (Pool& p : cfg.pools) {
    if (p.health_check.type_explicit) continue;
    bool tcp_user = false;
    for (const Listener& l : cfg.listeners) {
      if (l.protocol != Protocol::Tcp) continue;
      if (l.pool == p.name) tcp_user = true;
      for (const SniRoute& r : l.routes) tcp_user = tcp_user || r.pool == p.name;
    }
    p.health_check.type = tcp_user ? HealthType::Tcp : HealthType::None;
  }
}

}  // namespace

void validate(Config& cfg, const ConfigSrc& src, Diags& d) {
  check_listeners(cfg, src, d);
  check_pools(cfg, src, d);
  check_listener_tls(cfg, src, d);
  check_pool_tls(cfg, src, d);
  resolve_health_defaults(cfg);
}

}  // namespace lb::conf
