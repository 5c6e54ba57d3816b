// The relay's per-direction state: backpressure and half-close, with no I/O.
//
// A TCP session has two Directions: client->backend ("up") and
// backend->client ("down"). Each tracks the bytes it has queued on its
// destination socket (what the kernel could not take at once). Reading the
// source pauses when the queue reaches the high-water mark and resumes when it
// drains to the low one, so a slow peer bounds lb's memory per connection at
// about high-water + one read buffer. EOF from the source becomes a shutdown
// of writes on the destination; the session is finished once both directions
// have passed their EOF on (or an error resets both).
// Thread: owned by one session on one worker loop.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace lb::core {

// [global] max_buffer_memory: what all sessions of all workers together may
// hold in lb's own buffers (the copy path's queued writes; pipes are kernel
// memory and bounded by the kernel's pipe quota instead). Charged once per
// buffer allocation and credited once per free, never per byte: relaxed
// atomics on a line of their own, read by every worker before a read.
//
// The bound is enforced before reading, not by failing allocations (the
// bytes of a read that the destination refused must be kept): once used()
// reaches the limit, a direction that already has bytes queued does not read
// at all (it waits for budget, TcpSession/Worker), and one that has nothing
// queued (its destination keeps up) reads at most kScarceRead at a time. So
// lb holds at most limit + kScarceRead per direction + one read per worker.
struct alignas(64) BufferBudget {
  static constexpr size_t kScarceRead = 4096;

  std::atomic<int64_t> used{0};
  std::atomic<int64_t> limit{int64_t{1} << 30};

  void charge(size_t n) { used.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed); }
  void credit(size_t n) { used.fetch_sub(static_cast<int64_t>(n), std::memory_order_relaxed); }
  // Bytes that may still be allocated before the bound (<= 0: none).
  int64_t headroom() const {
    return limit.load(std::memory_order_relaxed) - used.load(std::memory_order_relaxed);
  }
  bool exhausted() const { return headroom() <= 0; }
};

struct Direction {
  static constexpr size_t kHighWater = 256 * 1024;
  static constexpr size_t kLowWater = 64 * 1024;

  size_t queued = 0;           // bytes written but not yet taken by the destination
  bool paused = false;         // source reading stopped for backpressure
  bool eof = false;            // source sent FIN
  bool shutdown_sent = false;  // shutdown(SHUT_WR) requested on the destination
  bool finished = false;       // that shutdown completed: nothing more flows this way

  // After queuing n more bytes on the destination. True when the source must
  // stop reading now.
  bool on_queued(size_t n) {
    queued += n;
    if (!paused && queued >= kHighWater) {
      paused = true;
      return true;
    }
    return false;
  }
  // After the destination took n queued bytes. True when the source may be
  // read again.
  bool on_drained(size_t n) {
    queued = n > queued ? 0 : queued - n;
    if (paused && queued <= kLowWater) {
      paused = false;
      return !eof;
    }
    return false;
  }
  // Source reached EOF. True when the destination should be shut down now
  // (exactly once).
  bool on_eof() {
    eof = true;
    if (shutdown_sent) return false;
    shutdown_sent = true;
    return true;
  }
  void on_shutdown_done() { finished = true; }
  // Whether the source should be reading right now.
  bool wants_read() const { return !paused && !eof; }
};

// Both directions done: the session can close both sockets gracefully.
inline bool relay_finished(const Direction& up, const Direction& down) {
  return up.finished && down.finished;
}

}  // namespace lb::core
