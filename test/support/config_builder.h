// Builds lb.toml text for tests, so the usual shapes are written once.
//
//   ConfigBuilder().global(2).listener("web", "web", "idle_timeout = \"300ms\"")
//       .pool("web").backend(addr).str()
//
// Extra keys are TOML lines appended to their table as given. A pool's
// [pool.health_check] table is written only when health_type is not empty.
// route() and certificate() belong to the listener written last, pool_tls()
// and backend() to the pool written last. web_config() is the shape most
// end-to-end tests start from.
//
// Thread rules: plain values; no shared state.
#pragma once

#include <string>
#include <vector>

namespace lb::test {

class ConfigBuilder {
 public:
  // [global] with `workers`, access_log off and `global_extra` keys; [admin]
  // on 127.0.0.1:0 when `admin`, with `admin_extra` keys (allow, api_token_file...).
  ConfigBuilder& global(unsigned workers = 1, bool admin = false, const std::string& admin_extra = "",
                        const std::string& global_extra = "");
  // A [[listener]] `name` in front of `pool` (TCP unless `extra` says
  // protocol = "udp").
  ConfigBuilder& listener(const std::string& name, const std::string& pool, const std::string& extra = "",
                          const std::string& bind = "127.0.0.1:0");
  // [global] access_log: "off" (the default), "stderr" or a path.
  ConfigBuilder& access_log(const std::string& target);
  // A [[listener.route]] of the last listener.
  ConfigBuilder& route(const std::vector<std::string>& sni, const std::string& pool);
  // A [[listener.certificate]] of the last listener.
  ConfigBuilder& certificate(const std::string& cert, const std::string& key);
  // A [[pool]]; `extra` keys go in [[pool]], `health_extra` in [pool.health_check].
  ConfigBuilder& pool(const std::string& name, const std::string& health_type = "none",
                      const std::string& extra = "", const std::string& health_extra = "");
  // A [[pool.backend]] of the last pool; no id line when `id` is empty.
  ConfigBuilder& backend(const std::string& address, const std::string& id = "",
                         const std::string& extra = "");
  // [pool.tls] of the last pool, enabled, with `extra` keys (sni, ca_file...).
  ConfigBuilder& pool_tls(const std::string& extra);
  // Any further TOML, written after everything else.
  ConfigBuilder& raw(const std::string& toml);

  std::string str() const;
  operator std::string() const { return str(); }  // NOLINT: reads as the text it builds

 private:
  struct Pool {
    std::string head;      // [[pool]] and [pool.health_check]
    std::string backends;  // [[pool.backend]] tables
  };
  std::string global_;       // [global] up to its access_log key
  std::string global_rest_;  // the rest of [global], and [admin]
  std::string access_log_ = "off";
  std::string listeners_;
  std::vector<Pool> pools_;
  std::string raw_;
};

// [global] (`workers`, access log off, [admin] when `admin`), TCP listener
// "web" on 127.0.0.1:0 with `listener_extra` keys, in front of pool "web" of
// one backend at `backend` without active health checks.
ConfigBuilder web_config(const std::string& backend, unsigned workers = 1, bool admin = false,
                         const std::string& listener_extra = "");

}  // namespace lb::test
