// load_file / load_string: the passes of internal.h run in order over one
// Config; the Config is handed out only when no pass found anything wrong.

#include "conf/load.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "conf/internal.h"

namespace lb::conf {

LoadResult load_text(std::string_view text, const std::string& path) {
  Diags diags(path);
  Config cfg;
  cfg.path = path;
  ConfigSrc src;
  // Tables that may be absent still need a name for messages.
  src.global.label = "global";
  src.admin.label = "admin";

  if (parse_document(text, path, cfg, src, diags)) {
    validate(cfg, src, diags);
  }

  LoadResult result;
  result.errors = diags.take_sorted();
  if (result.errors.empty()) result.config = std::move(cfg);
  return result;
}

LoadResult load_string(std::string_view text, const std::string& path) {
  return load_text(text, path);
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

LoadResult load_file(const std::string& path) {
  int err = 0;
  auto text = read_file(path, &err);
  if (!text) {
    LoadResult r;
    r.errors.push_back(unreadable(path, err));
    return r;
  }
  return load_text(*text, path);
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
