#include "lb/process_stats.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace lb::app {

namespace {

std::string slurp(const char* path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// "btime N" of /proc/stat: the boot time as a Unix time; 0 when unreadable.
uint64_t boot_time() {
  static const uint64_t btime = [] {
    std::string stat = slurp("/proc/stat");
    size_t pos = stat.find("\nbtime ");
    if (pos == std::string::npos) return uint64_t{0};
    return static_cast<uint64_t>(std::strtoull(stat.c_str() + pos + 7, nullptr, 10));
  }();
  return btime;
}

}  // namespace

std::optional<ProcessStats> read_process_stats() {
  // /proc/self/stat: "pid (comm) state ppid ...": comm may hold spaces and
  // parentheses, so fields are counted from the last ')'. After it, field 3
  // (state) is the first; utime is 14, stime 15, starttime 22 (proc(5)).
  std::string stat = slurp("/proc/self/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 2));
  std::string f;
  uint64_t utime = 0, stime = 0, starttime = 0;
  for (int n = 3; n <= 22 && fields >> f; ++n) {
    if (n == 14) utime = std::strtoull(f.c_str(), nullptr, 10);
    if (n == 15) stime = std::strtoull(f.c_str(), nullptr, 10);
    if (n == 22) starttime = std::strtoull(f.c_str(), nullptr, 10);
  }
  const long ticks = sysconf(_SC_CLK_TCK);
  const long page = sysconf(_SC_PAGESIZE);
  if (ticks <= 0 || page <= 0) return std::nullopt;

  ProcessStats st;
  st.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(ticks);
  st.start_time_seconds =
      static_cast<double>(boot_time()) + static_cast<double>(starttime) / static_cast<double>(ticks);

  // /proc/self/statm: size resident shared ... (in pages).
  std::istringstream statm(slurp("/proc/self/statm"));
  uint64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return std::nullopt;
  st.resident_bytes = resident * static_cast<uint64_t>(page);

  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return std::nullopt;
  uint64_t n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  st.open_fds = n > 0 ? n - 1 : 0;  // the directory stream's own descriptor

  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) st.max_fds = rl.rlim_cur;
  return st;
}

}  // namespace lb::app
