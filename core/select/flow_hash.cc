// The conf::HashKey overload of flow_hash (declared in core/hash/flow_hash.h).
// It lives here because lb_select may depend on conf and lb_hash may not.
#include "core/hash/flow_hash.h"

#include "conf/config.h"

namespace lb::hash {

uint64_t flow_hash(const sockaddr* client, conf::HashKey key) noexcept {
  return flow_hash(client, key == conf::HashKey::SourceIpPort);
}

}  // namespace lb::hash
