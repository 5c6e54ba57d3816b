// The flow hash as a pool's hash_key asks for it. lb_hash (core/hash/) knows
// only bytes; this overload, in lb_select, maps conf::HashKey onto it:
// source_ip -> without port, source_ip_port -> with port.
//
// Thread rules: pure function.
#pragma once

#include <sys/socket.h>

#include <cstdint>

#include "conf/config.h"
#include "core/hash/flow_hash.h"

namespace lb::hash {

uint64_t flow_hash(const sockaddr* client, conf::HashKey key) noexcept;

}  // namespace lb::hash
