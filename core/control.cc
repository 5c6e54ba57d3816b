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
    if (a.candidates[i].backend != b.candidates[i].backend ||
        a.candidates[i].weight != b.candidates[i].weight ||
        a.candidates[i].max_connections != b.candidates[i].max_connections)
      return false;
  return true;
}
}  // namespace

ControlPlane::ControlPlane(Publisher publish, Clock clock)
    : publish_(std::move(publish)), clock_(std::move(clock)) {
  if (!clock_) clock_ = [] { return std::chrono::steady_clock::now(); };
}

std::vector<ControlPlane::PoolState> ControlPlane::stage_locked(const conf::Config& cfg) const {
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
      if (ob && same_address(ob->backend->address, bc.address)) {
        st = *ob;  // the same backend: object, counters, health and admin state
        // A weight written anew in the file replaces one set by the admin API.
        if (ob->cfg.weight != bc.weight) st.weight_override = -1;
      } else {
        st.backend = std::make_shared<Backend>(pc.name, bc);
        st.up = !checked;
        if (ob) {
          // The id now names another server: it must pass its own first
          // probe, while the operator's admin state and the counters (a
          // Prometheus counter never goes back) continue.
          st.drain = ob->drain;
          if (ob->cfg.weight == bc.weight) st.weight_override = ob->weight_override;
          const Backend& o = *ob->backend;
          Backend& n = *st.backend;
          constexpr auto r = std::memory_order_relaxed;
          n.total.store(o.total.load(r), r);
          n.connect_failures.store(o.connect_failures.load(r), r);
          n.bytes_to_backend.store(o.bytes_to_backend.load(r), r);
          n.bytes_to_client.store(o.bytes_to_client.load(r), r);
          n.checks_pass.store(o.checks_pass.load(r), r);
          n.checks_fail.store(o.checks_fail.load(r), r);
        }
      }
      st.cfg = bc;
      if (!checked) st.up = true;
      st.seen_up = st.seen_up || st.up;
      ps.backends.push_back(std::move(st));
    }
    next.push_back(std::move(ps));
  }
  return next;
}

std::vector<ControlPlane::PoolBackends> ControlPlane::targets_of(const conf::Config& cfg,
                                                                 const std::vector<PoolState>& pools) {
  std::vector<PoolBackends> out;
  for (size_t i = 0; i < pools.size(); ++i) {
    PoolBackends pb{&cfg.pools[i], {}};
    for (const auto& b : pools[i].backends) pb.backends.push_back(b.backend);
    out.push_back(std::move(pb));
  }
  return out;
}

std::vector<ControlPlane::PoolBackends> ControlPlane::stage(const conf::Config& cfg,
                                                            std::shared_ptr<const tls::Contexts> tls) {
  std::lock_guard lk(mu_);
  staged_ = stage_locked(cfg);
  staged_tls_ = std::move(tls);
  has_staged_ = true;
  return targets_of(cfg, staged_);
}

void ControlPlane::commit_staged() {
  std::lock_guard lk(mu_);
  commit_locked();
}

void ControlPlane::drop_staged() {
  std::lock_guard lk(mu_);
  staged_.clear();
  staged_tls_.reset();
  has_staged_ = false;
}

void ControlPlane::commit_locked() {
  if (!has_staged_) return;
  for (auto& p : staged_) {
    const bool checked = p.cfg.health_check.type != conf::HealthType::None;
    for (auto& st : p.backends) {
      // A kept backend's live state may have moved on since stage().
      for (const auto& op : pools_)
        for (const auto& o : op.backends)
          if (o.backend == st.backend) {
            st.up = checked ? o.up : true;
            st.drain = o.drain;
            if (o.cfg.weight == st.cfg.weight) st.weight_override = o.weight_override;
            st.seen_up = o.seen_up || st.up;
            st.ramping = o.ramping;
            st.ramp_start = o.ramp_start;
          }
      Backend& b = *st.backend;
      b.weight.store(st.cfg.weight, std::memory_order_relaxed);
      b.backup.store(st.cfg.backup, std::memory_order_relaxed);
      b.max_connections.store(st.cfg.max_connections, std::memory_order_relaxed);
    }
  }
  pools_ = std::move(staged_);
  staged_.clear();
  tls_ = std::move(staged_tls_);
  staged_tls_.reset();
  has_staged_ = false;
  rebuild_locked();
}

std::vector<ControlPlane::PoolBackends> ControlPlane::apply(const conf::Config& cfg,
                                                            std::shared_ptr<const tls::Contexts> tls) {
  std::lock_guard lk(mu_);
  staged_ = stage_locked(cfg);
  staged_tls_ = std::move(tls);
  has_staged_ = true;
  commit_locked();
  return targets_of(cfg, pools_);
}

void ControlPlane::set_health(const Backend& b, bool up) {
  std::lock_guard lk(mu_);
  // A staged backend new to this reload: its first result, kept for commit.
  for (auto& p : staged_)
    for (auto& st : p.backends)
      if (st.backend.get() == &b) {
        st.up = up;
        st.seen_up = st.seen_up || up;
      }
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

std::vector<handover::BackendState> ControlPlane::save() const {
  std::lock_guard lk(mu_);
  const auto now = clock_();
  const auto r = std::memory_order_relaxed;
  std::vector<handover::BackendState> out;
  for (const auto& p : pools_)
    for (const auto& st : p.backends) {
      handover::BackendState b;
      b.pool = p.cfg.name;
      b.id = st.backend->id;
      b.up = st.up;
      b.drain = st.drain;
      b.admin_weight = st.weight_override >= 0 ? static_cast<uint32_t>(st.weight_override) + 1 : 0;
      if (st.ramping)
        b.slow_start_elapsed_ms = std::max<uint64_t>(
            1, static_cast<uint64_t>(
                   std::chrono::duration_cast<std::chrono::milliseconds>(now - st.ramp_start).count()));
      b.total = st.backend->total.load(r);
      b.connect_failures = st.backend->connect_failures.load(r);
      b.bytes_to_backend = st.backend->bytes_to_backend.load(r);
      b.bytes_to_client = st.backend->bytes_to_client.load(r);
      b.checks_pass = st.backend->checks_pass.load(r);
      b.checks_fail = st.backend->checks_fail.load(r);
      out.push_back(std::move(b));
    }
  return out;
}

void ControlPlane::restore(const std::vector<handover::BackendState>& saved) {
  std::lock_guard lk(mu_);
  const auto now = clock_();
  const auto r = std::memory_order_relaxed;
  for (const auto& b : saved)
    for (auto& p : pools_) {
      if (p.cfg.name != b.pool) continue;
      for (auto& st : p.backends) {
        if (st.backend->id != b.id) continue;
        st.up = b.up;
        st.seen_up = st.seen_up || b.up;
        st.drain = b.drain;
        st.weight_override = b.admin_weight > 0 ? static_cast<int>(b.admin_weight - 1) : -1;
        st.ramping = b.slow_start_elapsed_ms > 0 && p.cfg.slow_start.count() > 0;
        if (st.ramping) st.ramp_start = now - std::chrono::milliseconds(b.slow_start_elapsed_ms);
        st.backend->total.fetch_add(b.total, r);
        st.backend->connect_failures.fetch_add(b.connect_failures, r);
        st.backend->bytes_to_backend.fetch_add(b.bytes_to_backend, r);
        st.backend->bytes_to_client.fetch_add(b.bytes_to_client, r);
        st.backend->checks_pass.fetch_add(b.checks_pass, r);
        st.backend->checks_fail.fetch_add(b.checks_fail, r);
      }
    }
  rebuild_locked();
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

// An admin change during a reload also reaches the staged configuration (for
// a backend that is a new object there).
template <class F>
void ControlPlane::for_staged(const std::string& pool, const std::string& id, F&& f) {
  for (auto& p : staged_)
    if (p.cfg.name == pool)
      for (auto& s : p.backends)
        if (s.backend->id == id) f(s);
}

ControlPlane::Status ControlPlane::set_drain(const std::string& pool, const std::string& id, bool drain) {
  std::lock_guard lk(mu_);
  Status st;
  BackendState* b = find(pool, id, &st);
  if (!b) return st;
  for_staged(pool, id, [&](BackendState& s) { s.drain = drain; });
  if (b->drain != drain) {
    b->drain = drain;
    rebuild_locked();
  }
  return Status::Ok;
}

ControlPlane::Status ControlPlane::set_weight(const std::string& pool, const std::string& id,
                                              unsigned weight) {
  std::lock_guard lk(mu_);
  Status st;
  BackendState* b = find(pool, id, &st);
  if (!b) return st;
  b->weight_override = static_cast<int>(weight);
  for_staged(pool, id, [&](BackendState& s) { s.weight_override = static_cast<int>(weight); });
  rebuild_locked();
  return Status::Ok;
}

void ControlPlane::rebuild_locked() {
  const auto now = clock_();
  const uint64_t version = version_ + 1;
  auto table = std::make_shared<BackendTable>();
  table->version = version;
  table->tls = tls_;
  // Whether the table differs from the current one: a pool was added,
  // removed, moved or rebuilt, or the TLS contexts are another
  // configuration's.
  bool changed = !current_ || current_->pools.size() != pools_.size() || current_->tls != tls_;
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
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->backend->id < b->backend->id; });
    for (auto* b : sorted) pt->backends.push_back(b->backend);
    auto usable = [](const BackendState* b) { return b->up && !b->drain && b->weight() > 0; };
    auto candidate = [&](const BackendState& b) {
      return Candidate{b.backend.get(), weight[&b],
                       b.backend->max_connections.load(std::memory_order_relaxed)};
    };
    for (auto* b : sorted)
      if (!b->backend->backup && usable(b)) pt->candidates.push_back(candidate(*b));
    if (pt->candidates.empty()) {
      for (auto* b : sorted)
        if (b->backend->backup && usable(b)) pt->candidates.push_back(candidate(*b));
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
