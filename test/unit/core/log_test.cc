// log::Throttle: the rate limit on warnings a peer can trigger per event.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/log.h"

namespace {

// The injected clock: a test moves it by hand.
std::atomic<uint64_t> g_now_ms{5000};
uint64_t fake_now() { return g_now_ms.load(); }

}  // namespace

TEST_CASE("Throttle passes the first occurrence, then one per interval with the count dropped", "[log]") {
  g_now_ms = 5000;
  lb::log::Throttle t(1000, &fake_now);
  uint64_t suppressed = 99;
  REQUIRE(t.admit(&suppressed));
  CHECK(suppressed == 0);

  // A burst inside the interval: nothing passes.
  for (int i = 0; i < 500; ++i) CHECK_FALSE(t.admit(&suppressed));
  g_now_ms += 999;
  CHECK_FALSE(t.admit(&suppressed));

  // The interval has run out: one line, carrying the 501 it stood for.
  g_now_ms += 1;
  REQUIRE(t.admit(&suppressed));
  CHECK(suppressed == 501);
  CHECK_FALSE(t.admit(&suppressed));

  // A quiet period, then one event: it passes at once with its one predecessor.
  g_now_ms += 60000;
  REQUIRE(t.admit(&suppressed));
  CHECK(suppressed == 1);
  g_now_ms += 1000;
  REQUIRE(t.admit(&suppressed));
  CHECK(suppressed == 0);
}

TEST_CASE("Throttle works from a clock that starts at 0", "[log]") {
  g_now_ms = 0;
  lb::log::Throttle t(1000, &fake_now);
  uint64_t suppressed = 0;
  CHECK(t.admit(&suppressed));
  CHECK_FALSE(t.admit(&suppressed));
}

TEST_CASE("Throttle under concurrent use: one line per interval, no occurrence lost", "[log]") {
  g_now_ms = 100000;
  lb::log::Throttle t(1000, &fake_now);
  constexpr int kThreads = 4, kEach = 20000;
  std::atomic<uint64_t> passed{0}, reported{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      for (int n = 0; n < kEach; ++n) {
        uint64_t s = 0;
        if (t.admit(&s)) {
          passed.fetch_add(1);
          reported.fetch_add(s);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(passed == 1);  // the clock never moved
  g_now_ms += 1000;
  uint64_t s = 0;
  REQUIRE(t.admit(&s));
  // Every occurrence is either a line or counted in one.
  CHECK(passed + 1 + reported + s == static_cast<uint64_t>(kThreads) * kEach + 1);
}
