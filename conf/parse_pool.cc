// The parse step for one [[pool]] table: selector and hashing, health check,
// outlier detection, TLS to the backends, and the backends. See parse.cc for
// the rules every key follows.
#include "conf/reader.h"

namespace lb::conf {

namespace {

void read_expect_status(Reader& r, ExpectStatus& out) {
  constexpr std::string_view key = "expect_status";
  const toml::node* n = r.get(key);
  if (n == nullptr) return;
  constexpr const char* what = R"(a status code 100-599 or a class "1xx".."5xx")";
  if (const auto* i = n->as_integer()) {
    if (i->get() < 100 || i->get() > 599) {
      r.value_error(key, *n, "out of range 100-599");
      return;
    }
    out = ExpectStatus{static_cast<int>(i->get()), 0};
  } else if (const auto* s = n->as_string()) {
    const std::string& v = s->get();
    bool is_class = v.size() == 3 && v[0] >= '1' && v[0] <= '5' && (v[1] == 'x' || v[1] == 'X') &&
                    (v[2] == 'x' || v[2] == 'X');
    if (!is_class) {
      r.value_error(key, *n, fmt::format("expected {}", what));
      return;
    }
    out = ExpectStatus{0, v[0] - '0'};
  } else {
    r.type_error(key, *n, what);
  }
}

std::string check_http_path(const std::string& s) {
  if (s.empty() || s[0] != '/') return R"(must start with "/")";
  return no_space_or_control(s);
}

std::string check_dns_name(const std::string& s) {
  if (s.empty()) return R"(must not be empty (use "." for the root))";
  if (std::string why = no_space_or_control(s); !why.empty()) return why;
  if (s == ".") return {};
  if (s.size() > 253) return "longer than 253 characters";
  size_t label = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == '.') {
      if (label == 0 && i != s.size()) return "has an empty label";
      if (label > 63) return "has a label longer than 63 characters";
      label = 0;
    } else {
      ++label;
    }
  }
  return {};
}

void read_health_check(const toml::table& t, HealthCheck& h, ObjectSrc& src, Diags& d,
                       const std::string& pool_label) {
  src.pos = pos_of(t.source());
  Reader r(t, src, d, pool_label + " health_check");
  if (r.read_enum("type", h.type, kHealthTypeNames)) h.type_explicit = true;
  r.read_duration("interval", h.interval, Zero::Refused);
  r.read_duration("timeout", h.timeout, Zero::Refused);
  r.read_uint("rise", h.rise, 1, kUnbounded);
  r.read_uint("fall", h.fall, 1, kUnbounded);
  r.read_uint("port", h.port, 0, 65535);
  r.read_string("http_path", h.http_path, check_http_path);
  r.read_string("http_host", h.http_host, no_space_or_control);
  read_expect_status(r, h.expect_status);
  r.read_string("tls_sni", h.tls_sni, no_space_or_control);
  r.read_string("dns_query", h.dns_query, check_dns_name);
  r.read_string("udp_send", h.udp_send);
  r.read_string("udp_expect", h.udp_expect);
  r.finish();
}

void read_outlier(const toml::table& t, Outlier& o, ObjectSrc& src, Diags& d, const std::string& pool_label) {
  src.pos = pos_of(t.source());
  Reader r(t, src, d, pool_label + " outlier");
  r.read_uint("consecutive_failures", o.consecutive_failures, 0, kUnbounded);
  r.read_duration("ejection_time", o.ejection_time, Zero::Refused);
  r.finish();
}

void read_backend(const toml::table& t, size_t index, Backend& b, ObjectSrc& src, Diags& d,
                  const std::string& pool_label) {
  src.pos = pos_of(t.source());
  // Name the backend the way metrics and the admin API will: by id, which
  // defaults to the address text.
  std::string label = fmt::format("{} backend #{}", pool_label, index + 1);
  const toml::node* id = t.get("id");
  const toml::node* address = t.get("address");
  if (id != nullptr && id->is_string() && !id->as_string()->get().empty()) {
    label = fmt::format("{} backend {}", pool_label, quote(id->as_string()->get()));
  } else if (address != nullptr && address->is_string()) {
    label = fmt::format("{} backend {}", pool_label, quote(address->as_string()->get()));
  }
  Reader r(t, src, d, std::move(label));

  r.require("address");
  if (const toml::node* n = r.get("address")) {
    if (!n->is_string()) {
      r.type_error("address", *n, R"(an address string such as "10.0.0.11:8080")");
    } else {
      const std::string& text = n->as_string()->get();
      b.address.text = text;
      // Host names are looked up after the whole file checked out (load.cc).
      auto ep = parse_endpoint_detailed(text, PortRule::NonZero, HostRule::HostnameLater);
      if (ep.value) {
        b.address = std::move(*ep.value);
      } else {
        r.value_error("address", *n, ep.error);
      }
    }
  }
  // "" is the spec's spelling of "default to the address".
  r.read_string("id", b.id,
                [](const std::string& s) { return s.empty() ? std::string() : no_space_or_control(s); });
  if (b.id.empty()) b.id = b.address.text;
  r.read_uint("weight", b.weight, 0, 1000);
  r.read_bool("backup", b.backup);
  r.read_uint("max_connections", b.max_connections, 0, kUnbounded);
  r.finish();
}

void read_pool_tls(const toml::table& t, PoolTls& tls, ObjectSrc& src, Diags& d,
                   const std::string& pool_label) {
  src.pos = pos_of(t.source());
  Reader r(t, src, d, pool_label + " tls");
  r.read_bool("enabled", tls.enabled);
  r.read_string("sni", tls.sni, no_space_or_control);
  r.read_bool("verify", tls.verify);
  r.read_string("ca_file", tls.ca_file);
  r.read_string("cert", tls.cert);
  r.read_string("key", tls.key);
  r.finish();
}

}  // namespace

void read_pool(const toml::table& t, size_t index, Pool& p, PoolSrc& ps, Diags& d) {
  ps.obj.pos = pos_of(t.source());
  p.pos = ps.obj.pos;
  // Sub-tables not written point at the pool itself.
  ps.health_check.pos = ps.outlier.pos = ps.tls.pos = ps.obj.pos;
  Reader r(t, ps.obj, d, fmt::format("pool #{}", index + 1));
  if (r.read_string("name", p.name, non_empty_name)) r.relabel("pool " + quote(p.name));
  r.require("name");
  const std::string label = r.label();
  ps.health_check.label = label + " health_check";
  ps.outlier.label = label + " outlier";
  ps.tls.label = label + " tls";

  r.read_enum("selector", p.selector, kSelectorNames);
  r.read_enum("hash_key", p.hash_key, kHashKeyNames);
  if (r.read_uint("hash_balance_factor", p.hash_balance_factor, 0, kUnbounded) &&
      p.hash_balance_factor != 0 && p.hash_balance_factor <= 100) {
    r.value_error("hash_balance_factor", *t.get("hash_balance_factor"),
                  "must be 0 (off) or greater than 100 (e.g. 125 = at most 1.25x the mean load)");
    p.hash_balance_factor = 0;
  }
  r.read_duration("slow_start", p.slow_start, Zero::Allowed);

  if (const toml::table* h = r.read_table("health_check", "[pool.health_check]")) {
    read_health_check(*h, p.health_check, ps.health_check, d, label);
  }
  if (const toml::table* o = r.read_table("outlier", "[pool.outlier]")) {
    read_outlier(*o, p.outlier, ps.outlier, d, label);
  }
  if (const toml::table* tt = r.read_table("tls", "[pool.tls]")) read_pool_tls(*tt, p.tls, ps.tls, d, label);
  read_each(r, "backend", "[[pool.backend]]", p.backends, ps.backends, d,
            [&](const toml::table& bt, size_t i, Backend& b, ObjectSrc& bs, Diags& dd) {
              read_backend(bt, i, b, bs, dd, label);
            });
  r.finish();
}

}  // namespace lb::conf
