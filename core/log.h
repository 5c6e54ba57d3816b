// Operational log: `LEVEL message key=value ...` lines on stderr.
//
// Thread-safe: each line is formatted into one buffer and written with a
// single write(2), so lines from different threads never interleave. Meant
// for rare events (start, reload, health transitions), never per packet.
#pragma once

#include <fmt/format.h>

#include <atomic>
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
template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Debug)) write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace lb::log
