// Per-worker timeouts without one timer per connection.
//
// Sessions sharing a timeout duration (every connection of a listener has the
// same idle_timeout) sit in one intrusive list ordered by their last activity:
// touching a session moves it to the tail (a few pointer writes, no heap
// operation), so each list's head always expires first. One uv_timer_t per
// worker is armed for the earliest head. Expiry is lazy and O(expired).
// Thread: one worker loop; not thread-safe.
#pragma once

#include <uv.h>

#include <cstdint>
#include <map>
#include <memory>

#include "core/uv_ptr.h"

namespace lb::core {

class TimeoutWheel;

struct TimeoutNode {
  TimeoutNode* prev = nullptr;
  TimeoutNode* next = nullptr;
  uint64_t stamp = 0;  // loop time (ms) of last arm/touch
  struct TimeoutQueue* queue = nullptr;
  void (*fire)(TimeoutNode*) = nullptr;  // called once on expiry (node already unlinked)
  void* owner = nullptr;                 // for fire(): the object the node belongs to
  bool armed() const { return queue != nullptr; }
};

struct TimeoutQueue {
  explicit TimeoutQueue(uint64_t d) : duration(d) { head.prev = head.next = &head; }
  uint64_t duration;
  TimeoutNode head;  // sentinel
  bool empty() const { return head.next == &head; }
};

class TimeoutWheel {
 public:
  explicit TimeoutWheel(uv_loop_t* loop);
  ~TimeoutWheel();
  TimeoutWheel(const TimeoutWheel&) = delete;
  TimeoutWheel& operator=(const TimeoutWheel&) = delete;

  // (Re)arms `n` to fire `duration_ms` after now.
  void arm(TimeoutNode* n, uint64_t duration_ms);
  // Restarts the node's countdown (activity); cheap, call on every read.
  void touch(TimeoutNode* n) {
    uint64_t now = uv_now(loop_);
    if (n->stamp == now || !n->queue) return;  // already among the newest
    unlink(n);
    n->stamp = now;
    link_tail(n->queue, n);
  }
  void disarm(TimeoutNode* n);
  // Closes the timer handle (the wheel must not be used afterwards).
  void close();

 private:
  static void unlink(TimeoutNode* n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = nullptr;
  }
  static void link_tail(TimeoutQueue* q, TimeoutNode* n) {
    n->prev = q->head.prev;
    n->next = &q->head;
    q->head.prev->next = n;
    q->head.prev = n;
  }
  void schedule(uint64_t deadline);
  void run();
  static void on_timer(uv_timer_t* t);

  uv_loop_t* loop_;
  UvPtr<uv_timer_t> timer_;          // null after close()
  uint64_t armed_for_ = UINT64_MAX;  // deadline the timer is set for
  std::map<uint64_t, std::unique_ptr<TimeoutQueue>> queues_;
};

}  // namespace lb::core
