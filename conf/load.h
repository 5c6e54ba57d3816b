// Loading and validating lb.toml.
//
// Two passes: toml++ parses into conf::Config, then validation checks the
// whole thing; every problem found is collected (never just the first) as a
// Diagnostic that prints compiler style: `PATH:LINE:COL: error: MESSAGE`.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace lb::conf {

struct Diagnostic {
  std::string file;
  int line = 0;       // 1-based; 0 when unknown (then printed as PATH: error: ...)
  int col = 0;
  std::string message;
  std::string str() const;  // "PATH:LINE:COL: error: MESSAGE"
};

struct LoadResult {
  std::optional<Config> config;      // set only when errors is empty
  std::vector<Diagnostic> errors;
  bool ok() const { return errors.empty() && config.has_value(); }
};

// Reads and validates a file. Hostnames of backends are resolved here.
LoadResult load_file(const std::string& path);
// Same from text already in memory; `path` is used in diagnostics only.
LoadResult load_string(std::string_view text, const std::string& path);

// Helpers shared with other modules (admin API parses weights, tests parse
// durations). All return std::nullopt on malformed input.
std::optional<Duration> parse_duration(std::string_view text);        // "250ms", "2s", "5m", "1h"
std::optional<uint64_t> parse_size(std::string_view text);            // bytes: "4096B", "64KiB", "1GiB"
std::optional<Endpoint> parse_ip_endpoint(std::string_view text);     // IP:PORT or [IPv6]:PORT, no DNS
std::optional<Cidr> parse_cidr(std::string_view text);

}  // namespace lb::conf
