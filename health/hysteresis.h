// Hysteresis: rise/fall debouncing of probe results for one backend.
//
// A plain value type with no I/O so that it can be tested exhaustively
// (shape after Envoy's HealthTransition). Rules:
//   - Before any result the state is Unknown. The FIRST result decides the
//     state at once: at start-up (and for a backend added by a reload) lb
//     must not wait rise * interval before a pool becomes usable.
//   - Afterwards `rise` consecutive passes bring a Down backend Up and `fall`
//     consecutive failures bring an Up backend Down. A result that agrees
//     with the current state resets the opposing streak.
//
// Thread rules: none; owned and used by the health thread only.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lb::health {

enum class HealthState : uint8_t { Unknown, Up, Down };

enum class Transition : uint8_t {
  Unchanged,      // the result agrees with the current state
  Changed,        // the state flipped (or was decided by the first result)
  ChangePending,  // the result disagrees, but the streak is below rise/fall
};

class Hysteresis {
 public:
  // Thresholds below 1 are treated as 1 (configuration validation should
  // have refused them; a zero would otherwise mean "never change").
  Hysteresis(unsigned rise, unsigned fall) { set_thresholds(rise, fall); }

  Transition observe(bool pass) {
    const HealthState wanted = pass ? HealthState::Up : HealthState::Down;
    if (state_ == HealthState::Unknown) {
      state_ = wanted;
      streak_ = 0;
      return Transition::Changed;
    }
    if (state_ == wanted) {
      streak_ = 0;
      return Transition::Unchanged;
    }
    ++streak_;
    if (streak_ >= (pass ? rise_ : fall_)) {
      state_ = wanted;
      streak_ = 0;
      return Transition::Changed;
    }
    return Transition::ChangePending;
  }

  // Reload: new thresholds, same state and streak. A streak that already
  // reaches a lowered threshold takes effect with the next disagreeing result.
  void set_thresholds(unsigned rise, unsigned fall) {
    rise_ = std::max(rise, 1u);
    fall_ = std::max(fall, 1u);
  }

  // Sets the state directly, e.g. when a backend that had no active check
  // (and was therefore considered up) gets one on reload.
  void reset_to(HealthState s) {
    state_ = s;
    streak_ = 0;
  }

  HealthState state() const { return state_; }
  bool known() const { return state_ != HealthState::Unknown; }
  bool up() const { return state_ == HealthState::Up; }
  unsigned rise() const { return rise_; }
  unsigned fall() const { return fall_; }
  // Consecutive results disagreeing with the current state so far.
  unsigned streak() const { return streak_; }

 private:
  unsigned rise_ = 1;
  unsigned fall_ = 1;
  HealthState state_ = HealthState::Unknown;
  unsigned streak_ = 0;
};

}  // namespace lb::health
