#include "core/timeout_wheel.h"

#include <algorithm>

namespace lb::core {

namespace {
// Expiry granularity: deadlines are rounded up to this, so a burst of
// sessions expiring close together is handled in one timer callback.
constexpr uint64_t kSlackMs = 10;
}  // namespace

TimeoutWheel::TimeoutWheel(uv_loop_t* loop)
    : loop_(loop), timer_(make_uv<uv_timer_t>(loop, this, nullptr, uv_timer_init)) {}

// The UvPtr hands the timer's memory to its close callback.
TimeoutWheel::~TimeoutWheel() = default;

void TimeoutWheel::close() { timer_.reset(); }

void TimeoutWheel::arm(TimeoutNode* n, uint64_t duration_ms) {
  if (n->queue) unlink(n);
  auto& q = queues_[duration_ms];
  if (!q) q = std::make_unique<TimeoutQueue>(duration_ms);
  n->queue = q.get();
  n->stamp = uv_now(loop_);
  link_tail(q.get(), n);
  schedule(n->stamp + duration_ms);
}

void TimeoutWheel::disarm(TimeoutNode* n) {
  if (!n->queue) return;
  unlink(n);
  n->queue = nullptr;
}

void TimeoutWheel::schedule(uint64_t deadline) {
  if (!timer_) return;
  deadline += kSlackMs - 1;
  deadline -= deadline % kSlackMs;
  if (deadline >= armed_for_) return;
  armed_for_ = deadline;
  uint64_t now = uv_now(loop_);
  uv_timer_start(timer_.get(), on_timer, deadline > now ? deadline - now : 0, 0);
}

void TimeoutWheel::on_timer(uv_timer_t* t) { static_cast<TimeoutWheel*>(t->data)->run(); }

void TimeoutWheel::run() {
  armed_for_ = UINT64_MAX;
  uint64_t now = uv_now(loop_);
  uint64_t next = UINT64_MAX;
  for (auto& [duration, q] : queues_) {
    while (!q->empty()) {
      TimeoutNode* n = q->head.next;
      if (n->stamp + duration > now) {
        next = std::min(next, n->stamp + duration);
        break;
      }
      unlink(n);
      n->queue = nullptr;
      n->fire(n);  // may arm other nodes (or this one) again
    }
  }
  // Nodes armed by fire() callbacks already scheduled themselves; make sure
  // the earliest remaining head is covered too.
  if (next != UINT64_MAX) schedule(next);
}

}  // namespace lb::core
