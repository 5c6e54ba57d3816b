#include "health/random.h"

#include "core/hash/os_random.h"

namespace lb::health {

uint64_t random_u64() { return hash::os_random_u64(); }

}  // namespace lb::health
