// First pass: the toml++ tree into Config.
//
// Everything a single key can decide on its own is checked here, next to the
// line that reads the key: its type, its syntax (durations, addresses, CIDRs,
// enum names) and its range. A key that fails keeps its default in Config and
// is marked bad in ConfigSrc, so later passes do not pile a second error on it.
// Every key the schema does not read is reported as unknown.

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>

#include "conf/internal.h"

namespace lb::conf {

namespace {

SourcePos pos_of(const toml::source_region& r) {
  return SourcePos{static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
}

// How a value reads in a message: scalars as written, containers by kind.
std::string describe(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return quote(n.as_string()->get());
    case toml::node_type::integer:
      return std::to_string(n.as_integer()->get());
    case toml::node_type::floating_point:
      return fmt::format("{}", n.as_floating_point()->get());
    case toml::node_type::boolean:
      return n.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

// Names, ids and strings that end up in HTTP requests, log lines and URLs:
// refuse what would break those lines. Returns the reason, or "" when fine.
std::string no_space_or_control(const std::string& s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7f) return "must not contain spaces or control characters";
  }
  return {};
}

std::string no_control(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return "must not contain control characters";
  }
  return {};
}

std::string non_empty_name(const std::string& s) {
  if (s.empty()) return "must not be empty";
  return no_space_or_control(s);
}

enum class Zero { Allowed, Refused };

constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

// Reads the keys of one schema table. Each read_* call both declares the key
// as part of the schema and checks it; finish() then reports every key of
// the table that nobody asked for.
class Reader {
 public:
  Reader(const toml::table& t, ObjectSrc& src, Diags& diags, std::string label)
      : table_(t), src_(src), diags_(diags) {
    src_.label = std::move(label);
    for (auto&& [k, v] : t) {
      src_.keys.emplace(std::string(k.str()), KeyPos{pos_of(k.source()), pos_of(v.source())});
    }
  }

  void relabel(std::string label) { src_.label = std::move(label); }
  const std::string& label() const { return src_.label; }

  // The value of `key`, or nullptr when absent. Declares the key as known.
  const toml::node* get(std::string_view key) {
    known_.emplace_back(key);
    return table_.get(key);
  }

  void require(std::string_view key) {
    if (!src_.has(key)) {
      diags_.error(src_.pos, fmt::format("{}missing required key {}", prefix(), quote(key)));
      src_.bad.emplace(key);
    }
  }

  // `OBJ: KEY VALUE: why`, at the value (or at an element of an array value).
  void value_error(std::string_view key, const toml::node& n, std::string_view why) {
    diags_.error(pos_of(n.source()), fmt::format("{}{} {}: {}", prefix(), key, describe(n), why));
    src_.bad.emplace(key);
  }

  // `OBJ: KEY: what`, at the node.
  void key_error(std::string_view key, const toml::node& n, std::string_view what) {
    diags_.error(pos_of(n.source()), fmt::format("{}{}: {}", prefix(), key, what));
    src_.bad.emplace(key);
  }

  // `OBJ: KEY: expected WHAT, got VALUE`.
  void type_error(std::string_view key, const toml::node& n, std::string_view expected) {
    diags_.error(pos_of(n.source()),
                 fmt::format("{}{}: expected {}, got {}", prefix(), key, expected, describe(n)));
    src_.bad.emplace(key);
  }

  // A string; `check` returns the reason it is unacceptable, or "".
  bool read_string(std::string_view key, std::string& out,
                   const std::function<std::string(const std::string&)>& check = {}) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    const auto* s = n->as_string();
    if (s == nullptr) {
      type_error(key, *n, "a string");
      return false;
    }
    if (check) {
      if (std::string why = check(s->get()); !why.empty()) {
        value_error(key, *n, why);
        return false;
      }
    }
    out = s->get();
    return true;
  }

  bool read_bool(std::string_view key, bool& out) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    const auto* b = n->as_boolean();
    if (b == nullptr) {
      type_error(key, *n, "true or false");
      return false;
    }
    out = b->get();
    return true;
  }

  // An integer in [min, max]; max == kUnbounded means "whatever T holds".
  template <class T>
  bool read_uint(std::string_view key, T& out, uint64_t min, uint64_t max) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    const auto* i = n->as_integer();
    if (i == nullptr) {
      type_error(key, *n, "an integer");
      return false;
    }
    const int64_t v = i->get();
    const bool unbounded = max == kUnbounded;
    const uint64_t hi = std::min<uint64_t>(max, std::numeric_limits<T>::max());
    if (v < 0 || static_cast<uint64_t>(v) < min) {
      value_error(key, *n,
                  !unbounded ? fmt::format("out of range {}-{}", min, max)
                  : min == 0 ? std::string("must not be negative")
                             : fmt::format("must be at least {}", min));
      return false;
    }
    if (static_cast<uint64_t>(v) > hi) {
      value_error(key, *n,
                  unbounded ? std::string("too large") : fmt::format("out of range {}-{}", min, max));
      return false;
    }
    out = static_cast<T>(v);
    return true;
  }

  // A size string ("64KiB"), in bytes, at least `min`.
  bool read_size(std::string_view key, uint64_t& out, uint64_t min, std::string_view min_text) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    const auto* s = n->as_string();
    if (s == nullptr) {
      type_error(key, *n, R"(a size string such as "512MiB")");
      return false;
    }
    auto v = parse_size_detailed(s->get());
    if (!v.value) {
      value_error(key, *n, v.error);
      return false;
    }
    if (*v.value < min) {
      value_error(key, *n, fmt::format("must be at least {}", min_text));
      return false;
    }
    out = *v.value;
    return true;
  }

  bool read_duration(std::string_view key, Duration& out, Zero zero) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    const auto* s = n->as_string();
    if (s == nullptr) {
      type_error(key, *n, R"(a duration string such as "2s")");
      return false;
    }
    auto d = parse_duration_detailed(s->get());
    if (!d.value) {
      value_error(key, *n, d.error);
      return false;
    }
    if (zero == Zero::Refused && d.value->count() == 0) {
      value_error(key, *n, "must be greater than 0");
      return false;
    }
    out = *d.value;
    return true;
  }

  template <class E, size_t N>
  bool read_enum(std::string_view key, E& out, const EnumName<E> (&names)[N]) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    std::string choices;
    for (const auto& e : names) {
      choices += choices.empty() ? "" : ", ";
      choices += e.name;
    }
    const auto* s = n->as_string();
    if (s == nullptr) {
      type_error(key, *n, "one of " + choices);
      return false;
    }
    for (const auto& e : names) {
      if (s->get() == e.name) {
        out = e.value;
        return true;
      }
    }
    value_error(key, *n, "expected one of " + choices);
    return false;
  }

  // A table value (a [section] or an inline table); nullptr when absent or wrong.
  const toml::table* read_table(std::string_view key, std::string_view how_written) {
    const toml::node* n = get(key);
    if (n == nullptr) return nullptr;
    if (const auto* t = n->as_table()) return t;
    type_error(key, *n, fmt::format("a table ({})", how_written));
    return nullptr;
  }

  // An array of tables ([[section]] blocks or inline); reports elements that
  // are not tables. Returns nullptr when absent or not an array.
  const toml::array* read_table_array(std::string_view key, std::string_view how_written) {
    const toml::node* n = get(key);
    if (n == nullptr) return nullptr;
    const auto* a = n->as_array();
    if (a == nullptr) {
      type_error(key, *n, fmt::format("an array of tables ({})", how_written));
      return nullptr;
    }
    for (const auto& e : *a) {
      if (!e.is_table()) type_error(key, e, fmt::format("a table ({})", how_written));
    }
    return a;
  }

  void finish() {
    for (auto&& [k, v] : table_) {
      std::string_view name = k.str();
      if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
      std::string hint = suggestion(name, known_);
      diags_.error(pos_of(k.source()),
                   fmt::format("{}unknown key {}{}", prefix(), quote(name),
                               hint.empty() ? "" : fmt::format(" (did you mean {}?)", quote(hint))));
    }
  }

 private:
  std::string prefix() const { return src_.label.empty() ? "" : src_.label + ": "; }

  const toml::table& table_;
  ObjectSrc& src_;
  Diags& diags_;
  std::vector<std::string> known_;
};

// ---- the schema --------------------------------------------------------------

void read_global(const toml::table& t, Global& g, ObjectSrc& src, Diags& d) {
  src.pos = pos_of(t.source());
  Reader r(t, src, d, "global");
  r.read_uint("workers", g.workers, 0, 1024);
  // 0 would leave "unlimited or nothing?" to the reader; the spec has no
  // "0 = unlimited" here, so ask for a real number.
  r.read_uint("max_connections", g.max_connections, 1, kUnbounded);
  // Below a few connections' backpressure windows (256 KiB each) every
  // busy connection would crawl in small reads.
  r.read_size("max_buffer_memory", g.max_buffer_memory, uint64_t{1} << 20, "1MiB");
  r.read_duration("shutdown_timeout", g.shutdown_timeout, Zero::Allowed);
  r.read_duration("drain_delay", g.drain_delay, Zero::Allowed);
  r.read_string("user", g.user, no_space_or_control);
  r.read_enum("log_level", g.log_level, kLogLevelNames);
  r.read_string("access_log", g.access_log, [](const std::string& s) -> std::string {
    if (s.empty()) return R"(expected "off", "stderr" or a file path)";
    return {};
  });
  r.finish();
}

void read_cidrs(Reader& r, std::string_view key, std::vector<Cidr>& out) {
  const toml::node* n = r.get(key);
  if (n == nullptr) return;
  const auto* a = n->as_array();
  if (a == nullptr) {
    r.type_error(key, *n, R"(an array of CIDR strings such as ["10.0.0.0/8"])");
    return;
  }
  for (const auto& e : *a) {
    if (!e.is_string()) {
      r.type_error(key, e, R"(a CIDR string such as "10.0.0.0/8")");
      continue;
    }
    const std::string& text = e.as_string()->get();
    auto c = parse_cidr_detailed(text);
    if (!c.value) {
      r.value_error(key, e, c.error);
    } else if (c.value->host_bits_set) {
      // Almost always a typo for a narrower prefix: do not guess which.
      r.value_error(key, e,
                    fmt::format("address has bits set beyond the /{} prefix", c.value->cidr.prefix_len));
    } else {
      out.push_back(std::move(c.value->cidr));
    }
  }
}

}  // namespace

std::string read_token_file(const std::string& path, std::string& token) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return fmt::format("cannot read {}: {}", quote(path), std::strerror(errno));
  std::string line;
  char buf[4096];
  bool eol = false;
  size_t n;
  while (!eol && (n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    std::string_view chunk(buf, n);
    size_t nl = chunk.find('\n');
    if (nl != std::string_view::npos) {
      chunk = chunk.substr(0, nl);
      eol = true;
    }
    line.append(chunk);
    if (line.size() > 4096) break;
  }
  const bool read_error = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (read_error) return fmt::format("cannot read {}: {}", quote(path), std::strerror(err));
  if (line.size() > 4096) return fmt::format("{}: the token line is longer than 4096 bytes", quote(path));
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  while (!line.empty() && blank(line.back())) line.pop_back();
  size_t start = 0;
  while (start < line.size() && blank(line[start])) ++start;
  line.erase(0, start);
  if (line.empty()) return fmt::format("{}: the first line (the token) is empty", quote(path));
  for (unsigned char c : line) {
    if (c < 0x20 || c == 0x7f) return fmt::format("{}: the token contains a control character", quote(path));
  }
  token = std::move(line);
  return {};
}

namespace {

void read_admin(const toml::table& t, Admin& a, ObjectSrc& src, Diags& d) {
  src.pos = pos_of(t.source());
  Reader r(t, src, d, "admin");
  if (const toml::node* n = r.get("listen")) {
    if (!n->is_string()) {
      r.type_error("listen", *n, "an address string such as \"127.0.0.1:9900\"");
    } else {
      auto ep = parse_endpoint_detailed(n->as_string()->get(), PortRule::AllowZero, HostRule::IpOnly);
      if (ep.value) {
        a.listen = std::move(*ep.value);
      } else {
        r.value_error("listen", *n, ep.error);
      }
    }
  }
  read_cidrs(r, "allow", a.allow);
  // "" (the spec's default) means no token; a file that is named but missing
  // or empty is an error: silently running without the token the operator
  // asked for would open the API.
  if (r.read_string("api_token_file", a.api_token_file) && !a.api_token_file.empty()) {
    std::string why = read_token_file(a.api_token_file, a.api_token);
    if (!why.empty()) r.value_error("api_token_file", *r.get("api_token_file"), why);
  }
  r.finish();
}

// A route's server name: an exact host name or "*." + one (RFC 1123) name,
// ASCII letters, digits, '-', '_' and '.', no empty label, at most 253
// characters. Returned lower-cased in `out`; the reason otherwise.
std::string check_route_name(const std::string& s, std::string& out) {
  std::string_view name = s;
  if (name.size() >= 2 && name.substr(0, 2) == "*.") name.remove_prefix(2);
  if (name.empty()) return "must be a host name or \"*.\" followed by one";
  if (name.size() > 253) return "longer than 253 characters";
  size_t label = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '.') {
      if (label == 0) return "has an empty label";
      if (label > 63) return "has a label longer than 63 characters";
      label = 0;
      continue;
    }
    const char c = name[i];
    if (c == '*') return "\"*\" is only allowed as the whole first label (\"*.example.com\")";
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return "may contain only letters, digits, '-', '_' and '.'";
    ++label;
  }
  out = s;
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return {};
}

void read_route(const toml::table& t, const std::string& listener_label, size_t index, SniRoute& route,
                ObjectSrc& src, std::vector<SourcePos>& items, Diags& d) {
  src.pos = pos_of(t.source());
  route.pos = src.pos;
  Reader r(t, src, d, fmt::format("{} route #{}", listener_label, index + 1));
  r.require("sni");
  if (const toml::node* n = r.get("sni")) {
    std::vector<const toml::node*> names;
    if (n->is_string()) {
      names.push_back(n);
    } else if (const auto* a = n->as_array()) {
      if (a->empty()) r.key_error("sni", *n, "needs at least one server name");
      for (const auto& e : *a) {
        if (e.is_string()) {
          names.push_back(&e);
        } else {
          r.type_error("sni", e, R"(a server name string such as "api.example.com" or "*.example.net")");
        }
      }
    } else {
      r.type_error("sni", *n, R"(an array of server names such as ["api.example.com", "*.example.net"])");
    }
    for (const toml::node* e : names) {
      std::string lowered;
      if (std::string why = check_route_name(e->as_string()->get(), lowered); !why.empty()) {
        r.value_error("sni", *e, why);
        continue;
      }
      route.sni.push_back(std::move(lowered));
      items.push_back(pos_of(e->source()));
    }
  }
  r.require("pool");
  r.read_string("pool", route.pool, non_empty_name);
  r.finish();
}

std::string non_empty_path(const std::string& s) {
  if (s.empty()) return "must not be empty";
  return {};
}

void read_certificate(const toml::table& t, const std::string& listener_label, size_t index, Certificate& c,
                      ObjectSrc& src, Diags& d) {
  src.pos = pos_of(t.source());
  c.pos = src.pos;
  Reader r(t, src, d, fmt::format("{} certificate #{}", listener_label, index + 1));
  r.require("cert");
  r.read_string("cert", c.cert, non_empty_path);
  r.require("key");
  r.read_string("key", c.key, non_empty_path);
  r.finish();
}

// An OpenSSL cipher string is only really known to OpenSSL: ask it. It
// ignores names it does not know and fails only when nothing is left, which
// is the mistake worth stopping a load for.
std::string check_cipher_list(const std::string& s) {
  if (std::string why = no_control(s); !why.empty()) return why;
  if (s.empty()) return {};  // OpenSSL's defaults narrowed by the TLS layer
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr) return {};  // cannot judge; the TLS layer reports it when it builds its context
  const bool ok = SSL_CTX_set_cipher_list(ctx, s.c_str()) == 1;
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return ok ? std::string() : "selects no TLS 1.2 cipher (see `openssl ciphers -v LIST`)";
}

// RFC 7301 §3.1: protocol names of 1..255 bytes, no duplicates.
void read_alpn(Reader& r, std::vector<std::string>& out) {
  const toml::node* n = r.get("alpn");
  if (n == nullptr) return;
  const auto* a = n->as_array();
  if (a == nullptr) {
    r.type_error("alpn", *n, R"(an array of protocol names such as ["h2", "http/1.1"])");
    return;
  }
  for (const auto& e : *a) {
    if (!e.is_string()) {
      r.type_error("alpn", e, R"(a protocol name string such as "h2")");
      continue;
    }
    const std::string& v = e.as_string()->get();
    if (v.empty() || v.size() > 255) {
      r.value_error("alpn", e, "must be 1 to 255 bytes long");
    } else if (std::find(out.begin(), out.end(), v) != out.end()) {
      r.value_error("alpn", e, "listed twice");
    } else {
      out.push_back(v);
    }
  }
}

void read_listener(const toml::table& t, size_t index, Listener& l, ListenerSrc& ls, Diags& d) {
  ls.obj.pos = pos_of(t.source());
  l.pos = ls.obj.pos;
  Reader r(t, ls.obj, d, fmt::format("listener #{}", index + 1));
  if (r.read_string("name", l.name, non_empty_name)) r.relabel("listener " + quote(l.name));
  r.require("name");

  r.read_enum("protocol", l.protocol, kProtocolNames);

  r.require("bind");
  if (const toml::node* n = r.get("bind")) {
    std::vector<const toml::node*> items;
    if (n->is_string()) {
      items.push_back(n);
    } else if (const auto* a = n->as_array()) {
      if (a->empty()) r.key_error("bind", *n, "needs at least one address");
      for (const auto& e : *a) {
        if (e.is_string()) {
          items.push_back(&e);
        } else {
          r.type_error("bind", e, R"(an address string such as "0.0.0.0:8080")");
        }
      }
    } else {
      r.type_error("bind", *n, "an address string or an array of them");
    }
    for (const toml::node* item : items) {
      auto ep = parse_endpoint_detailed(item->as_string()->get(), PortRule::AllowZero, HostRule::IpOnly);
      if (!ep.value) {
        r.value_error("bind", *item, ep.error);
        continue;
      }
      l.bind.push_back(std::move(*ep.value));
      ls.bind_items.push_back(pos_of(item->source()));
    }
  }

  r.require("pool");
  r.read_string("pool", l.pool, non_empty_name);
  r.read_duration("connect_timeout", l.connect_timeout, Zero::Refused);
  r.read_duration("idle_timeout", l.idle_timeout, Zero::Refused);
  r.read_uint("retries", l.retries, 0, 10);
  r.read_enum("proxy_protocol", l.proxy_protocol, kProxyProtocolNames);
  r.read_bool("accept_proxy_protocol", l.accept_proxy_protocol);
  read_cidrs(r, "proxy_protocol_trusted", l.proxy_protocol_trusted);
  r.read_duration("session_timeout", l.session_timeout, Zero::Refused);
  r.read_uint("udp_responses", l.udp_responses, 0, 65535);
  r.read_uint("max_connections", l.max_connections, 0, kUnbounded);
  r.read_uint("max_connections_per_source", l.max_connections_per_source, 0, kUnbounded);
  read_cidrs(r, "allow", l.allow);
  read_cidrs(r, "deny", l.deny);
  read_cidrs(r, "udp_source", l.udp_source);

  r.read_enum("tls", l.tls, kTlsModeNames);
  r.read_duration("tls_handshake_timeout", l.tls_handshake_timeout, Zero::Refused);
  r.read_enum("tls_min_version", l.tls_min_version, kTlsVersionNames);
  r.read_string("tls_ciphers", l.tls_ciphers, check_cipher_list);
  read_alpn(r, l.alpn);
  r.read_string("client_ca", l.client_ca);
  r.read_bool("session_tickets", l.session_tickets);
  if (const toml::array* routes = r.read_table_array("route", "[[listener.route]]")) {
    for (const auto& e : *routes) {
      if (const toml::table* rt = e.as_table()) {
        l.routes.emplace_back();
        ls.routes.emplace_back();
        ls.route_sni_items.emplace_back();
        read_route(*rt, r.label(), l.routes.size() - 1, l.routes.back(), ls.routes.back(),
                   ls.route_sni_items.back(), d);
      }
    }
  }
  if (const toml::array* certs = r.read_table_array("certificate", "[[listener.certificate]]")) {
    for (const auto& e : *certs) {
      if (const toml::table* ct = e.as_table()) {
        l.certificates.emplace_back();
        ls.certificates.emplace_back();
        read_certificate(*ct, r.label(), l.certificates.size() - 1, l.certificates.back(),
                         ls.certificates.back(), d);
      }
    }
  }
  r.finish();
}

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
  if (const toml::array* backends = r.read_table_array("backend", "[[pool.backend]]")) {
    for (const auto& e : *backends) {
      if (const toml::table* bt = e.as_table()) {
        p.backends.emplace_back();
        ps.backends.emplace_back();
        read_backend(*bt, p.backends.size() - 1, p.backends.back(), ps.backends.back(), d, label);
      }
    }
  }
  r.finish();
}

}  // namespace

bool parse_document(std::string_view text, const std::string& path, Config& cfg, ConfigSrc& src,
                    Diags& diags) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    // toml++ quotes the offending input as is: escape control bytes so one
    // error stays one line and cannot carry terminal escapes (found by fuzz_conf).
    std::string msg;
    for (unsigned char c : e.description()) {
      if (c < 0x20 || c == 0x7f)
        msg += fmt::format("\\x{:02x}", c);
      else
        msg += static_cast<char>(c);
    }
    diags.error(pos_of(e.source()), msg);
    return false;
  }

  Reader r(root, src.root, diags, "");
  if (const toml::table* g = r.read_table("global", "[global]")) {
    read_global(*g, cfg.global, src.global, diags);
  }
  if (const toml::table* a = r.read_table("admin", "[admin]")) {
    read_admin(*a, cfg.admin, src.admin, diags);
  }
  if (const toml::array* listeners = r.read_table_array("listener", "[[listener]]")) {
    for (const auto& e : *listeners) {
      if (const toml::table* t = e.as_table()) {
        cfg.listeners.emplace_back();
        src.listeners.emplace_back();
        read_listener(*t, cfg.listeners.size() - 1, cfg.listeners.back(), src.listeners.back(), diags);
      }
    }
  }
  if (const toml::array* pools = r.read_table_array("pool", "[[pool]]")) {
    for (const auto& e : *pools) {
      if (const toml::table* t = e.as_table()) {
        cfg.pools.emplace_back();
        src.pools.emplace_back();
        read_pool(*t, cfg.pools.size() - 1, cfg.pools.back(), src.pools.back(), diags);
      }
    }
  }
  r.finish();
  return true;
}

bool parse_admin_section(std::string_view text, const std::string& path, Admin& admin, Diags& diags) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    diags.error(pos_of(e.source()), "TOML syntax error (run lb --check for details)");
    return false;
  }
  ObjectSrc src;
  src.label = "admin";
  if (const toml::node* n = root.get("admin")) {
    if (const toml::table* t = n->as_table())
      read_admin(*t, admin, src, diags);
    else
      diags.error(pos_of(n->source()), "[admin]: expected a table");
  }
  return diags.empty();
}

}  // namespace lb::conf
