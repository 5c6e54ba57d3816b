#include "core/control.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "core/log.h"
#include "core/select/selector.h"

namespace lb::core {

namespace {
bool same_address(const conf::Endpoint& a, const conf::Endpoint& b) {
  return a.addr_len == b.addr_len && std::memcmp(&a.addr, &b.addr, a.addr_len) == 0;
}

// Whether two pool tables give selectors the same input (everything but the
// lookup table, which is a function of the rest).
bool same_selection(const PoolTable& a, const PoolTable& b) {
  if (a.name != b.name || a.selector != b.selector || a.hash_key != b.hash_key ||
      a.hash_balance_factor != b.hash_balance_factor || a.using_backups != b.using_backups ||
      a.backends != b.backends || a.candidates.size() != b.candidates.size())
    return false;
  for (size_t i = 0; i < a.candidates.size(); ++i)
    if (a.candidates[i].backend != b.candidates[i].backend || a.candidates[i].weight != b.candidates[i].weight)
      return false;
  return true;
}
}  // namespace

ControlPlane::ControlPlane(Publisher publish, Clock clock)
    : publish_(std::move(publish)), clock_(std::move(clock)) {
  if (!clock_) clock_ = [] { return std::chrono::steady_clock::now(); };
}

std::vector<ControlPlane::PoolBackends> ControlPlane::apply(const conf::Config& cfg) {
  std::lock_guard lk(mu_);
  std::vector<PoolState> next;
  next.reserve(cfg.pools.size());
  for (const auto& pc : cfg.pools) {
    PoolState ps;
    ps.cfg = pc;
    const PoolState* old_pool = nullptr;
    for (const auto& op : pools_)
      if (op.cfg.name == pc.name) old_pool = &op;
    const bool checked = pc.health_check.type != conf::HealthType::None;
    for (const auto& bc : pc.backends) {
      const BackendState* ob = nullptr;
      if (old_pool)
        for (const auto& o : old_pool->backends)
          if (o.backend->id == bc.id) ob = &o;
      BackendState st;
      if (ob && same_address(ob->backend->address, bc.address) && ob->backend->weight == bc.weight &&
          ob->backend->backup == bc.backup && ob->backend->max_connections == bc.max_connections) {
        st = *ob;  // unchanged: same object, counters, health and admin state
      } else {
        st.backend = std::make_shared<Backend>(pc.name, bc);
        st.up = !checked;
        if (ob) {
          // Same id, new settings: the operator's admin state carries over,
          // and so does the health verdict if the address did not change.
          st.drain = ob->drain;
          if (same_address(ob->backend->address, bc.address)) st.up = ob->up;
        }
      }
      if (!checked) st.up = true;
      st.seen_up = st.seen_up || st.up;
      ps.backends.push_back(std::move(st));
    }
    next.push_back(std::move(ps));
  }
  pools_ = std::move(next);
  rebuild_locked();

  std::vector<PoolBackends> out;
  for (size_t i = 0; i < pools_.size(); ++i) {
    PoolBackends pb{&cfg.pools[i], {}};
    for (auto& b : pools_[i].backends) pb.backends.push_back(b.backend);
    out.push_back(std::move(pb));
  }
  return out;
}

void ControlPlane::set_health(const Backend& b, bool up) {
  std::lock_guard lk(mu_);
  for (auto& p : pools_) {
    for (auto& st : p.backends) {
      if (st.backend.get() == &b) {
        if (st.up == up) return;
        st.up = up;
        if (up && st.seen_up && p.cfg.slow_start.count() > 0) {
          st.ramping = true;
          st.ramp_start = clock_();
        }
        if (up) st.seen_up = true;
        if (!up) st.ramping = false;
        rebuild_locked();
        return;
      }
    }
  }
}

bool ControlPlane::tick() {
  std::lock_guard lk(mu_);
  bool any = false;
  for (auto& p : pools_)
    for (auto& b : p.backends) any = any || b.ramping;
  if (any) rebuild_locked();
  return any;
}

ControlPlane::BackendState* ControlPlane::find(const std::string& pool, const std::string& id, Status* st) {
  for (auto& p : pools_) {
    if (p.cfg.name != pool) continue;
    for (auto& b : p.backends) {
      if (b.backend->id == id) {
        *st = Status::Ok;
        return &b;
      }
    }
    *st = Status::NoBackend;
    return nullptr;
  }
  *st = Status::NoPool;
  return nullptr;
}

ControlPlane::Status ControlPlane::set_drain(const std::string& pool, const std::string& id, bool drain) {
  std::lock_guard lk(mu_);
  Status st;
  BackendState* b = find(pool, id, &st);
  if (!b) return st;
  if (b->drain != drain) {
    b->drain = drain;
    rebuild_locked();
  }
  return Status::Ok;
}

ControlPlane::Status ControlPlane::set_weight(const std::string& pool, const std::string& id, unsigned weight) {
  std::lock_guard lk(mu_);
  Status st;
  BackendState* b = find(pool, id, &st);
  if (!b) return st;
  b->weight_override = static_cast<int>(weight);
  rebuild_locked();
  return Status::Ok;
}

void ControlPlane::rebuild_locked() {
  const auto now = clock_();
  const uint64_t version = version_ + 1;
  auto table = std::make_shared<BackendTable>();
  table->version = version;
  // Whether the table differs from the current one: a pool was added,
  // removed, moved or rebuilt.
  bool changed = !current_ || current_->pools.size() != pools_.size();
  size_t built = 0;
  for (size_t i = 0; i < pools_.size(); ++i) {
    auto& p = pools_[i];
    auto pt = std::make_shared<PoolTable>();
    pt->name = p.cfg.name;
    pt->version = version;
    pt->selector = p.cfg.selector;
    pt->hash_key = p.cfg.hash_key;
    pt->hash_balance_factor = p.cfg.hash_balance_factor;
    // Slow start: a recovered backend's weight ramps linearly from 1% to
    // 100% of its weight. Selectors only use weight ratios, so while a ramp
    // runs every weight of the pool is scaled by 100 to make the steps fine.
    bool ramp = false;
    for (auto& b : p.backends) {
      if (b.ramping && now - b.ramp_start >= p.cfg.slow_start) b.ramping = false;
      ramp = ramp || b.ramping;
    }
    std::map<const BackendState*, uint32_t> weight;
    for (auto& b : p.backends) {
      uint32_t w = b.weight();
      if (ramp) {
        w *= 100;
        if (b.ramping) {
          double f = std::chrono::duration<double>(now - b.ramp_start) /
                     std::chrono::duration<double>(p.cfg.slow_start);
          w = std::max<uint32_t>(1, static_cast<uint32_t>(w * f));
        }
      }
      weight[&b] = w;
    }
    std::vector<const BackendState*> sorted;
    for (auto& b : p.backends) sorted.push_back(&b);
    std::sort(sorted.begin(), sorted.end(),
              [](auto* a, auto* b) { return a->backend->id < b->backend->id; });
    for (auto* b : sorted) pt->backends.push_back(b->backend);
    auto usable = [](const BackendState* b) { return b->up && !b->drain && b->weight() > 0; };
    for (auto* b : sorted)
      if (!b->backend->backup && usable(b)) pt->candidates.push_back({b->backend.get(), weight[b]});
    if (pt->candidates.empty()) {
      for (auto* b : sorted)
        if (b->backend->backup && usable(b)) pt->candidates.push_back({b->backend.get(), weight[b]});
      pt->using_backups = !pt->candidates.empty();
    }

    // A pool whose selector input is what it was keeps its table object:
    // no hash table rebuild here, and workers keep its selector (and the
    // round robin cursor) as it is (core/select/selector_set.h).
    PoolTablePtr previous = current_ ? current_->find_ptr(pt->name) : nullptr;
    if (previous && same_selection(*previous, *pt)) {
      if (i >= current_->pools.size() || current_->pools[i] != previous) changed = true;
      table->pools.push_back(std::move(previous));
      continue;
    }
    pt->lookup = build_lookup_table(pt->selector, pt->candidates);
    pt->digest = pt->lookup ? pt->lookup->digest() : 0;
    ++stats_.pool_tables;
    if (pt->lookup) ++stats_.lookup_tables;
    ++built;
    changed = true;
    table->pools.push_back(std::move(pt));
  }
  if (!changed) return;  // nothing a worker would see: no publish
  version_ = version;
  current_ = table;
  ++stats_.publishes;
  log::debug("backend table published version={} pools={} rebuilt={}", table->version, table->pools.size(),
             built);
  if (publish_) publish_(current_);
}

std::vector<ControlPlane::PoolView> ControlPlane::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<PoolView> out;
  for (size_t i = 0; i < pools_.size(); ++i) {
    const auto& p = pools_[i];
    PoolView v;
    v.name = p.cfg.name;
    v.selector = p.cfg.selector;
    if (current_ && i < current_->pools.size() && current_->pools[i]->lookup) {
      v.has_digest = true;
      v.digest = current_->pools[i]->digest;
    } else if (conf::is_hash_selector(p.cfg.selector)) {
      v.has_digest = true;  // empty table: digest of nothing
      v.digest = 0;
    }
    v.health_type = p.cfg.health_check.type;
    const auto now = std::chrono::steady_clock::now();
    for (auto& b : p.backends) {
      double w = b.weight();
      // The same ramp rebuild_locked() applies, in the weight's own units.
      if (b.ramping && now - b.ramp_start < p.cfg.slow_start) {
        double f = std::chrono::duration<double>(now - b.ramp_start) /
                   std::chrono::duration<double>(p.cfg.slow_start);
        w = std::max(w * f, w / 100);
      }
      v.backends.push_back({b.backend, b.up, b.drain, b.weight(), w});
    }
    out.push_back(std::move(v));
  }
  return out;
}

ControlPlane::BuildStats ControlPlane::build_stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

BackendTablePtr ControlPlane::current() const {
  std::lock_guard lk(mu_);
  return current_;
}

}  // namespace lb::core
