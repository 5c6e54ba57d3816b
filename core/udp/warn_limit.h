// A warning that may be provoked by traffic (every refused client, every
// failed route) is written at most once a second: the first occurrence at
// once, later ones folded into the next line's `suppressed` count. Never a
// line per datagram.
// Thread: one owner (a worker's UDP listener).
#pragma once

#include <cstdint>

namespace lb::core::udp {

class WarnLimit {
 public:
  explicit WarnLimit(uint64_t interval_ms = 1000) : interval_ms_(interval_ms) {}
  // True when a line may be written now; *suppressed is then the number of
  // occurrences not written since the last line.
  bool allow(uint64_t now_ms, uint64_t* suppressed) {
    if (written_ && now_ms - last_ms_ < interval_ms_) {
      ++suppressed_;
      return false;
    }
    written_ = true;
    last_ms_ = now_ms;
    *suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }

 private:
  uint64_t interval_ms_;
  uint64_t last_ms_ = 0;
  uint64_t suppressed_ = 0;
  bool written_ = false;
};

}  // namespace lb::core::udp
