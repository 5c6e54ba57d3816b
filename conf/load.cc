// load_file / load_string: the passes of internal.h run in order over one
// Config; the Config is handed out only when no pass found anything wrong.

#include "conf/load.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "conf/internal.h"

namespace lb::conf {

namespace {

// The port of a validated "HOST:PORT".
uint16_t port_of_text(const std::string& text) {
  return static_cast<uint16_t>(std::stoul(text.substr(text.rfind(':') + 1)));
}

std::string resolve_error(const PendingHost& h, const std::string& why) {
  return fmt::format("{}: cannot resolve host {}: {}", h.context, quote(h.host), why);
}

// Every backend address the parse left as a host name, with what an error
// about it needs.
std::vector<PendingHost> pending_hosts(const Config& cfg, const ConfigSrc& src) {
  std::vector<PendingHost> out;
  for (size_t i = 0; i < cfg.pools.size() && i < src.pools.size(); ++i) {
    const auto& backends = cfg.pools[i].backends;
    for (size_t j = 0; j < backends.size() && j < src.pools[i].backends.size(); ++j) {
      const Endpoint& a = backends[j].address;
      if (a.host.empty() || a.addr_len != 0) continue;
      const ObjectSrc& bs = src.pools[i].backends[j];
      std::string label = bs.label.empty() ? "" : bs.label + ": ";
      out.push_back(PendingHost{i, j, a.host, bs.value_pos("address"),
                                fmt::format("{}address {}", label, quote(a.text))});
    }
  }
  return out;
}

}  // namespace

std::vector<Diagnostic> apply_host_answers(Config& cfg, const std::map<std::string, HostAnswer>& answers) {
  Diags diags(cfg.path);
  for (const PendingHost& h : cfg.unresolved) {
    auto it = answers.find(h.host);
    if (it == answers.end() || !it->second.error.empty()) {
      diags.error(h.pos, resolve_error(h, it == answers.end() ? "no answer" : it->second.error));
      continue;
    }
    Endpoint& ep = cfg.pools[h.pool].backends[h.backend].address;
    ep.addr = it->second.addr;
    ep.addr_len = it->second.len;
    set_endpoint_port(ep, port_of_text(ep.text));
  }
  cfg.unresolved.clear();
  return diags.take_sorted();
}

LoadResult load_text(std::string_view text, const std::string& path, Resolve resolve) {
  Diags diags(path);
  Config cfg;
  cfg.path = path;
  ConfigSrc src;
  // Tables that may be absent still need a name for messages.
  src.global.label = "global";
  src.admin.label = "admin";

  if (parse_document(text, path, cfg, src, diags)) {
    validate(cfg, src, diags);
    cfg.unresolved = pending_hosts(cfg, src);
    if (resolve == Resolve::Now) {
      std::map<std::string, HostAnswer> answers;
      for (const PendingHost& h : cfg.unresolved) {
        if (answers.count(h.host)) continue;
        HostAnswer& a = answers[h.host];
        a.error = resolve_host(h.host, a.addr, a.len);
      }
      for (auto& d : apply_host_answers(cfg, answers)) diags.error(SourcePos{d.line, d.col}, d.message);
    }
  }

  LoadResult result;
  result.errors = diags.take_sorted();
  if (result.errors.empty()) result.config = std::move(cfg);
  return result;
}

LoadResult load_string(std::string_view text, const std::string& path, Resolve resolve) {
  return load_text(text, path, resolve);
}

namespace {

// The whole file, or the errno that stopped reading it.
std::optional<std::string> read_file(const std::string& path, int* err) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *err = errno;
    return std::nullopt;
  }
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  // fopen() succeeds on a directory; the read is what fails (EISDIR).
  const bool read_error = std::ferror(f) != 0;
  *err = errno;
  std::fclose(f);
  if (read_error) return std::nullopt;
  return text;
}

Diagnostic unreadable(const std::string& path, int err) {
  return Diagnostic{path, 0, 0, fmt::format("cannot read file: {}", std::strerror(err))};
}

}  // namespace

LoadResult load_file(const std::string& path, Resolve resolve) {
  int err = 0;
  auto text = read_file(path, &err);
  if (!text) {
    LoadResult r;
    r.errors.push_back(unreadable(path, err));
    return r;
  }
  return load_text(*text, path, resolve);
}

AdminLoadResult load_admin_section(const std::string& path) {
  AdminLoadResult r;
  int err = 0;
  auto text = read_file(path, &err);
  if (!text) {
    r.errors.push_back(unreadable(path, err));
    return r;
  }
  Diags diags(path);
  Admin admin;
  parse_admin_section(*text, path, admin, diags);
  r.errors = diags.take_sorted();
  if (r.errors.empty()) r.admin = std::move(admin);
  return r;
}

}  // namespace lb::conf
