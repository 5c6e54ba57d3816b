// The monitoring files shipped in dist/ (Prometheus alerting rules, Grafana
// dashboard) use only metric names lb exports, and their PromQL parses.
//
// The exported names come from a live lb's /metrics (every family is listed
// with "# TYPE", samples or not), not from a copy of the spec's table that
// could drift from the code. Names the spec defines for features not built
// yet on this branch (TLS, upgrade, the access-log drop counter) are listed
// below: the rules and dashboard already cover them so operators need not
// edit them when those land. Once lb exports one, the test says so, and it
// should leave the list.
#include <fmt/format.h>
#include <sys/wait.h>
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "test/support/backend_server.h"
#include "test/support/http_client.h"
#include "test/support/lb_process.h"
#include "test/support/temp_dir.h"

namespace lb::test {
namespace {

using nlohmann::json;

// In shared/spec/interface.md's metric table, not exported by lb yet (none now: TLS and
// upgrades export theirs).
const std::set<std::string> kSpecifiedNotBuilt = {};

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string dist(const std::string& rel) { return std::string(LB_SOURCE_DIR) + "/dist/" + rel; }

void collect_exprs(const json& j, std::vector<std::string>& out) {
  if (j.is_object()) {
    for (auto& [k, v] : j.items()) {
      if (k == "expr" && v.is_string())
        out.push_back(v.get<std::string>());
      else
        collect_exprs(v, out);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) collect_exprs(v, out);
  }
}

// The PromQL of the rules file: every "expr:" value (single-line in ours).
std::vector<std::string> rule_exprs(const std::string& yaml) {
  std::vector<std::string> out;
  std::regex re(R"(^\s*expr:\s*(.+)$)");
  std::istringstream in(yaml);
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_match(line, m, re)) out.push_back(m[1]);
  return out;
}

std::set<std::string> metric_names(const std::vector<std::string>& exprs) {
  std::set<std::string> out;
  std::regex re(R"(\b((?:lb|process)_[a-z0-9_]+)\b)");
  for (const auto& e : exprs)
    for (auto it = std::sregex_iterator(e.begin(), e.end(), re); it != std::sregex_iterator(); ++it)
      out.insert((*it)[1]);
  return out;
}

std::set<std::string> exported_names() {
  TestBackend b{TestBackend::echo()};
  REQUIRE(b.ok());
  // A TCP listener, a UDP one and a hash pool: every family lb has.
  LbProcess lb(global_section(1, true) + fmt::format(R"(
[[listener]]
name = "t"
bind = "127.0.0.1:0"
pool = "p"
[[listener]]
name = "u"
protocol = "udp"
bind = "127.0.0.1:0"
pool = "p"
[[pool]]
name = "p"
selector = "maglev"
[pool.health_check]
type = "none"
[[pool.backend]]
address = "{}"
)",
                                                     b.address()));
  REQUIRE(lb.wait_started());
  HttpResponse r = http_get(lb.admin_port(), "/metrics");
  REQUIRE(r.status == 200);
  std::set<std::string> names;
  std::regex re(R"(^# TYPE (\S+) )");
  std::istringstream in(r.body);
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, re)) names.insert(m[1]);
  CHECK(lb.terminate() == 0);
  return names;
}

TEST_CASE("dist: the alerting rules and the Grafana dashboard use only metrics lb exports", "[e2e][dist]") {
  const std::set<std::string> exported = exported_names();
  REQUIRE(exported.count("lb_backend_up") == 1);
  REQUIRE(exported.count("process_open_fds") == 1);

  json dashboard = json::parse(read_text(dist("grafana/lb.json")), nullptr, false);
  REQUIRE_FALSE(dashboard.is_discarded());
  std::vector<std::string> dash_exprs;
  collect_exprs(dashboard, dash_exprs);
  const std::vector<std::string> rules = rule_exprs(read_text(dist("prometheus/lb.rules.yml")));
  REQUIRE(dash_exprs.size() >= 10);
  REQUIRE(rules.size() >= 7);

  for (const auto& [what, exprs] :
       {std::pair{"grafana/lb.json", dash_exprs}, std::pair{"prometheus/lb.rules.yml", rules}}) {
    const std::set<std::string> used = metric_names(exprs);
    CHECK(used.size() >= 5);
    for (const auto& name : used) {
      INFO(what << " uses " << name);
      CHECK((exported.count(name) == 1 || kSpecifiedNotBuilt.count(name) == 1));
    }
  }
  for (const auto& name : kSpecifiedNotBuilt)
    if (exported.count(name)) WARN(name << " is exported now: remove it from kSpecifiedNotBuilt");
}

#ifdef LB_PROMTOOL_PATH
// The dashboard's PromQL, with Grafana's variables substituted, parses:
// promtool checks it as a rules file of recording rules.
TEST_CASE("dist: every Grafana expression is valid PromQL (promtool)", "[e2e][dist]") {
  json dashboard = json::parse(read_text(dist("grafana/lb.json")), nullptr, false);
  REQUIRE_FALSE(dashboard.is_discarded());
  std::vector<std::string> exprs;
  collect_exprs(dashboard, exprs);
  REQUIRE_FALSE(exprs.empty());
  std::string yaml = "groups:\n  - name: dashboard\n    rules:\n";
  for (size_t i = 0; i < exprs.size(); ++i) {
    std::string e = std::regex_replace(exprs[i], std::regex(R"(\$__rate_interval)"), "1m");
    e = std::regex_replace(e, std::regex(R"(\$instance)"), ".*");
    json quoted = e;  // a JSON string is a valid YAML double-quoted scalar
    yaml += fmt::format("      - record: dashboard:expr{}\n        expr: {}\n", i, quoted.dump());
  }
  TempDir dir;
  const std::string file = dir.write_file("dashboard.rules.yml", yaml);
  REQUIRE(!file.empty());
  const std::string cmd = fmt::format("{} check rules {} 2>&1", LB_PROMTOOL_PATH, file);
  std::FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = ::pclose(p);
  INFO(yaml << "\n" << out);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
#endif

}  // namespace
}  // namespace lb::test
