// Operational log: `LEVEL message key=value ...` lines on stderr.
//
// Thread-safe: each line is formatted into one buffer and written with a
// single write(2), so lines from different threads never interleave. Meant
// for rare events (start, reload, health transitions), never per packet.
// A warning that a peer can trigger once per connection or datagram (a failed
// accept, a UDP session that cannot open) goes through a Throttle, so a flood
// of such events cannot become a flood of synchronous writes that stalls the
// worker: see warn_throttled().
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.h"

namespace lb::log {

using Level = conf::LogLevel;

void set_level(Level level);
bool enabled(Level level);
// Writes "LEVEL text\n" to stderr.
void write(Level level, std::string_view text);

template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Error)) write(Level::Error, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Warn)) write(Level::Warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Info)) write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
// Milliseconds on a monotonic clock (CLOCK_MONOTONIC).
uint64_t monotonic_ms();

// At most one line per `interval_ms` for one kind of message: the first
// occurrence passes at once, later ones pass when the interval since the last
// line that passed has run out; the ones in between are only counted, and the
// next line that passes reports how many they were.
//
// Thread rules: lock-free and safe from any thread (one Throttle per message
// kind, typically a static shared by every worker). Races only move a
// suppressed event's count to the following line, never lose it.
class Throttle {
 public:
  using Now = uint64_t (*)();
  explicit Throttle(uint64_t interval_ms = 1000, Now now = &monotonic_ms)
      : interval_ms_(interval_ms), now_(now) {}
  Throttle(const Throttle&) = delete;
  Throttle& operator=(const Throttle&) = delete;

  // True when this occurrence should be logged; *suppressed is then the
  // number of occurrences dropped since the previous line.
  bool admit(uint64_t* suppressed);

 private:
  const uint64_t interval_ms_;
  const Now now_;
  std::atomic<uint64_t> next_ms_{0};  // 0: nothing logged yet
  std::atomic<uint64_t> suppressed_{0};
};

// log::warn through `t`: lines that pass carry ` suppressed=N` when N earlier
// occurrences were dropped.
template <typename... Args>
void warn_throttled(Throttle& t, fmt::format_string<Args...> f, Args&&... args) {
  if (!enabled(Level::Warn)) return;
  uint64_t suppressed = 0;
  if (!t.admit(&suppressed)) return;
  std::string text = fmt::format(f, std::forward<Args>(args)...);
  if (suppressed != 0) text += fmt::format(" suppressed={}", suppressed);
  write(Level::Warn, text);
}

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Debug)) write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace lb::log
