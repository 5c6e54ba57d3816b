// Reader's shared pieces (conf/reader.h): how values read in messages, the
// string checks most tables use, CIDR lists.
#include "conf/reader.h"

namespace lb::conf {

// How a value reads in a message: scalars as written, containers by kind.
std::string describe(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string:
      return quote(n.as_string()->get());
    case toml::node_type::integer:
      return std::to_string(n.as_integer()->get());
    case toml::node_type::floating_point:
      return fmt::format("{}", n.as_floating_point()->get());
    case toml::node_type::boolean:
      return n.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

// Names, ids and strings that end up in HTTP requests, log lines and URLs:
// refuse what would break those lines. Returns the reason, or "" when fine.
std::string no_space_or_control(const std::string& s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7f) return "must not contain spaces or control characters";
  }
  return {};
}

std::string no_control(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return "must not contain control characters";
  }
  return {};
}

std::string non_empty_name(const std::string& s) {
  if (s.empty()) return "must not be empty";
  return no_space_or_control(s);
}

void read_cidrs(Reader& r, std::string_view key, std::vector<Cidr>& out) {
  const toml::node* n = r.get(key);
  if (n == nullptr) return;
  const auto* a = n->as_array();
  if (a == nullptr) {
    r.type_error(key, *n, R"(an array of CIDR strings such as ["10.0.0.0/8"])");
    return;
  }
  for (const auto& e : *a) {
    if (!e.is_string()) {
      r.type_error(key, e, R"(a CIDR string such as "10.0.0.0/8")");
      continue;
    }
    const std::string& text = e.as_string()->get();
    auto c = parse_cidr_detailed(text);
    if (!c.value) {
      r.value_error(key, e, c.error);
    } else if (c.value->host_bits_set) {
      // Almost always a typo for a narrower prefix: do not guess which.
      r.value_error(key, e,
                    fmt::format("address has bits set beyond the /{} prefix", c.value->cidr.prefix_len));
    } else {
      out.push_back(std::move(c.value->cidr));
    }
  }
}

}  // namespace lb::conf
