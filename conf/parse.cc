// First pass: the toml++ tree into Config.
//
// Everything a single key can decide on its own is checked here, next to the
// line that reads the key: its type, its syntax (durations, addresses, CIDRs,
// enum names) and its range. A key that fails keeps its default in Config and
// is marked bad in ConfigSrc, so later passes do not pile a second error on it.
// Every key the schema does not read is reported as unknown.
//
// This file reads the document, [global] and [admin]; [[listener]] is read in
// parse_listener.cc and [[pool]] in parse_pool.cc, with Reader (reader.h).

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "conf/reader.h"

namespace lb::conf {

namespace {

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
  read_each(r, "listener", "[[listener]]", cfg.listeners, src.listeners, diags, read_listener);
  read_each(r, "pool", "[[pool]]", cfg.pools, src.pools, diags, read_pool);
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
