#include "lb/dashboard.h"

#include <string>

namespace lb::app {

std::optional<admin::HttpResponse> serve_dashboard(const admin::HttpRequest& req) {
  for (size_t i = 0; i < kDashboardAssetCount; ++i) {
    const DashboardAsset& a = kDashboardAssets[i];
    if (req.path != a.path) continue;
    admin::HttpResponse r;
    if (req.method != "GET" && req.method != "HEAD") {
      r.status = 405;
      r.body = "method not allowed\n";
      return r;
    }
    r.content_type = a.content_type;
    r.body.assign(reinterpret_cast<const char*>(a.data), a.size);
    r.headers = {{"Content-Security-Policy", kDashboardCsp},
                 {"X-Content-Type-Options", "nosniff"},
                 {"Referrer-Policy", "no-referrer"}};
    return r;
  }
  return std::nullopt;
}

}  // namespace lb::app
