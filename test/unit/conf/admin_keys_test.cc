// [admin] allow and api_token_file: parsed, the token read from its file
// (first line), and every way the file can be unusable is an error at load.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "conf/load.h"

using namespace lb::conf;

namespace {

const char* kRest = R"(
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:9001"
)";

struct TokenFile {
  std::string path;
  explicit TokenFile(const std::string& content) {
    char tmpl[] = "/tmp/lb-token-XXXXXX";
    int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
    std::ofstream(path) << content;
  }
  ~TokenFile() { std::remove(path.c_str()); }
};

LoadResult load_admin(const std::string& admin_body) {
  return load_string("[admin]\nlisten = \"127.0.0.1:9900\"\n" + admin_body + "\n" + kRest, "t.toml");
}

std::string errors(const LoadResult& r) {
  std::string out;
  for (auto& d : r.errors) out += d.str() + "\n";
  return out;
}

}  // namespace

TEST_CASE("[admin] defaults: no allow list, no token", "[conf][admin]") {
  auto r = load_admin("");
  INFO(errors(r));
  REQUIRE(r.ok());
  CHECK(r.config->admin.allow.empty());
  CHECK(r.config->admin.api_token_file.empty());
  CHECK(r.config->admin.api_token.empty());
  // The spec's example writes the default out.
  r = load_admin("allow = []\napi_token_file = \"\"");
  INFO(errors(r));
  REQUIRE(r.ok());
  CHECK(r.config->admin.api_token.empty());
}

TEST_CASE("[admin] allow takes CIDRs", "[conf][admin]") {
  auto r = load_admin(R"(allow = ["10.0.0.0/8", "::1/128"])");
  INFO(errors(r));
  REQUIRE(r.ok());
  REQUIRE(r.config->admin.allow.size() == 2);
  CHECK(r.config->admin.allow[0].text == "10.0.0.0/8");
  r = load_admin(R"(allow = ["10.0.0.1/8"])");
  CHECK_FALSE(r.ok());
  CHECK(errors(r).find("admin: allow") != std::string::npos);
  r = load_admin(R"(allow = "10.0.0.0/8")");
  CHECK_FALSE(r.ok());
}

TEST_CASE("[admin] api_token_file: the token is the first line, trimmed", "[conf][admin]") {
  TokenFile f("  s3cret-Token \r\nsecond line ignored\n");
  auto r = load_admin("api_token_file = \"" + f.path + "\"");
  INFO(errors(r));
  REQUIRE(r.ok());
  CHECK(r.config->admin.api_token_file == f.path);
  CHECK(r.config->admin.api_token == "s3cret-Token");
  TokenFile no_newline("tok");
  r = load_admin("api_token_file = \"" + no_newline.path + "\"");
  REQUIRE(r.ok());
  CHECK(r.config->admin.api_token == "tok");
}

TEST_CASE("[admin] api_token_file: missing, empty or blank first line is an error", "[conf][admin]") {
  TokenFile empty("");
  TokenFile blank("   \nsecond\n");
  TokenFile control("to\x01k\n");
  for (const std::string& path :
       {empty.path, blank.path, control.path, std::string("/nonexistent/lb-token")}) {
    auto r = load_admin("api_token_file = \"" + path + "\"");
    INFO(path << "\n" << errors(r));
    CHECK_FALSE(r.ok());
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].line == 3);
    CHECK(r.errors[0].message.find("admin: api_token_file") != std::string::npos);
  }
  // The token never appears in a message.
  TokenFile secret("\x01secret-value\n");
  auto r = load_admin("api_token_file = \"" + secret.path + "\"");
  CHECK(errors(r).find("secret-value") == std::string::npos);
}

TEST_CASE("load_admin_section reads [admin] only", "[conf][admin]") {
  TokenFile tok("t0k\n");
  char tmpl[] = "/tmp/lb-conf-XXXXXX";
  int fd = ::mkstemp(tmpl);
  REQUIRE(fd >= 0);
  ::close(fd);
  // The rest of the file is wrong in ways load_file would refuse.
  std::ofstream(tmpl) << "[admin]\nlisten = \"127.0.0.1:9911\"\napi_token_file = \"" << tok.path
                      << "\"\n[[pool]]\nname = \"x\"\nbogus_key = 1\n";
  auto r = load_admin_section(tmpl);
  CHECK(r.errors.empty());
  REQUIRE(r.admin);
  REQUIRE(r.admin->listen);
  CHECK(r.admin->listen->port() == 9911);
  CHECK(r.admin->api_token == "t0k");
  std::ofstream(tmpl) << "[admin]\nlisten = \"nope\"\n";
  r = load_admin_section(tmpl);
  CHECK_FALSE(r.admin);
  CHECK(r.errors.size() == 1);
  std::remove(tmpl);
  r = load_admin_section(tmpl);
  CHECK_FALSE(r.admin);
  CHECK(r.errors.size() == 1);
}
