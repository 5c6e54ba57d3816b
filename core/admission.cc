#include "core/admission.h"

namespace lb::core {

void count_refusal(ListenerStats::Slot& slot, Refusal r) {
  switch (r) {
    case Refusal::None:
      return;
    case Refusal::Limit:
      bump(slot.rejected_limit);
      return;
    case Refusal::ProxyProtocol:
      bump(slot.rejected_proxy);
      return;
    case Refusal::Acl:
      bump(slot.rejected_acl);
      return;
  }
}

Refusal Admission::open(SharedState& shared, const ListenerRuntime& listener) {
  if (shared.active_connections.fetch_add(1, std::memory_order_relaxed) >=
      static_cast<int64_t>(shared.max_connections.load(std::memory_order_relaxed))) {
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
    return Refusal::Limit;
  }
  if (!listener.stats->try_open(listener.cfg.max_connections)) {
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
    return Refusal::Limit;
  }
  place_ = true;
  return Refusal::None;
}

bool Admission::proxy_peer_trusted(const ListenerRuntime& listener, const sockaddr* peer) {
  return listener.proxy_trusted.empty() || listener.proxy_trusted.contains(peer);
}

Refusal Admission::admit_client(SharedState& shared, const ListenerRuntime& listener,
                                const sockaddr* client) {
  Refusal r = Refusal::None;
  if (listener.acl.enabled() && !listener.acl.permits(client)) {
    r = Refusal::Acl;
  } else if (uint64_t limit = listener.cfg.max_connections_per_source) {
    if (listener.stats->sources.try_acquire(client, limit))
      source_ = true;
    else
      r = Refusal::Limit;
  }
  if (r != Refusal::None) release(shared, *listener.stats, client);
  return r;
}

Refusal Admission::admit(SharedState& shared, const ListenerRuntime& listener, const sockaddr* client) {
  Refusal r = open(shared, listener);
  if (r != Refusal::None) return r;
  return admit_client(shared, listener, client);
}

void Admission::readmit(SharedState& shared, const ListenerRuntime& listener, const sockaddr* client,
                        bool admitted) {
  shared.active_connections.fetch_add(1, std::memory_order_relaxed);
  listener.stats->try_open(0);
  place_ = true;
  if (admitted && listener.cfg.max_connections_per_source)
    source_ = listener.stats->sources.try_acquire(client, 0);
}

void Admission::release(SharedState& shared, ListenerStats& stats, const sockaddr* client) {
  if (source_) stats.sources.release(client);
  source_ = false;
  if (place_) {
    stats.close_one();
    shared.active_connections.fetch_sub(1, std::memory_order_relaxed);
  }
  place_ = false;
}

}  // namespace lb::core
