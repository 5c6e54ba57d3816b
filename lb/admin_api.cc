#include "lb/admin_api.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/admin/http_parser.h"
#include "core/log.h"
#include "lb/server.h"

namespace lb::app {

using admin::HttpRequest;
using admin::HttpResponse;
using json = nlohmann::ordered_json;

std::string prom_escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string hex_digest(uint64_t d) { return fmt::format("{:016x}", d); }

namespace {

HttpResponse json_response(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = body.dump() + "\n";
  return r;
}

HttpResponse json_error(int status, const std::string& message) {
  return json_response(status, json{{"error", message}});
}

// Accumulates one metric family: HELP and TYPE once, then its samples.
class Family {
 public:
  Family(std::string& out, const char* name, const char* type, const char* help) : out_(out), name_(name) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  template <typename T>
  void sample(const std::string& labels, T value) {
    fmt::format_to(std::back_inserter(out_), "{}{{{}}} {}\n", name_, labels, value);
  }

 private:
  std::string& out_;
  const char* name_;
};

std::string lbl(const char* k, const std::string& v) { return fmt::format("{}=\"{}\"", k, prom_escape(v)); }

HttpResponse metrics(Server& s) {
  std::string out;
  out.reserve(16384);
  const auto& listeners = s.listeners();
  std::vector<core::ListenerTotals> totals;
  for (auto& l : listeners) totals.push_back(l->stats->sum());

  {
    Family f(out, "lb_listener_connections_total", "counter", "Accepted TCP connections and new UDP sessions.");
    for (size_t i = 0; i < listeners.size(); ++i) f.sample(lbl("listener", listeners[i]->cfg.name), totals[i].connections);
  }
  {
    Family f(out, "lb_listener_active", "gauge", "Open TCP connections and live UDP sessions.");
    for (size_t i = 0; i < listeners.size(); ++i) f.sample(lbl("listener", listeners[i]->cfg.name), totals[i].active);
  }
  {
    Family f(out, "lb_listener_rejected_total", "counter", "Connections or sessions refused, by reason.");
    for (size_t i = 0; i < listeners.size(); ++i) {
      std::string l = lbl("listener", listeners[i]->cfg.name);
      f.sample(l + ",reason=\"acl\"", totals[i].rejected_acl);
      f.sample(l + ",reason=\"limit\"", totals[i].rejected_limit);
      f.sample(l + ",reason=\"no_backend\"", totals[i].rejected_no_backend);
      // Not in the spec's list: clients whose PROXY header was missing,
      // malformed or late (accept_proxy_protocol listeners only).
      if (listeners[i]->cfg.accept_proxy_protocol)
        f.sample(l + ",reason=\"proxy_protocol\"", totals[i].rejected_proxy);
    }
  }
  {
    Family f(out, "lb_udp_datagrams_total", "counter", "UDP datagrams received from clients (in) and sent to them (out).");
    for (size_t i = 0; i < listeners.size(); ++i) {
      if (listeners[i]->cfg.protocol != conf::Protocol::Udp) continue;
      std::string l = lbl("listener", listeners[i]->cfg.name);
      f.sample(l + ",direction=\"in\"", totals[i].datagrams_in);
      f.sample(l + ",direction=\"out\"", totals[i].datagrams_out);
    }
  }

  auto pools = s.control().snapshot();
  auto r = std::memory_order_relaxed;
  auto each_backend = [&](auto&& fn) {
    for (auto& p : pools)
      for (auto& b : p.backends) fn(p, b, lbl("pool", p.name) + "," + lbl("backend", b.backend->id));
  };
  {
    Family f(out, "lb_backend_up", "gauge", "1 when the backend is healthy, 0 when not.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.up ? 1 : 0); });
  }
  {
    Family f(out, "lb_backend_connections_total", "counter", "Connections and UDP sessions sent to the backend.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->total.load(r)); });
  }
  {
    Family f(out, "lb_backend_active", "gauge", "Open connections and live UDP sessions on the backend.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->active.load(r)); });
  }
  {
    Family f(out, "lb_backend_connect_failures_total", "counter", "Failed connection attempts to the backend.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->connect_failures.load(r)); });
  }
  {
    Family f(out, "lb_backend_bytes_total", "counter", "Bytes relayed, by direction.");
    each_backend([&](auto&, auto& b, const std::string& l) {
      f.sample(l + ",direction=\"to_backend\"", b.backend->bytes_to_backend.load(r));
      f.sample(l + ",direction=\"to_client\"", b.backend->bytes_to_client.load(r));
    });
  }
  {
    Family f(out, "lb_health_checks_total", "counter", "Health probes, by result.");
    each_backend([&](auto&, auto& b, const std::string& l) {
      f.sample(l + ",result=\"pass\"", b.backend->checks_pass.load(r));
      f.sample(l + ",result=\"fail\"", b.backend->checks_fail.load(r));
    });
  }
  {
    Family f(out, "lb_config_reloads_total", "counter", "Configuration reloads, by result.");
    f.sample("result=\"ok\"", s.reloads_ok());
    f.sample("result=\"error\"", s.reloads_error());
  }
  {
    Family f(out, "lb_pool_table_info", "gauge", "Digest of each hash pool's lookup table; always 1.");
    for (auto& p : pools)
      if (p.has_digest) f.sample(lbl("pool", p.name) + "," + lbl("digest", hex_digest(p.digest)), 1);
  }
  HttpResponse resp;
  resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
  resp.body = std::move(out);
  return resp;
}

HttpResponse status(Server& s) {
  json doc;
  doc["version"] = LB_VERSION;
  doc["generation"] = s.generation();
  json ls = json::array();
  for (auto& l : s.listeners()) {
    auto t = l->stats->sum();
    json binds = json::array();
    for (auto& b : l->cfg.bind) binds.push_back(b.text);
    ls.push_back({{"name", l->cfg.name},
                  {"protocol", conf::to_string(l->cfg.protocol)},
                  {"bind", binds},
                  {"pool", l->cfg.pool},
                  {"active", t.active},
                  {"total", t.connections}});
  }
  doc["listeners"] = ls;
  json ps = json::array();
  auto r = std::memory_order_relaxed;
  for (auto& p : s.control().snapshot()) {
    json bs = json::array();
    for (auto& b : p.backends) {
      bs.push_back({{"id", b.backend->id},
                    {"address", b.backend->address.text},
                    {"weight", b.weight},
                    {"health", b.up ? "up" : "down"},
                    {"admin_state", b.drain ? "drain" : "active"},
                    {"backup", b.backend->backup.load()},
                    {"active", b.backend->active.load(r)},
                    {"total", b.backend->total.load(r)}});
    }
    json pj = {{"name", p.name}, {"selector", conf::to_string(p.selector)}};
    pj["table_digest"] = p.has_digest ? json(hex_digest(p.digest)) : json(nullptr);
    pj["backends"] = bs;
    ps.push_back(std::move(pj));
  }
  doc["pools"] = ps;
  return json_response(200, doc);
}

HttpResponse backend_post(Server& s, const std::string& pool, const std::string& id, const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.empty())
    return json_error(400, "body must be a JSON object: {\"state\":\"drain\"|\"active\"} or {\"weight\":N}");
  // Validate everything before changing anything.
  std::optional<bool> drain;
  std::optional<unsigned> weight;
  for (auto& [k, v] : j.items()) {
    if (k == "state") {
      if (v == "drain") drain = true;
      else if (v == "active") drain = false;
      else return json_error(400, "state must be \"drain\" or \"active\"");
    } else if (k == "weight") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 1000)
        return json_error(400, "weight must be an integer from 0 to 1000");
      weight = v.get<unsigned>();
    } else {
      return json_error(400, "unknown field \"" + k + "\"");
    }
  }
  core::ControlPlane::Status st = core::ControlPlane::Status::Ok;
  if (drain) st = s.control().set_drain(pool, id, *drain);
  if (st == core::ControlPlane::Status::Ok && weight) st = s.control().set_weight(pool, id, *weight);
  if (st == core::ControlPlane::Status::NoPool) return json_error(404, "no pool \"" + pool + "\"");
  if (st == core::ControlPlane::Status::NoBackend)
    return json_error(404, "no backend \"" + id + "\" in pool \"" + pool + "\"");
  log::info("backend admin change pool={} backend={} body={}", pool, id, j.dump());
  json ok = {{"pool", pool}, {"id", id}};
  if (drain) ok["admin_state"] = *drain ? "drain" : "active";
  if (weight) ok["weight"] = *weight;
  return json_response(200, ok);
}

HttpResponse method_not_allowed() {
  HttpResponse r = json_error(405, "method not allowed");
  return r;
}

}  // namespace

HttpResponse handle_admin(Server& s, const HttpRequest& req) {
  const std::string& p = req.path;
  bool get = req.method == "GET" || req.method == "HEAD";
  if (p == "/healthz") {
    if (!get) return method_not_allowed();
    HttpResponse r;
    r.status = s.draining() ? 503 : 200;
    r.body = s.draining() ? "draining\n" : "ok\n";
    return r;
  }
  if (p == "/metrics") return get ? metrics(s) : method_not_allowed();
  if (p == "/api/v1/status") return get ? status(s) : method_not_allowed();
  static const std::string kPools = "/api/v1/pools/";
  if (p.rfind(kPools, 0) == 0) {
    // {pool}/backends/{id}; the path is already percent-decoded, and an id
    // may itself contain '/' only percent-encoded — split on the raw target.
    std::string raw = req.target.substr(0, req.target.find('?'));
    std::string rest = raw.substr(kPools.size());
    auto slash = rest.find("/backends/");
    if (slash != std::string::npos && slash > 0) {
      if (req.method != "POST") return method_not_allowed();
      std::string pool, id;
      bool ok = admin::percent_decode(rest.substr(0, slash), &pool) &&
                admin::percent_decode(rest.substr(slash + 10), &id);
      if (!ok || id.empty() || pool.find('/') != std::string::npos)
        return json_error(400, "malformed backend path");
      return backend_post(s, pool, id, req.body);
    }
  }
  return json_error(404, "not found");
}

}  // namespace lb::app
