#include "core/descriptors.h"

#include <atomic>

namespace lb::core::descriptors {

namespace {

std::atomic<uint64_t> g_limit{0};

bool within(int fd, uint64_t band) {
  const uint64_t limit = g_limit.load(std::memory_order_relaxed);
  return limit != 0 && fd >= 0 && static_cast<uint64_t>(fd) + band >= limit;
}

}  // namespace

void set_limit(uint64_t limit) { g_limit.store(limit, std::memory_order_relaxed); }

uint64_t limit() { return g_limit.load(std::memory_order_relaxed); }

bool in_accept_reserve(int fd) { return within(fd, kAcceptReserve); }

bool in_accept_floor(int fd) { return within(fd, kAcceptFloor); }

}  // namespace lb::core::descriptors
