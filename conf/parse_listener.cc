// The parse step for one [[listener]] table: binds, limits, ACLs, PROXY
// protocol, TLS (passthrough routes by server name, terminate certificates,
// ciphers and ALPN). See parse.cc for the rules every key follows.
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "conf/reader.h"

namespace lb::conf {

namespace {

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
  {
    auto names = r.read_strings("sni", "needs at least one server name",
                                R"(a server name string such as "api.example.com" or "*.example.net")",
                                R"(an array of server names such as ["api.example.com", "*.example.net"])");
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

}  // namespace

void read_listener(const toml::table& t, size_t index, Listener& l, ListenerSrc& ls, Diags& d) {
  ls.obj.pos = pos_of(t.source());
  l.pos = ls.obj.pos;
  Reader r(t, ls.obj, d, fmt::format("listener #{}", index + 1));
  if (r.read_string("name", l.name, non_empty_name)) r.relabel("listener " + quote(l.name));
  r.require("name");

  r.read_enum("protocol", l.protocol, kProtocolNames);

  r.require("bind");
  {
    auto items =
        r.read_strings("bind", "needs at least one address", R"(an address string such as "0.0.0.0:8080")",
                       "an address string or an array of them");
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
  const std::string& label = r.label();
  read_each(r, "route", "[[listener.route]]", l.routes, ls.routes, d,
            [&](const toml::table& rt, size_t i, SniRoute& route, ObjectSrc& src, Diags& dd) {
              read_route(rt, label, i, route, src, ls.route_sni_items.emplace_back(), dd);
            });
  read_each(r, "certificate", "[[listener.certificate]]", l.certificates, ls.certificates, d,
            [&](const toml::table& ct, size_t i, Certificate& c, ObjectSrc& src, Diags& dd) {
              read_certificate(ct, label, i, c, src, dd);
            });
  r.finish();
}

}  // namespace lb::conf
