// Second pass: rules that involve more than one key or object, and the
// defaults that depend on them. A key that the first pass rejected is skipped
// here (ObjectSrc::bad), so a single mistake yields a single error.

#include <fmt/format.h>

#include <map>

#include "conf/internal.h"

namespace lb::conf {

namespace {

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

  // A reference can only be judged when every pool's name is known.
  bool pool_names_known = !src.root.bad.count("pool");
  std::vector<std::string> pool_names;
  for (size_t i = 0; i < cfg.pools.size(); ++i) {
    pool_names.push_back(cfg.pools[i].name);
    if (src.pools[i].obj.bad.count("name")) pool_names_known = false;
  }
  for (size_t i = 0; i < cfg.listeners.size(); ++i) {
    const Listener& l = cfg.listeners[i];
    const ObjectSrc& o = src.listeners[i].obj;
    if (!pool_names_known || !o.usable("pool") || cfg.find_pool(l.pool) != nullptr) continue;
    std::string hint = suggestion(l.pool, pool_names);
    d.error(o.value_pos("pool"),
            fmt::format("{}: pool {}: no such pool{}", o.label, quote(l.pool),
                        hint.empty() ? "" : fmt::format(" (did you mean {}?)", quote(hint))));
  }

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

// "tcp if any tcp listener uses the pool, else none": a pool only reached by
// udp listeners has no generic probe that is right for it.
void resolve_health_defaults(Config& cfg) {
  for (Pool& p : cfg.pools) {
    if (p.health_check.type_explicit) continue;
    bool tcp_user = false;
    for (const Listener& l : cfg.listeners) {
      if (l.pool == p.name && l.protocol == Protocol::Tcp) tcp_user = true;
    }
    p.health_check.type = tcp_user ? HealthType::Tcp : HealthType::None;
  }
}

}  // namespace

void validate(Config& cfg, const ConfigSrc& src, Diags& d) {
  check_listeners(cfg, src, d);
  check_pools(cfg, src, d);
  resolve_health_defaults(cfg);
}

}  // namespace lb::conf
