// Loading and validating lb.toml.
//
// Two passes: toml++ parses into conf::Config, then validation checks the
// whole thing; every problem found is collected (never just the first) as a
// Diagnostic that prints compiler style: `PATH:LINE:COL: error: MESSAGE`.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace lb::conf {

struct Diagnostic {
  std::string file;
  int line = 0;  // 1-based; 0 when unknown (then printed as PATH: error: ...)
  int col = 0;
  std::string message;
  std::string str() const;  // "PATH:LINE:COL: error: MESSAGE"
};

struct LoadResult {
  std::optional<Config> config;  // set only when errors is empty
  std::vector<Diagnostic> errors;
  bool ok() const { return errors.empty() && config.has_value(); }
};

// When backend host names are resolved: Now, by a blocking lookup inside the
// load (lb --check, tests); or Later, by the caller, who must not block its
// loop: the Config then lists them in `unresolved` (their addresses unset)
// and apply_host_answers() completes it.
enum class Resolve { Now, Later };

// Reads and validates a file.
LoadResult load_file(const std::string& path, Resolve resolve = Resolve::Now);
// Same from text already in memory; `path` is used in diagnostics only.
LoadResult load_string(std::string_view text, const std::string& path, Resolve resolve = Resolve::Now);

// One host name lookup as a load does it (getaddrinfo, or the test resolver
// of internal.h): "" and addr/len filled, or the reason it failed. Blocks;
// safe on any thread.
std::string resolve_host(const std::string& host, sockaddr_storage& addr, socklen_t& len);

struct HostAnswer {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string error;  // set when the lookup failed (then addr is unset)
};
// Completes a Resolve::Later Config with the answers for its `unresolved`
// host names (a missing answer is an error). Returns the errors, worded and
// placed as a Resolve::Now load reports them; `unresolved` is cleared.
std::vector<Diagnostic> apply_host_answers(Config& cfg, const std::map<std::string, HostAnswer>& answers);

// Only the [admin] table of a file, checked as load_file checks it (the
// token file is read): what `lb ctl` needs to reach the admin API. The rest of
// the file is not looked at, so backends that do not resolve where ctl runs
// do not stop it.
struct AdminLoadResult {
  std::optional<Admin> admin;  // set only when errors is empty
  std::vector<Diagnostic> errors;
};
AdminLoadResult load_admin_section(const std::string& path);

// Reads an api_token_file: the token is the file's first line, without its
// line ending and surrounding blanks (an editor's trailing newline must not
// change it). Returns "" and sets `token`, or the reason the file is unusable
// (missing, unreadable, empty first line); the token never appears in it.
std::string read_token_file(const std::string& path, std::string& token);

// Helpers shared with other modules (admin API parses weights, tests parse
// durations). All return std::nullopt on malformed input.
std::optional<Duration> parse_duration(std::string_view text);     // "250ms", "2s", "5m", "1h"
std::optional<uint64_t> parse_size(std::string_view text);         // bytes: "4096B", "64KiB", "1GiB"
std::optional<Endpoint> parse_ip_endpoint(std::string_view text);  // IP:PORT or [IPv6]:PORT, no DNS
std::optional<Cidr> parse_cidr(std::string_view text);

}  // namespace lb::conf
