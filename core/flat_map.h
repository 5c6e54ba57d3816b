// FlatMap: an open-addressing hash table for the UDP session lookup.
//
// Every datagram looks its client up, so the lookup must be one hash and, in
// the common case, one cache line: keys and values sit inline in one array
// (linear probing, power-of-two capacity, at most half full). Erase uses
// backward-shift deletion, so there are no tombstones and lookups never slow
// down as sessions come and go. Once fewer than an eighth of the slots are
// used the table halves (never below its initial capacity), so the memory a
// burst of clients took is given back as they leave.
//
// Requirements: Key is trivially copyable and equality-comparable, Hash gives
// well-mixed bits (the low bits pick the slot); Value is cheap to move.
// Linear probing degrades to a scan when keys share a home slot, so when
// outsiders choose the keys (client addresses) Hash must be keyed with a
// secret seed: the map keeps the Hash object it was given and uses only it.
// Thread: not thread-safe; one owner (a worker's UDP listener).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace lb::core {

template <typename Key, typename Value, typename Hash>
class FlatMap {
 public:
  explicit FlatMap(size_t initial_capacity = 16, Hash hash = Hash())
      : hash_(std::move(hash)), min_capacity_(round_up(initial_capacity)) {
    rehash(min_capacity_);
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return slots_.size(); }
  // The slot a key's probe starts at (for tests of the hash's seeding).
  size_t home_slot(const Key& key) const { return index(key); }
  const Hash& hasher() const { return hash_; }

  // The value for `key`, or nullptr.
  Value* find(const Key& key) {
    size_t i = index(key);
    for (;;) {
      Slot& s = slots_[i];
      if (!s.used) return nullptr;
      if (s.key == key) return &s.value;
      i = (i + 1) & mask_;
    }
  }

  // Inserts or overwrites.
  void insert(const Key& key, Value value) {
    if ((size_ + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    size_t i = index(key);
    for (;;) {
      Slot& s = slots_[i];
      if (!s.used) {
        s.used = true;
        s.key = key;
        s.value = std::move(value);
        ++size_;
        return;
      }
      if (s.key == key) {
        s.value = std::move(value);
        return;
      }
      i = (i + 1) & mask_;
    }
  }

  // Removes `key` if present; true when it was.
  bool erase(const Key& key) {
    size_t i = index(key);
    for (;;) {
      if (!slots_[i].used) return false;
      if (slots_[i].key == key) break;
      i = (i + 1) & mask_;
    }
    // Backward shift: pull later members of the probe run into the hole
    // when their home slot is at or before it (cyclically).
    size_t hole = i;
    size_t j = i;
    for (;;) {
      j = (j + 1) & mask_;
      if (!slots_[j].used) break;
      size_t home = index(slots_[j].key);
      bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
      if (movable) {
        slots_[hole] = std::move(slots_[j]);
        hole = j;
      }
    }
    slots_[hole].used = false;
    slots_[hole].value = Value();
    --size_;
    if (slots_.size() > min_capacity_ && size_ * 8 < slots_.size()) rehash(slots_.size() / 2);
    return true;
  }

  // Calls fn(key, value) for every entry. fn must not modify the table.
  template <typename Fn>
  void for_each(Fn&& fn) {
    for (Slot& s : slots_)
      if (s.used) fn(s.key, s.value);
  }

 private:
  struct Slot {
    Key key{};
    Value value{};
    bool used = false;
  };

  static size_t round_up(size_t n) {
    size_t c = 8;
    while (c < n) c *= 2;
    return c;
  }
  size_t index(const Key& key) const { return static_cast<size_t>(hash_(key)) & mask_; }

  void rehash(size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_ = std::vector<Slot>(capacity);  // a fresh vector: a shrink gives the memory back
    mask_ = capacity - 1;
    size_ = 0;
    for (Slot& s : old)
      if (s.used) insert(s.key, std::move(s.value));
  }

  Hash hash_;
  size_t min_capacity_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace lb::core
