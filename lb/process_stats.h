// The process_* metrics of the Prometheus client conventions, read from
// /proc/self (Linux), for /metrics.
//
// Thread: any; every call reads the kernel's current view, nothing is cached
// except the boot time, which never changes.
#pragma once

#include <cstdint>
#include <optional>

namespace lb::app {

struct ProcessStats {
  double cpu_seconds = 0;         // user + system CPU time
  uint64_t resident_bytes = 0;    // RSS
  uint64_t open_fds = 0;          // entries of /proc/self/fd (the listing's own fd excluded)
  uint64_t max_fds = 0;           // RLIMIT_NOFILE soft limit
  double start_time_seconds = 0;  // Unix time the process started
};

// std::nullopt when /proc is not readable (not Linux, or not mounted): the
// metrics are then left out rather than reported as zeros.
std::optional<ProcessStats> read_process_stats();

}  // namespace lb::app
