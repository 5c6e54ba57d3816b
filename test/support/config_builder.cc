#include "test/support/config_builder.h"

#include <fmt/format.h>

namespace lb::test {

namespace {

// Extra lines, each ending in a newline.
std::string lines(const std::string& extra) {
  if (extra.empty() || extra.back() == '\n') return extra;
  return extra + "\n";
}

}  // namespace

ConfigBuilder& ConfigBuilder::global(unsigned workers, bool admin, const std::string& admin_extra,
                                     const std::string& global_extra) {
  global_ = fmt::format("[global]\nworkers = {}\n", workers);
  global_rest_ = lines(global_extra) + "\n";
  if (admin) global_rest_ += "[admin]\nlisten = \"127.0.0.1:0\"\n" + lines(admin_extra) + "\n";
  return *this;
}

ConfigBuilder& ConfigBuilder::listener(const std::string& name, const std::string& pool,
                                       const std::string& extra, const std::string& bind) {
  listeners_ += fmt::format("[[listener]]\nname = \"{}\"\nbind = \"{}\"\npool = \"{}\"\n{}\n", name, bind,
                            pool, lines(extra));
  return *this;
}

ConfigBuilder& ConfigBuilder::access_log(const std::string& target) {
  access_log_ = target;
  return *this;
}

ConfigBuilder& ConfigBuilder::route(const std::vector<std::string>& sni, const std::string& pool) {
  std::string names;
  for (const auto& n : sni) names += (names.empty() ? "\"" : ", \"") + n + "\"";
  listeners_ += fmt::format("[[listener.route]]\nsni = [{}]\npool = \"{}\"\n\n", names, pool);
  return *this;
}

ConfigBuilder& ConfigBuilder::certificate(const std::string& cert, const std::string& key) {
  listeners_ += fmt::format("[[listener.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\n", cert, key);
  return *this;
}

ConfigBuilder& ConfigBuilder::pool(const std::string& name, const std::string& health_type,
                                   const std::string& extra, const std::string& health_extra) {
  Pool p;
  p.head = fmt::format("[[pool]]\nname = \"{}\"\n{}", name, lines(extra));
  if (!health_type.empty())
    p.head += fmt::format("[pool.health_check]\ntype = \"{}\"\n{}", health_type, lines(health_extra));
  pools_.push_back(std::move(p));
  return *this;
}

ConfigBuilder& ConfigBuilder::backend(const std::string& address, const std::string& id,
                                      const std::string& extra) {
  if (pools_.empty()) pool("web");
  std::string& out = pools_.back().backends;
  out += fmt::format("[[pool.backend]]\naddress = \"{}\"\n", address);
  if (!id.empty()) out += fmt::format("id = \"{}\"\n", id);
  out += lines(extra);
  return *this;
}

ConfigBuilder& ConfigBuilder::pool_tls(const std::string& extra) {
  if (pools_.empty()) pool("web");
  pools_.back().head += "[pool.tls]\nenabled = true\n" + lines(extra);
  return *this;
}

ConfigBuilder& ConfigBuilder::raw(const std::string& toml) {
  raw_ += "\n" + lines(toml);
  return *this;
}

std::string ConfigBuilder::str() const {
  std::string out;
  if (!global_.empty()) out = global_ + fmt::format("access_log = \"{}\"\n", access_log_) + global_rest_;
  out += listeners_;
  for (const auto& p : pools_) out += p.head + p.backends + "\n";
  return out + raw_;
}

ConfigBuilder web_config(const std::string& backend, unsigned workers, bool admin,
                         const std::string& listener_extra) {
  ConfigBuilder b;
  b.global(workers, admin).listener("web", "web", listener_extra).pool("web").backend(backend);
  return b;
}

}  // namespace lb::test
