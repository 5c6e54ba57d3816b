// The dashboard's files as lb serves them (lb/dashboard.h): every one with the
// page's Content-Security-Policy, GET/HEAD only, and all of them small. The
// page itself in a browser: test/e2e/dashboard_test.py.
#include <catch2/catch.hpp>

#include <string>

#include "core/admin/http_server.h"
#include "lb/dashboard.h"

namespace lb::app {
namespace {

admin::HttpRequest request(const std::string& method, const std::string& path) {
  admin::HttpRequest r;
  r.method = method;
  r.target = path;
  r.path = path;
  return r;
}

std::string header(const admin::HttpResponse& r, const std::string& name) {
  for (auto& [k, v] : r.headers)
    if (k == name) return v;
  return "";
}

TEST_CASE("dashboard: the page and its files, with the CSP", "[dashboard]") {
  struct Want {
    const char* path;
    const char* type;
    const char* marker;  // something only that file says
  };
  for (auto w : {Want{"/", "text/html; charset=utf-8", "<script src=\"/dashboard.js\""},
                 Want{"/dashboard.js", "text/javascript; charset=utf-8", "/api/v1/status"},
                 Want{"/dashboard.css", "text/css; charset=utf-8", ".badge"},
                 Want{"/favicon.svg", "image/svg+xml", "<svg"}}) {
    INFO(w.path);
    for (const char* method : {"GET", "HEAD"}) {
      auto r = serve_dashboard(request(method, w.path));
      REQUIRE(r);
      CHECK(r->status == 200);
      CHECK(r->content_type == w.type);
      CHECK(r->body.find(w.marker) != std::string::npos);
      CHECK(header(*r, "Content-Security-Policy") == "default-src 'self'; frame-ancestors 'none'");
      CHECK(header(*r, "X-Content-Type-Options") == "nosniff");
    }
    auto post = serve_dashboard(request("POST", w.path));
    REQUIRE(post);
    CHECK(post->status == 405);
  }
  CHECK_FALSE(serve_dashboard(request("GET", "/index.html")));
  CHECK_FALSE(serve_dashboard(request("GET", "/api/v1/status")));
  CHECK_FALSE(serve_dashboard(request("GET", "/dashboard.js/")));
}

TEST_CASE("dashboard: everything together stays under 100 KB", "[dashboard]") {
  size_t total = 0;
  for (size_t i = 0; i < kDashboardAssetCount; ++i) total += kDashboardAssets[i].size;
  CHECK(total == kDashboardTotalBytes);
  CHECK(total > 10000);  // the real page, not an empty placeholder
  CHECK(total <= 100 * 1024);
}

}  // namespace
}  // namespace lb::app
