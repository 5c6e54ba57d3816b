// Every validation error, from fixtures under test/data/conf/errors/.
//
// Each fixture states the errors it must produce in comments, next to the
// offending line, in one of three forms:
//   key = value   # error(COL): MESSAGE        the error is on this line
//   # error(LINE:COL): MESSAGE                 anywhere in the file
//   # error: MESSAGE                           an error without a position
// The test loads the fixture and requires exactly that set of diagnostics
// (message, line and column).

#include <algorithm>
#include <catch2/catch.hpp>
#include <climits>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

#include "conf/load.h"

namespace {

struct Expected {
  int line = 0;
  int col = 0;
  std::string message;

  bool operator<(const Expected& o) const {
    auto key = [](const Expected& e) { return std::tuple(e.line > 0 ? e.line : INT_MAX, e.col, e.message); };
    return key(*this) < key(o);
  }
};

std::string render(const Expected& e) {
  if (e.line == 0) return "-: " + e.message;
  return std::to_string(e.line) + ":" + std::to_string(e.col) + ": " + e.message;
}

std::string fixture_path(const std::string& name) {
  return std::string(LB_TEST_DATA_DIR) + "/conf/errors/" + name;
}

std::vector<Expected> expectations(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  static const std::regex marker(R"(#\s*error(?:\((\d+)(?::(\d+))?\))?:\s(.*)$)");
  std::vector<Expected> out;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    std::smatch m;
    if (!std::regex_search(text, m, marker)) continue;
    Expected e;
    e.message = m[3];
    if (m[2].matched) {  // (LINE:COL)
      e.line = std::stoi(m[1]);
      e.col = std::stoi(m[2]);
    } else if (m[1].matched) {  // (COL) on this line
      e.line = line;
      e.col = std::stoi(m[1]);
    }
    out.push_back(e);
  }
  return out;
}

// Loads the fixture and compares the diagnostics with its annotations.
void check_fixture(const std::string& name) {
  const std::string path = fixture_path(name);
  std::vector<Expected> want = expectations(path);
  REQUIRE_FALSE(want.empty());  // a fixture without expectations tests nothing

  lb::conf::LoadResult result = lb::conf::load_file(path);
  CHECK_FALSE(result.ok());
  CHECK_FALSE(result.config.has_value());

  std::vector<Expected> got;
  for (const auto& d : result.errors) {
    CHECK(d.file == path);
    got.push_back(Expected{d.line, d.col, d.message});
  }
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());

  // Report the difference, not two long lists.
  std::vector<Expected> missing;
  std::vector<Expected> unexpected;
  std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(missing));
  std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(unexpected));
  INFO("fixture: " << path);
  for (const auto& e : missing) {
    UNSCOPED_INFO("expected but not reported: " << render(e));
  }
  for (const auto& e : unexpected) {
    UNSCOPED_INFO("reported but not expected: " << render(e));
  }
  CHECK((missing.empty() && unexpected.empty()));
  CHECK(got.size() == want.size());
}

}  // namespace

TEST_CASE("TOML syntax errors carry toml++'s message and position", "[conf][errors]") {
  check_fixture("syntax_error.toml");
  check_fixture("syntax_duplicate_key.toml");
}

TEST_CASE("unknown keys are errors at every level, with a suggestion", "[conf][errors]") {
  check_fixture("unknown_keys.toml");
}

TEST_CASE("values of the wrong TOML type", "[conf][errors]") { check_fixture("types.toml"); }

TEST_CASE("durations: bare numbers, bad syntax, zero where it cannot work", "[conf][errors]") {
  check_fixture("durations.toml");
}

TEST_CASE("ports out of range; port 0 only where lb binds", "[conf][errors]") { check_fixture("ports.toml"); }

TEST_CASE("malformed IP addresses and host names", "[conf][errors]") { check_fixture("addresses.toml"); }

TEST_CASE("malformed CIDRs in allow and deny", "[conf][errors]") { check_fixture("cidrs.toml"); }

TEST_CASE("enum keys name their accepted values", "[conf][errors]") { check_fixture("enums.toml"); }

TEST_CASE("integers out of range", "[conf][errors]") { check_fixture("ranges.toml"); }

TEST_CASE("sizes: bare numbers and sizes below the minimum", "[conf][errors]") {
  check_fixture("sizes.toml");
  check_fixture("sizes_small.toml");
}

TEST_CASE("unknown pools, duplicate names and ids, pools without backends", "[conf][errors]") {
  check_fixture("references.toml");
}

TEST_CASE("a file without listeners", "[conf][errors]") { check_fixture("no_listener.toml"); }

TEST_CASE("keys that cannot work with the listener's protocol", "[conf][errors]") {
  check_fixture("protocols.toml");
}

TEST_CASE("one bind address for two listeners of one protocol", "[conf][errors]") {
  check_fixture("binds.toml");
}

TEST_CASE("missing required keys point at their table", "[conf][errors]") { check_fixture("required.toml"); }

TEST_CASE("sections written with the wrong brackets", "[conf][errors]") { check_fixture("structure.toml"); }

TEST_CASE("strings with a required shape", "[conf][errors]") { check_fixture("strings.toml"); }

TEST_CASE("TLS keys: values, modes, routes, certificates, [pool.tls], hash_key sni", "[conf][errors][tls]") {
  check_fixture("tls.toml");
}
