#include "health/hysteresis.h"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace lb::health {
namespace {

// Reference model, written differently from the implementation: the state is
// decided by the first result; afterwards result i flips the state when it
// disagrees with it and the last N results (N = rise for a pass, fall for a
// failure) all equal it. A window reaching back to the previous flip cannot
// be uniform, because the result that caused that flip agrees with the state
// it produced, so no streak bookkeeping is needed.
struct Expected {
  std::vector<HealthState> states;
  std::vector<Transition> transitions;
};

Expected reference(const std::vector<bool>& results, unsigned rise, unsigned fall) {
  Expected e;
  HealthState s = HealthState::Unknown;
  for (size_t i = 0; i < results.size(); ++i) {
    const bool pass = results[i];
    const HealthState wanted = pass ? HealthState::Up : HealthState::Down;
    Transition t;
    if (s == HealthState::Unknown) {
      s = wanted;
      t = Transition::Changed;
    } else if (s == wanted) {
      t = Transition::Unchanged;
    } else {
      const size_t n = pass ? rise : fall;
      bool uniform = i + 1 >= n;
      for (size_t k = 0; uniform && k < n; ++k) uniform = results[i - k] == pass;
      if (uniform) {
        s = wanted;
        t = Transition::Changed;
      } else {
        t = Transition::ChangePending;
      }
    }
    e.states.push_back(s);
    e.transitions.push_back(t);
  }
  return e;
}

std::string show(const std::vector<bool>& r, size_t upto) {
  std::string s;
  for (size_t i = 0; i <= upto; ++i) s += r[i] ? 'P' : 'F';
  return s;
}

TEST_CASE("hysteresis: unknown until the first result, which decides at once", "[health][hysteresis]") {
  for (bool first : {true, false}) {
    Hysteresis h(3, 3);
    CHECK_FALSE(h.known());
    CHECK(h.state() == HealthState::Unknown);
    CHECK(h.observe(first) == Transition::Changed);
    CHECK(h.known());
    CHECK(h.up() == first);
  }
}

TEST_CASE("hysteresis: rise and fall on a hand-written sequence", "[health][hysteresis]") {
  Hysteresis h(2, 3);
  CHECK(h.observe(true) == Transition::Changed);  // first: up
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.observe(true) == Transition::Unchanged);  // streak reset
  CHECK(h.up());
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.observe(false) == Transition::Changed);
  CHECK(h.state() == HealthState::Down);
  CHECK(h.observe(true) == Transition::ChangePending);
  CHECK(h.observe(false) == Transition::Unchanged);
  CHECK(h.observe(true) == Transition::ChangePending);
  CHECK(h.observe(true) == Transition::Changed);
  CHECK(h.up());
}

TEST_CASE("hysteresis: every sequence up to length 12 matches the reference", "[health][hysteresis]") {
  // Every sequence of length L is checked at each step, so all shorter
  // sequences are covered as prefixes.
  constexpr size_t kLen = 12;
  size_t steps = 0, mismatches = 0;
  for (unsigned rise = 1; rise <= 3; ++rise) {
    for (unsigned fall = 1; fall <= 3; ++fall) {
      for (unsigned bits = 0; bits < (1u << kLen); ++bits) {
        std::vector<bool> results;
        for (size_t i = 0; i < kLen; ++i) results.push_back(bits >> i & 1);
        const Expected e = reference(results, rise, fall);
        Hysteresis h(rise, fall);
        for (size_t i = 0; i < kLen; ++i) {
          const Transition t = h.observe(results[i]);
          ++steps;
          if (t != e.transitions[i] || h.state() != e.states[i]) {
            if (++mismatches <= 5)
              FAIL_CHECK("rise=" << rise << " fall=" << fall << " seq=" << show(results, i));
          }
        }
      }
    }
  }
  CHECK(steps == 9u * (1u << kLen) * kLen);
  CHECK(mismatches == 0);
}

TEST_CASE("hysteresis: zero thresholds behave as one", "[health][hysteresis]") {
  Hysteresis h(0, 0);
  CHECK(h.rise() == 1);
  CHECK(h.fall() == 1);
  h.observe(true);
  CHECK(h.observe(false) == Transition::Changed);
  CHECK(h.observe(true) == Transition::Changed);
}

TEST_CASE("hysteresis: new thresholds keep state and streak", "[health][hysteresis]") {
  Hysteresis h(3, 3);
  h.observe(true);
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.observe(false) == Transition::ChangePending);
  CHECK(h.streak() == 2);
  h.set_thresholds(3, 2);  // the streak already reaches the new fall
  CHECK(h.up());
  CHECK(h.observe(false) == Transition::Changed);
  CHECK(h.state() == HealthState::Down);

  h.reset_to(HealthState::Up);
  CHECK(h.up());
  CHECK(h.streak() == 0);
  CHECK(h.observe(false) == Transition::ChangePending);
}

}  // namespace
}  // namespace lb::health
