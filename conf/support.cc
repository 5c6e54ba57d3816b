// Keys of the spec that the rest of lb does not implement yet.
//
// The loader accepts every key of the spec's schema, but a value that asks for
// an unbuilt feature must fail loudly instead of being silently ignored. Each
// row below names a key and says when its value asks for the feature; such a
// value is rejected with `<object>: <key>: not supported yet`, pointing at the
// key. When a feature lands, delete its row (and its row in
// test/unit/conf/support_test.cc).

#include <fmt/format.h>

#include "conf/internal.h"

namespace lb::conf {

namespace {

enum class Scope { Global, Listener, Pool, HealthCheck, Outlier, Backend };

// The object being checked; only the pointers of the row's scope are set.
struct Subject {
  const Global* global = nullptr;
  const Listener* listener = nullptr;
  const Pool* pool = nullptr;
  const Backend* backend = nullptr;
};

struct NotSupportedYet {
  Scope scope;
  const char* key;
  bool (*in_use)(const Subject&);  // true when the value asks for the feature
};

constexpr NotSupportedYet kNotSupportedYet[] = {
    // [[listener]]
    {Scope::Listener, "proxy_protocol",
     [](const Subject& s) { return s.listener->proxy_protocol != ProxyProtocol::Off; }},
    {Scope::Listener, "accept_proxy_protocol",
     [](const Subject& s) { return s.listener->accept_proxy_protocol; }},
    {Scope::Listener, "max_connections",
     [](const Subject& s) { return s.listener->max_connections != 0; }},
    {Scope::Listener, "max_connections_per_source",
     [](const Subject& s) { return s.listener->max_connections_per_source != 0; }},
    {Scope::Listener, "allow", [](const Subject& s) { return !s.listener->allow.empty(); }},
    {Scope::Listener, "deny", [](const Subject& s) { return !s.listener->deny.empty(); }},
};

void check(const NotSupportedYet& row, const Subject& subject, const ObjectSrc& obj, Diags& d) {
  if (obj.bad.count(row.key) || !row.in_use(subject)) return;
  d.error(obj.key_pos(row.key), fmt::format("{}: {}: not supported yet", obj.label, row.key));
}

}  // namespace

void check_support(const Config& cfg, const ConfigSrc& src, Diags& d) {
  for (const NotSupportedYet& row : kNotSupportedYet) {
    switch (row.scope) {
      case Scope::Global:
        check(row, Subject{.global = &cfg.global}, src.global, d);
        break;
      case Scope::Listener:
        for (size_t i = 0; i < cfg.listeners.size(); ++i) {
          check(row, Subject{.listener = &cfg.listeners[i]}, src.listeners[i].obj, d);
        }
        break;
      case Scope::Pool:
      case Scope::HealthCheck:
      case Scope::Outlier:
        for (size_t i = 0; i < cfg.pools.size(); ++i) {
          const PoolSrc& ps = src.pools[i];
          const ObjectSrc& obj = row.scope == Scope::Pool          ? ps.obj
                                 : row.scope == Scope::HealthCheck ? ps.health_check
                                                                   : ps.outlier;
          check(row, Subject{.pool = &cfg.pools[i]}, obj, d);
        }
        break;
      case Scope::Backend:
        for (size_t i = 0; i < cfg.pools.size(); ++i) {
          for (size_t j = 0; j < cfg.pools[i].backends.size(); ++j) {
            check(row, Subject{.pool = &cfg.pools[i], .backend = &cfg.pools[i].backends[j]},
                  src.pools[i].backends[j], d);
          }
        }
        break;
    }
  }
}

}  // namespace lb::conf
