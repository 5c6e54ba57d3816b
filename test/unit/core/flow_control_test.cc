#include <catch2/catch.hpp>

#include "core/flow_control.h"

using lb::core::Direction;
using lb::core::relay_finished;

TEST_CASE("backpressure pauses at the high-water mark and resumes at the low one", "[relay]") {
  Direction d;
  CHECK(d.wants_read());
  // Below the mark: keep reading.
  CHECK_FALSE(d.on_queued(Direction::kHighWater - 1));
  CHECK(d.wants_read());
  // Reaching it pauses exactly once.
  CHECK(d.on_queued(1));
  CHECK_FALSE(d.wants_read());
  CHECK_FALSE(d.on_queued(4096));  // already paused: no second pause action
  // Draining to just above the low mark does not resume.
  size_t above_low = d.queued - (Direction::kLowWater + 1);
  CHECK_FALSE(d.on_drained(above_low));
  CHECK_FALSE(d.wants_read());
  // Reaching the low mark resumes exactly once.
  CHECK(d.on_drained(1));
  CHECK(d.wants_read());
  CHECK_FALSE(d.on_drained(10));
  CHECK(d.queued == Direction::kLowWater - 10);
}

TEST_CASE("memory per direction is bounded by high water plus one read", "[relay]") {
  // Simulate a destination that takes nothing: reads continue only while
  // wants_read(), each read queues a full 64 KiB buffer.
  Direction d;
  const size_t read_size = 64 * 1024;
  int reads = 0;
  while (d.wants_read() && reads < 1000) {
    d.on_queued(read_size);
    ++reads;
  }
  CHECK(reads < 1000);
  CHECK(d.queued <= Direction::kHighWater + read_size);
}

TEST_CASE("drained never underflows", "[relay]") {
  Direction d;
  d.on_queued(10);
  d.on_drained(100);
  CHECK(d.queued == 0);
}

TEST_CASE("EOF asks for exactly one shutdown and stops reading", "[relay]") {
  Direction d;
  CHECK(d.on_eof());
  CHECK_FALSE(d.on_eof());
  CHECK_FALSE(d.wants_read());
  // A paused direction that reached EOF must not be resumed by a drain.
  Direction p;
  p.on_queued(Direction::kHighWater);
  p.on_eof();
  CHECK_FALSE(p.on_drained(Direction::kHighWater));
}

TEST_CASE("half-close: the session ends only when both directions finished", "[relay]") {
  Direction up, down;
  // Client sends FIN: the backend side is shut down, the other way still flows.
  REQUIRE(up.on_eof());
  up.on_shutdown_done();
  CHECK_FALSE(relay_finished(up, down));
  CHECK(down.wants_read());
  // Backend answers and closes: now both are done.
  REQUIRE(down.on_eof());
  CHECK_FALSE(relay_finished(up, down));  // its shutdown has not completed yet
  down.on_shutdown_done();
  CHECK(relay_finished(up, down));
}
