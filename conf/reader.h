// Private to lb_conf's parse step (conf/parse*.cc): reading one TOML table of
// the schema with toml++. Reader declares and checks each key in one call and
// reports the keys nobody asked for; the read_* functions below fill one part
// of Config each (parse.cc: global, admin and the document; parse_listener.cc:
// [[listener]] with its routes, certificates and TLS keys; parse_pool.cc:
// [[pool]] with its health check, outlier detection, TLS and backends). No
// toml++ type leaves conf/: nothing outside the parse files includes this.
// Thread rules: none (see conf/internal.h).
#pragma once

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "conf/internal.h"

namespace lb::conf {

inline SourcePos pos_of(const toml::source_region& r) {
  return SourcePos{static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
}

// How a value reads in a message: scalars as written, containers by kind.
std::string describe(const toml::node& n);

// Names, ids and strings that end up in HTTP requests, log lines and URLs:
// refuse what would break those lines. Each returns the reason, or "" when fine.
std::string no_space_or_control(const std::string& s);
std::string no_control(const std::string& s);
std::string non_empty_name(const std::string& s);

enum class Zero { Allowed, Refused };

inline constexpr uint64_t kUnbounded = std::numeric_limits<uint64_t>::max();

// Reads the keys of one schema table. Each read_* call both declares the key
// as part of the schema and checks it; finish() then reports every key of
// the table that nobody asked for.
class Reader {
 public:
  Reader(const toml::table& t, ObjectSrc& src, Diags& diags, std::string label)
      : table_(t), src_(src), diags_(diags) {
    src_.label = std::move(label);
    for (auto&& [k, v] : t) {
      src_.keys.emplace(std::string(k.str()), KeyPos{pos_of(k.source()), pos_of(v.source())});
    }
  }

  void relabel(std::string label) { src_.label = std::move(label); }
  const std::string& label() const { return src_.label; }

  // The value of `key`, or nullptr when absent. Declares the key as known.
  const toml::node* get(std::string_view key) {
    known_.emplace_back(key);
    return table_.get(key);
  }

  void require(std::string_view key) {
    if (!src_.has(key)) {
      diags_.error(src_.pos, fmt::format("{}missing required key {}", prefix(), quote(key)));
      src_.bad.emplace(key);
    }
  }

  // `OBJ: KEY VALUE: why`, at the value (or at an element of an array value).
  void value_error(std::string_view key, const toml::node& n, std::string_view why) {
    diags_.error(pos_of(n.source()), fmt::format("{}{} {}: {}", prefix(), key, describe(n), why));
    src_.bad.emplace(key);
  }

  // `OBJ: KEY: what`, at the node.
  void key_error(std::string_view key, const toml::node& n, std::string_view what) {
    diags_.error(pos_of(n.source()), fmt::format("{}{}: {}", prefix(), key, what));
    src_.bad.emplace(key);
  }

  // `OBJ: KEY: expected WHAT, got VALUE`.
  void type_error(std::string_view key, const toml::node& n, std::string_view expected) {
    diags_.error(pos_of(n.source()),
                 fmt::format("{}{}: expected {}, got {}", prefix(), key, expected, describe(n)));
    src_.bad.emplace(key);
  }

  // The value of `key` when it is a V (std::string, bool, int64_t); nullptr
  // when absent, or of another type (reported: `expected`). `n` is its node.
  template <class V>
  const toml::value<V>* get_as(std::string_view key, std::string_view expected, const toml::node*& n) {
    n = get(key);
    if (n == nullptr) return nullptr;
    const auto* v = n->as<V>();
    if (v == nullptr) type_error(key, *n, expected);
    return v;
  }

  // A string; `check` returns the reason it is unacceptable, or "".
  bool read_string(std::string_view key, std::string& out,
                   const std::function<std::string(const std::string&)>& check = {}) {
    const toml::node* n = nullptr;
    const auto* s = get_as<std::string>(key, "a string", n);
    if (s == nullptr) return false;
    if (check) {
      if (std::string why = check(s->get()); !why.empty()) {
        value_error(key, *n, why);
        return false;
      }
    }
    out = s->get();
    return true;
  }

  bool read_bool(std::string_view key, bool& out) {
    const toml::node* n = nullptr;
    const auto* b = get_as<bool>(key, "true or false", n);
    if (b == nullptr) return false;
    out = b->get();
    return true;
  }

  // An integer in [min, max]; max == kUnbounded means "whatever T holds".
  template <class T>
  bool read_uint(std::string_view key, T& out, uint64_t min, uint64_t max) {
    const toml::node* n = nullptr;
    const auto* i = get_as<int64_t>(key, "an integer", n);
    if (i == nullptr) return false;
    const int64_t v = i->get();
    const bool unbounded = max == kUnbounded;
    const uint64_t hi = std::min<uint64_t>(max, std::numeric_limits<T>::max());
    if (v < 0 || static_cast<uint64_t>(v) < min) {
      value_error(key, *n,
                  !unbounded ? fmt::format("out of range {}-{}", min, max)
                  : min == 0 ? std::string("must not be negative")
                             : fmt::format("must be at least {}", min));
      return false;
    }
    if (static_cast<uint64_t>(v) > hi) {
      value_error(key, *n,
                  unbounded ? std::string("too large") : fmt::format("out of range {}-{}", min, max));
      return false;
    }
    out = static_cast<T>(v);
    return true;
  }

  // A size string ("64KiB"), in bytes, at least `min`.
  bool read_size(std::string_view key, uint64_t& out, uint64_t min, std::string_view min_text) {
    return read_parsed(key, out, R"(a size string such as "512MiB")", parse_size_detailed, [&](uint64_t v) {
      return v < min ? fmt::format("must be at least {}", min_text) : "";
    });
  }

  bool read_duration(std::string_view key, Duration& out, Zero zero) {
    return read_parsed(key, out, R"(a duration string such as "2s")", parse_duration_detailed,
                       [&](Duration v) -> std::string {
                         return zero == Zero::Refused && v.count() == 0 ? "must be greater than 0" : "";
                       });
  }

  template <class E, size_t N>
  bool read_enum(std::string_view key, E& out, const EnumName<E> (&names)[N]) {
    const toml::node* n = get(key);
    if (n == nullptr) return false;
    std::string choices;
    for (const auto& e : names) {
      choices += choices.empty() ? "" : ", ";
      choices += e.name;
    }
    const auto* s = n->as_string();
    if (s == nullptr) {
      type_error(key, *n, "one of " + choices);
      return false;
    }
    for (const auto& e : names) {
      if (s->get() == e.name) {
        out = e.value;
        return true;
      }
    }
    value_error(key, *n, "expected one of " + choices);
    return false;
  }

  // One string or an array of them: the string nodes (for their positions);
  // an empty array is refused with `empty_why`, other values with the
  // expected types. Empty when absent.
  std::vector<const toml::node*> read_strings(std::string_view key, std::string_view empty_why,
                                              std::string_view item_expected, std::string_view expected) {
    std::vector<const toml::node*> items;
    const toml::node* n = get(key);
    if (n == nullptr) return items;
    if (n->is_string()) {
      items.push_back(n);
    } else if (const auto* a = n->as_array()) {
      if (a->empty()) key_error(key, *n, empty_why);
      for (const auto& e : *a) {
        if (e.is_string())
          items.push_back(&e);
        else
          type_error(key, e, item_expected);
      }
    } else {
      type_error(key, *n, expected);
    }
    return items;
  }

  // A table value (a [section] or an inline table); nullptr when absent or wrong.
  const toml::table* read_table(std::string_view key, std::string_view how_written) {
    const toml::node* n = get(key);
    if (n == nullptr) return nullptr;
    if (const auto* t = n->as_table()) return t;
    type_error(key, *n, fmt::format("a table ({})", how_written));
    return nullptr;
  }

  // An array of tables ([[section]] blocks or inline); reports elements that
  // are not tables. Returns nullptr when absent or not an array.
  const toml::array* read_table_array(std::string_view key, std::string_view how_written) {
    const toml::node* n = get(key);
    if (n == nullptr) return nullptr;
    const auto* a = n->as_array();
    if (a == nullptr) {
      type_error(key, *n, fmt::format("an array of tables ({})", how_written));
      return nullptr;
    }
    for (const auto& e : *a) {
      if (!e.is_table()) type_error(key, e, fmt::format("a table ({})", how_written));
    }
    return a;
  }

  void finish() {
    for (auto&& [k, v] : table_) {
      std::string_view name = k.str();
      if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
      std::string hint = suggestion(name, known_);
      diags_.error(pos_of(k.source()),
                   fmt::format("{}unknown key {}{}", prefix(), quote(name),
                               hint.empty() ? "" : fmt::format(" (did you mean {}?)", quote(hint))));
    }
  }

 private:
  // A string that `parse` (a parse_*_detailed function) turns into a value,
  // which `check` may still refuse (the reason, or "").
  template <class T, class Parse, class Check>
  bool read_parsed(std::string_view key, T& out, std::string_view expected, Parse parse, Check check) {
    const toml::node* n = nullptr;
    const auto* s = get_as<std::string>(key, expected, n);
    if (s == nullptr) return false;
    auto v = parse(s->get());
    if (!v.value) {
      value_error(key, *n, v.error);
      return false;
    }
    if (std::string why = check(*v.value); !why.empty()) {
      value_error(key, *n, why);
      return false;
    }
    out = *v.value;
    return true;
  }

  std::string prefix() const { return src_.label.empty() ? "" : src_.label + ": "; }

  const toml::table& table_;
  ObjectSrc& src_;
  Diags& diags_;
  std::vector<std::string> known_;
};

// Each table of the array of tables `key` read by `read(table, index, item,
// item_src, d)` into a new element of `items` and of `srcs` (kept parallel).
template <class T, class Src, class Read>
void read_each(Reader& r, std::string_view key, std::string_view how_written, std::vector<T>& items,
               std::vector<Src>& srcs, Diags& d, Read read) {
  const toml::array* a = r.read_table_array(key, how_written);
  if (a == nullptr) return;
  for (const auto& e : *a) {
    if (const toml::table* t = e.as_table()) {
      items.emplace_back();
      srcs.emplace_back();
      read(*t, items.size() - 1, items.back(), srcs.back(), d);
    }
  }
}

// An array of CIDR strings (allow, deny, trusted PROXY peers).
void read_cidrs(Reader& r, std::string_view key, std::vector<Cidr>& out);

// One [[listener]] table (its index in the file names it until its name is known).
void read_listener(const toml::table& t, size_t index, Listener& l, ListenerSrc& ls, Diags& d);

// One [[pool]] table.
void read_pool(const toml::table& t, size_t index, Pool& p, PoolSrc& ps, Diags& d);

}  // namespace lb::conf
