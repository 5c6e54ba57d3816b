// XXH64 comes from libxxhash (see hash.h); only the host-order-independent
// feeding of integers is ours.
#include "core/hash/hash.h"

namespace lb::hash {

void Xxh64::update_u64(uint64_t v) noexcept {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  update(b, sizeof b);
}

}  // namespace lb::hash
