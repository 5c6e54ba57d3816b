#include "core/select/round_robin.h"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "core/select/pick_util.h"

namespace lb::core {

RoundRobinSelector::RoundRobinSelector(std::span<const Candidate> candidates, uint64_t seed,
                                       const RoundRobinSelector* previous)
    : start_(candidates.empty() ? 0 : static_cast<size_t>(seed % candidates.size())) {
  entries_.reserve(candidates.size());
  for (const Candidate& c : candidates) entries_.push_back({0, c.backend, c.weight, c.max_connections != 0});
  if (previous) take_over(*previous);
}

// After k picks over unchanged weights, backend i's current is
// k * w_i - W * picks_i = W * (its fair share of the k picks - its picks):
// current / W is how many picks it is owed (or has had in advance). Each
// backend that stays keeps that number, rescaled to the new total weight; a
// new one starts at 0 (owed nothing), a removed one takes its credit away.
// The sum of the currents may then differ from 0, which changes nothing:
// every pick adds and removes the same total, and a common offset never
// changes which current is the largest.
void RoundRobinSelector::take_over(const RoundRobinSelector& previous) {
  int64_t old_total = 0, new_total = 0;
  for (const Entry& e : previous.entries_) old_total += e.weight;
  for (const Entry& e : entries_) new_total += e.weight;
  if (old_total == 0 || new_total == 0) return;
  std::vector<std::pair<std::string_view, int64_t>> old;  // id -> current, sorted by id
  old.reserve(previous.entries_.size());
  for (const Entry& e : previous.entries_) old.emplace_back(e.backend->id, e.current);
  std::sort(old.begin(), old.end());
  const double scale = static_cast<double>(new_total) / static_cast<double>(old_total);
  for (Entry& e : entries_) {
    auto it = std::lower_bound(old.begin(), old.end(), std::string_view(e.backend->id),
                               [](const auto& o, std::string_view id) { return o.first < id; });
    if (it != old.end() && it->first == e.backend->id)
      e.current = static_cast<int64_t>(std::llround(static_cast<double>(it->second) * scale));
  }
  if (!entries_.empty()) start_ = previous.start_ % entries_.size();
}

Backend* RoundRobinSelector::pick(const PickContext& ctx) {
  const size_t n = entries_.size();
  const bool avoiding = !ctx.avoid.empty();
  int64_t total = 0;
  size_t best = n;
  int64_t best_current = 0;
  size_t i = start_;
  for (size_t k = 0; k < n; ++k, ++i) {
    if (i == n) i = 0;
    Entry& e = entries_[i];
    if ((e.limited && e.backend->full()) || (avoiding && select_detail::avoided(ctx, e.backend))) continue;
    e.current += e.weight;
    total += e.weight;
    if (best == n || e.current > best_current) {
      best = i;
      best_current = e.current;
    }
  }
  if (best == n) return nullptr;
  entries_[best].current -= total;
  return entries_[best].backend;
}

}  // namespace lb::core
