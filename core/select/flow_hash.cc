#include "core/select/flow_hash.h"

namespace lb::hash {

uint64_t flow_hash(const sockaddr* client, conf::HashKey key) noexcept {
  return flow_hash(client, key == conf::HashKey::SourceIpPort);
}

}  // namespace lb::hash
