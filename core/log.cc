#include "core/log.h"

#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <string>

namespace lb::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};

const char* name(Level l) {
  switch (l) {
    case Level::Error:
      return "error";
    case Level::Warn:
      return "warn";
    case Level::Info:
      return "info";
    case Level::Debug:
      return "debug";
  }
  return "info";
}
}  // namespace

uint64_t monotonic_ms() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

bool Throttle::admit(uint64_t* suppressed) {
  const uint64_t now = now_();
  uint64_t next = next_ms_.load(std::memory_order_relaxed);
  // next_ms_ starts at 0, so the first occurrence always passes. Only the
  // thread whose exchange wins logs; a loser counts itself as suppressed,
  // exactly like an event inside the interval.
  if (now >= next && next_ms_.compare_exchange_strong(next, now + interval_ms_, std::memory_order_relaxed)) {
    *suppressed = suppressed_.exchange(0, std::memory_order_relaxed);
    return true;
  }
  suppressed_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void set_level(Level level) { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }

bool enabled(Level level) { return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed); }

void write(Level level, std::string_view text) {
  std::string line;
  line.reserve(text.size() + 8);
  line += name(level);
  line += ' ';
  line += text;
  line += '\n';
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing stderr
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace lb::log
