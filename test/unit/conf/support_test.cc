// The "not supported yet" table of conf/support.cc.
//
// One row per unbuilt feature: a line that asks for it must be refused with
// `<object>: <key>: not supported yet` at the key, and a line with the key's
// default value must be accepted. When a feature lands and its entry leaves
// support.cc, delete its row here (the "refused" check then fails until you do).

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>

#include "conf/internal.h"
#include "conf/load.h"

using namespace lb::conf;

namespace {

enum class Section { Global, Listener, Pool, HealthCheck, Outlier, Backend };

struct Row {
  Section section;
  const char* in_use;        // a line that asks for the feature
  const char* default_line;  // the same key at a value that does not
  const char* message;       // the error for `in_use`
};

// clang-format off
const Row kRows[] = {
  {Section::Listener, R"(proxy_protocol = "v1")",              R"(proxy_protocol = "off")",
   R"(listener "web": proxy_protocol: not supported yet)"},
  {Section::Listener, R"(proxy_protocol = "v2")",              R"(proxy_protocol = "off")",
   R"(listener "web": proxy_protocol: not supported yet)"},
  {Section::Listener, R"(accept_proxy_protocol = true)",       R"(accept_proxy_protocol = false)",
   R"(listener "web": accept_proxy_protocol: not supported yet)"},
  {Section::Listener, R"(max_connections = 100)",              R"(max_connections = 0)",
   R"(listener "web": max_connections: not supported yet)"},
  {Section::Listener, R"(max_connections_per_source = 5)",     R"(max_connections_per_source = 0)",
   R"(listener "web": max_connections_per_source: not supported yet)"},
  {Section::Listener, R"(allow = ["10.0.0.0/8"])",             R"(allow = [])",
   R"(listener "web": allow: not supported yet)"},
  {Section::Listener, R"(deny = ["10.0.0.0/8"])",              R"(deny = [])",
   R"(listener "web": deny: not supported yet)"},
};
// clang-format on

// A valid configuration with `line` placed in `section`; *line_no receives
// the line number it lands on.
std::string config_with(Section section, const std::string& line, int* line_no) {
  const Section order[] = {Section::Global,      Section::Listener, Section::Pool,
                           Section::HealthCheck, Section::Outlier,  Section::Backend};
  const char* headers[] = {
      "[global]\n",
      "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"web\"\n",
      "[[pool]]\nname = \"web\"\n",
      "[pool.health_check]\n",
      "[pool.outlier]\n",
      "[[pool.backend]]\naddress = \"127.0.0.1:9001\"\n",
  };
  std::string text;
  for (size_t i = 0; i < std::size(order); ++i) {
    text += headers[i];
    if (order[i] == section) {
      *line_no = 1 + static_cast<int>(std::count(text.begin(), text.end(), '\n'));
      text += line + "\n";
    }
  }
  return text;
}

std::string errors_text(const LoadResult& r) {
  std::string out;
  for (const auto& d : r.errors) out += d.str() + "\n";
  return out;
}

}  // namespace

TEST_CASE("the scaffold of these tests is valid on its own", "[conf][support]") {
  int line = 0;
  LoadResult r = load_string(config_with(Section::Global, "", &line), "lb.toml");
  INFO(errors_text(r));
  CHECK(r.ok());
}

TEST_CASE("features not built yet are refused at their key", "[conf][support]") {
  for (const Row& row : kRows) {
    int line = 0;
    const std::string text = config_with(row.section, row.in_use, &line);
    LoadResult r = load_string(text, "lb.toml");
    INFO("row: " << row.in_use << "\n" << errors_text(r));
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == line);
    CHECK(r.errors[0].col == 1);
    CHECK(r.errors[0].message == row.message);
    CHECK_FALSE(r.config.has_value());
  }
}

TEST_CASE("their default values are accepted", "[conf][support]") {
  for (const Row& row : kRows) {
    int line = 0;
    LoadResult r = load_string(config_with(row.section, row.default_line, &line), "lb.toml");
    INFO("row: " << row.default_line << "\n" << errors_text(r));
    CHECK(r.ok());
  }
}

TEST_CASE("the refusal comes from the support table alone", "[conf][support]") {
  // Without the table the same lines are valid configuration.
  for (const Row& row : kRows) {
    int line = 0;
    LoadResult r = load_text(config_with(row.section, row.in_use, &line), "lb.toml",
                             LoadOptions{.enforce_support = false});
    INFO("row: " << row.in_use << "\n" << errors_text(r));
    CHECK(r.ok());
  }
}

TEST_CASE("every object that asks for a feature gets its own error", "[conf][support]") {
  const char* text = R"([[listener]]
name = "a"
bind = "127.0.0.1:0"
pool = "web"
max_connections = 1

[[listener]]
name = "b"
bind = "127.0.0.1:0"
pool = "web"
max_connections = 2

[[pool]]
name = "web"

[[pool.backend]]
address = "127.0.0.1:9001"
)";
  LoadResult r = load_string(text, "lb.toml");
  std::vector<std::string> got;
  for (const auto& d : r.errors) got.push_back(d.str());
  CHECK(got == std::vector<std::string>{
                   R"(lb.toml:5:1: error: listener "a": max_connections: not supported yet)",
                   R"(lb.toml:11:1: error: listener "b": max_connections: not supported yet)",
      });
}
