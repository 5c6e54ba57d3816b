// Deadlines for tests: every wait in test/support takes an absolute deadline
// so a misbehaving process under test fails a test instead of hanging it.
//
// Thread rules: free functions, no state; safe from any thread.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace lb::test {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A deadline `d` from now.
inline Deadline in(Clock::duration d) { return Clock::now() + d; }

// Milliseconds left until `deadline`, rounded up and clamped to
// [0, 1'000'000], in the form poll(2) wants.
inline int poll_timeout_ms(Deadline deadline) {
  auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  if (left > 1'000'000) return 1'000'000;
  return static_cast<int>(left) + 1;  // round up: never spin on a sub-ms remainder
}

inline bool expired(Deadline deadline) { return Clock::now() >= deadline; }

// Re-evaluates `condition` until it holds or `deadline` passes. For state that
// offers no notification (another process's counters, /proc), so it polls;
// `interval` is short so the wait ends soon after the condition becomes true.
// Returns the last evaluation.
inline bool wait_until(const std::function<bool()>& condition, Deadline deadline,
                       milliseconds interval = milliseconds(10)) {
  for (;;) {
    if (condition()) return true;
    if (expired(deadline)) return false;
    std::this_thread::sleep_for(interval);
  }
}

}  // namespace lb::test
