// End-to-end: the command line — --check, --version, --help, exit codes, and
// start-up failures.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER
#include <fmt/format.h>
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "test/support/config_builder.h"
#include "test/support/lb_process.h"
#include "test/support/net.h"

namespace lb::test {
namespace {

struct Diag {
  int line = 0;
  int col = 0;
  std::string message;
};

// Every "PATH:LINE:COL: error: MESSAGE" line of `lines` for this PATH.
std::vector<Diag> diagnostics(const std::vector<OutputLine>& lines, const std::string& path) {
  std::vector<Diag> out;
  for (const auto& l : lines) {
    if (l.text.rfind(path + ":", 0) != 0) continue;
    const char* p = l.text.c_str() + path.size() + 1;
    char* end = nullptr;
    Diag d;
    d.line = static_cast<int>(std::strtol(p, &end, 10));
    if (end == p || *end != ':') continue;
    p = end + 1;
    d.col = static_cast<int>(std::strtol(p, &end, 10));
    if (end == p) continue;
    static constexpr std::string_view kTag = ": error: ";
    if (std::string_view(end).substr(0, kTag.size()) != kTag) continue;
    d.message = std::string(end + kTag.size());
    out.push_back(std::move(d));
  }
  return out;
}

// (line number, key) for each "expect-error: KEY" marker in a fixture.
std::vector<std::pair<int, std::string>> expected_errors(const std::string& path) {
  static constexpr std::string_view kMarker = "expect-error: ";
  std::ifstream f(path);
  std::vector<std::pair<int, std::string>> out;
  std::string text;
  for (int n = 1; std::getline(f, text); ++n) {
    // The header comment explains the markers; only real key lines count.
    size_t at = text.find(kMarker);
    if (text.rfind("#", 0) == 0 || at == std::string::npos) continue;
    std::string key = text.substr(at + kMarker.size());
    key = key.substr(0, key.find_first_of(" \t"));
    out.emplace_back(n, key);
  }
  return out;
}

std::string joined(const std::vector<OutputLine>& lines) {
  std::string out;
  for (const auto& l : lines) out += (l.stream == Stream::Stderr ? "[stderr] " : "[stdout] ") + l.text + "\n";
  return out;
}

TEST_CASE("lb --version prints the version", "[e2e][cli]") {
  LbRun run = run_lb({"--version"});
  INFO(joined(run.lines));
  CHECK(run.exit_status == 0);
  CHECK(run.out == "lb 0.1.0\n");
}

TEST_CASE("lb --help prints usage", "[e2e][cli]") {
  LbRun run = run_lb({"--help"});
  INFO(joined(run.lines));
  CHECK(run.exit_status == 0);
  CHECK((run.out + run.err).find("--config") != std::string::npos);
  CHECK((run.out + run.err).find("--check") != std::string::npos);
}

TEST_CASE("a bad command line exits 2", "[e2e][cli]") {
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"--no-such-option"},
           {"--config"},  // missing value
           {"-c"},
       }) {
    LbRun run = run_lb(args);
    INFO("args: " << args[0] << "\n" << joined(run.lines));
    CHECK(run.exit_status == 2);
    CHECK(!run.err.empty());
  }
}

TEST_CASE("lb --check reports every error of a broken file, compiler style", "[e2e][cli][check]") {
  const std::string path = test_data_dir() + "/e2e/broken.toml";
  const auto expected = expected_errors(path);
  REQUIRE(expected.size() >= 4);

  LbRun run = run_lb({"--check", "--config", path});
  INFO(joined(run.lines));
  CHECK(run.exit_status == 1);
  CHECK((run.out + run.err).find("configuration OK") == std::string::npos);

  // Errors go to stderr.
  std::vector<OutputLine> err_lines;
  for (const auto& l : run.lines) {
    if (l.stream == Stream::Stderr) err_lines.push_back(l);
  }
  const auto diags = diagnostics(err_lines, path);
  std::set<std::pair<int, int>> positions;
  for (const auto& d : diags) {
    CHECK(d.line > 0);
    CHECK(d.col > 0);
    positions.emplace(d.line, d.col);
  }
  CHECK(positions.size() >= 2);

  for (const auto& [line, key] : expected) {
    bool found = false;
    for (const auto& d : diags) found |= d.line == line && d.message.find(key) != std::string::npos;
    INFO("expected an error on line " << line << " naming `" << key << "`");
    CHECK(found);
  }
  // The value that is wrong is quoted in its message.
  bool port_named = false;
  for (const auto& d : diags) port_named |= d.message.find("99999") != std::string::npos;
  CHECK(port_named);
}

TEST_CASE("lb --check accepts a good file", "[e2e][cli][check]") {
  const std::string path = test_data_dir() + "/e2e/good.toml";
  for (const auto& flag : {"--config", "-c"}) {
    LbRun run = run_lb({"--check", flag, path});
    INFO(flag << "\n" << joined(run.lines));
    CHECK(run.exit_status == 0);
    CHECK((run.out + run.err).find(path + ": configuration OK") != std::string::npos);
  }
}

TEST_CASE("lb --check on a missing file exits 1 naming the file", "[e2e][cli][check]") {
  const std::string path = test_data_dir() + "/e2e/does-not-exist.toml";
  LbRun run = run_lb({"--check", "--config", path});
  INFO(joined(run.lines));
  CHECK(run.exit_status == 1);
  CHECK(run.err.find(path) != std::string::npos);
}

TEST_CASE("lb exits 1 when a listener cannot bind", "[e2e][cli][startup]") {
  // Held without SO_REUSEPORT, so lb's bind must fail with EADDRINUSE.
  Socket busy = tcp_listen("127.0.0.1");
  REQUIRE(busy);
  const uint16_t port = local_port(busy);
  LbProcess lb(ConfigBuilder()
                   .global()
                   .listener("web", "web", "", fmt::format("127.0.0.1:{}", port))
                   .pool("web")
                   .backend(fmt::format("127.0.0.1:{}", refused_port())));
  auto status = lb.wait_exit(in(kStartTimeout));
  INFO(lb.output());
  CHECK(status == 1);
  CHECK(lb.output().find(std::to_string(port)) != std::string::npos);
  CHECK(lb.output().find("info started") == std::string::npos);
}

}  // namespace
}  // namespace lb::test
