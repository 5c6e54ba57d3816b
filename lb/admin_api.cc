#include "lb/admin_api.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/acl.h"
#include "core/admin/http_parser.h"
#include "core/log.h"
#include "lb/admin_metrics.h"
#include "lb/dashboard.h"

namespace lb::app {

using admin::HttpRequest;
using admin::HttpResponse;
using json = nlohmann::ordered_json;

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

// An integer when it is one (always, outside slow start), else two decimals.
json effective_weight_json(double w) {
  double whole = std::round(w);
  if (std::abs(w - whole) < 1e-9) return json(static_cast<uint64_t>(whole));
  return json(std::round(w * 100) / 100);
}

// Always an object, so a client can read last_check.result without a test:
// result and age_ms are null when nothing was probed (type none, or the first
// probe has not finished), and detail says which.
json last_check_json(conf::HealthType type, const core::Backend& b,
                     std::chrono::steady_clock::time_point now) {
  if (type == conf::HealthType::None)
    return {{"result", nullptr}, {"detail", "no health check (type none)"}, {"age_ms", nullptr}};
  auto c = b.last_check();
  if (!c) return {{"result", nullptr}, {"detail", "not probed yet"}, {"age_ms", nullptr}};
  auto age = std::chrono::duration_cast<std::chrono::milliseconds>(now - c->at).count();
  return {
      {"result", c->pass ? "pass" : "fail"}, {"detail", c->detail}, {"age_ms", std::max<int64_t>(0, age)}};
}

HttpResponse status(AdminControl& s) {
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
                  {"total", t.connections},
                  {"rejected",
                   {{"acl", t.rejected_acl},
                    {"limit", t.rejected_limit},
                    {"no_backend", t.rejected_no_backend},
                    {"proxy_protocol", t.rejected_proxy},
                    {"tls", t.rejected_tls}}}});
  }
  doc["listeners"] = ls;
  json ps = json::array();
  auto r = std::memory_order_relaxed;
  const auto now = std::chrono::steady_clock::now();
  for (auto& p : s.control().snapshot()) {
    json bs = json::array();
    for (auto& b : p.backends) {
      bs.push_back({{"id", b.backend->id},
                    {"address", b.backend->address.text},
                    {"weight", b.weight},
                    {"effective_weight", effective_weight_json(b.effective_weight)},
                    {"health", b.up ? "up" : "down"},
                    {"admin_state", b.drain ? "drain" : "active"},
                    {"backup", b.backend->backup.load()},
                    {"active", b.backend->active.load(r)},
                    {"total", b.backend->total.load(r)},
                    {"connect_failures", b.backend->connect_failures.load(r)},
                    {"bytes_to_backend", b.backend->bytes_to_backend.load(r)},
                    {"bytes_to_client", b.backend->bytes_to_client.load(r)},
                    {"last_check", last_check_json(p.health_type, *b.backend, now)}});
    }
    json pj = {{"name", p.name}, {"selector", conf::to_string(p.selector)}};
    pj["table_digest"] = p.has_digest ? json(hex_digest(p.digest)) : json(nullptr);
    pj["backends"] = bs;
    ps.push_back(std::move(pj));
  }
  doc["pools"] = ps;
  return json_response(200, doc);
}

HttpResponse backend_post(AdminControl& s, const std::string& pool, const std::string& id,
                          const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.empty())
    return json_error(400, "body must be a JSON object: {\"state\":\"drain\"|\"active\"} or {\"weight\":N}");
  // Validate everything before changing anything.
  std::optional<bool> drain;
  std::optional<unsigned> weight;
  for (auto& [k, v] : j.items()) {
    if (k == "state") {
      if (v == "drain")
        drain = true;
      else if (v == "active")
        drain = false;
      else
        return json_error(400, "state must be \"drain\" or \"active\"");
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

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// The media type of a Content-Type value, without parameters or blanks.
std::string_view media_type(std::string_view v) {
  v = v.substr(0, v.find(';'));
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  return v;
}

// IPv4-mapped IPv6 (a v4 client of a [::] listener) as plain IPv4.
sockaddr_storage unmapped(const sockaddr_storage& ss) {
  if (ss.ss_family != AF_INET6) return ss;
  const auto* s6 = reinterpret_cast<const sockaddr_in6*>(&ss);
  if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) return ss;
  sockaddr_storage out{};
  auto* s4 = reinterpret_cast<sockaddr_in*>(&out);
  s4->sin_family = AF_INET;
  s4->sin_port = s6->sin6_port;
  std::memcpy(&s4->sin_addr, &s6->sin6_addr.s6_addr[12], 4);
  return out;
}

bool is_loopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr) >> 24) == 127;
  if (ss.ss_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr);
  return false;
}

}  // namespace

// The admin address is the one this connection reached (its local address:
// with listen = "0.0.0.0:9900" that is the interface the browser used). An
// origin is the same when it is http, names that IP literally (or
// "localhost" on a loopback address) and the same port. A host name other
// than localhost never matches: a page of evil.example that re-points its
// name at 127.0.0.1 (DNS rebinding) keeps its own origin and is refused.
bool same_origin(std::string_view origin, const sockaddr_storage& local_addr) {
  static constexpr std::string_view kScheme = "http://";
  if (origin.size() <= kScheme.size() || !iequals(origin.substr(0, kScheme.size()), kScheme)) return false;
  std::string_view hostport = origin.substr(kScheme.size());
  if (hostport.find_first_of("/?#@") != std::string_view::npos) return false;
  std::string host;
  std::string_view port_text;
  if (hostport.front() == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return false;
    host = std::string(hostport.substr(1, close - 1));
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port_text = rest.substr(1);
    }
  } else {
    size_t colon = hostport.rfind(':');
    host = std::string(hostport.substr(0, colon));
    if (colon != std::string_view::npos) port_text = hostport.substr(colon + 1);
  }
  unsigned port = 80;
  if (!port_text.empty()) {
    if (port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string_view::npos)
      return false;
    port = static_cast<unsigned>(std::stoul(std::string(port_text)));
  }
  const sockaddr_storage local = unmapped(local_addr);
  unsigned local_port = 0;
  if (local.ss_family == AF_INET)
    local_port = ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
  else if (local.ss_family == AF_INET6)
    local_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
  else
    return false;
  if (port != local_port) return false;
  if (iequals(host, "localhost")) return is_loopback(local);
  if (local.ss_family == AF_INET) {
    in_addr a{};
    return inet_pton(AF_INET, host.c_str(), &a) == 1 &&
           a.s_addr == reinterpret_cast<const sockaddr_in*>(&local)->sin_addr.s_addr;
  }
  in6_addr a{};
  return inet_pton(AF_INET6, host.c_str(), &a) == 1 &&
         std::memcmp(&a, &reinterpret_cast<const sockaddr_in6*>(&local)->sin6_addr, sizeof a) == 0;
}

// Constant time in the token's content: both sides are hashed first, so even
// the length of the expected token does not show in the timing, then the
// digests are compared with CRYPTO_memcmp.
bool bearer_matches(const std::string* authorization, const std::string& token) {
  if (authorization == nullptr) return false;
  std::string_view v = *authorization;
  static constexpr std::string_view kBearer = "bearer ";
  if (v.size() < kBearer.size() || !iequals(v.substr(0, kBearer.size()), kBearer)) return false;
  v.remove_prefix(kBearer.size());
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  unsigned char got[SHA256_DIGEST_LENGTH];
  unsigned char want[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(v.data()), v.size(), got);
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), want);
  return CRYPTO_memcmp(got, want, sizeof got) == 0;
}

bool admin_peer_allowed(const conf::Admin& admin, const sockaddr* peer) {
  // Built per connection: admin connections are rare, and the list always
  // is the current configuration's, reloads included.
  return admin.allow.empty() || core::Acl(admin.allow, {}).permits(peer);
}

namespace {

// The rules every request passes before it is routed; a response when it
// is refused. POSTs change state: a page of another origin must not be able
// to send one (403 on a foreign Origin; 415 unless the body is declared
// JSON, which no HTML form and no CORS-free "simple" request can do), and
// with a token configured neither they nor the API's reads go unauthenticated.
std::optional<HttpResponse> refuse(const AdminControl& s, const HttpRequest& req) {
  const bool post = req.method == "POST";
  if (post) {
    if (const std::string* origin = req.header("origin"); origin && !same_origin(*origin, req.local))
      return json_error(403, "cross-origin request refused: Origin is not the admin address");
  }
  const std::string& token = s.config().admin.api_token;
  if (!token.empty() && (post || req.path.rfind("/api/", 0) == 0) &&
      !bearer_matches(req.header("authorization"), token)) {
    HttpResponse r =
        json_error(401, "missing or wrong bearer token (Authorization: Bearer <api_token_file>)");
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
  }
  if (post) {
    const std::string* ct = req.header("content-type");
    if (ct == nullptr || !iequals(media_type(*ct), "application/json"))
      return json_error(415, "POST bodies must be Content-Type: application/json");
  }
  return std::nullopt;
}

HttpResponse method_not_allowed() {
  HttpResponse r = json_error(405, "method not allowed");
  return r;
}

}  // namespace

HttpResponse handle_admin(AdminControl& s, const HttpRequest& req) {
  if (auto refused = refuse(s, req)) return *refused;
  const std::string& p = req.path;
  bool get = req.method == "GET" || req.method == "HEAD";
  if (p == "/healthz") {
    if (!get) return method_not_allowed();
    HttpResponse r;
    r.status = s.draining() ? 503 : 200;
    r.body = s.draining() ? "draining\n" : "ok\n";
    return r;
  }
  if (p == "/metrics") return get ? metrics_response(s) : method_not_allowed();
  if (p == "/api/v1/status") return get ? status(s) : method_not_allowed();
  if (p == "/api/v1/upgrade") {
    if (req.method != "POST") return method_not_allowed();
    std::string refused = s.upgrade();
    if (!refused.empty()) return json_error(409, refused);
    return json_response(202, json{{"status", "upgrading"}, {"generation", s.generation()}});
  }
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
  if (auto page = serve_dashboard(req)) return std::move(*page);
  return json_error(404, "not found");
}

}  // namespace lb::app
