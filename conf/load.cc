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

LoadResult load_file(const std::string& path) {
  auto fail = [&](int err) {
    LoadResult r;
    r.errors.push_back(
        Diagnostic{path, 0, 0, fmt::format("cannot read file: {}", std::strerror(err))});
    return r;
  };
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return fail(errno);
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  // fopen() succeeds on a directory; the read is what fails (EISDIR).
  const bool read_error = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (read_error) return fail(err);
  return load_text(text, path);
}

}  // namespace lb::conf
