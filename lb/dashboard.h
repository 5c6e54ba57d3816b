// The operator dashboard: GET / on the admin listener.
//
// One page (lb/dashboard/index.html) with its script and style sheet as
// same-origin resources (/dashboard.js, /dashboard.css, /favicon.svg), because the page's
// Content-Security-Policy forbids inline script and style. The files are
// compiled into the binary at build time (lb/dashboard/embed.cmake); the page
// reads /api/v1/status every second and drives the backend POSTs itself.
#pragma once

#include <cstddef>
#include <optional>

#include "core/admin/http_server.h"

namespace lb::app {

// Every response of the dashboard carries this policy: nothing from elsewhere,
// no inline code, never inside a frame.
inline constexpr const char* kDashboardCsp = "default-src 'self'; frame-ancestors 'none'";

struct DashboardAsset {
  const char* path;  // "/", "/dashboard.js", ...
  const char* content_type;
  const unsigned char* data;
  size_t size;
};

// Generated from lb/dashboard/ at build time.
extern const DashboardAsset kDashboardAssets[];
extern const size_t kDashboardAssetCount;
extern const size_t kDashboardTotalBytes;

// The answer when `req` asks for one of the dashboard's files (405 for a
// method other than GET/HEAD), std::nullopt when its path is not one of them.
std::optional<admin::HttpResponse> serve_dashboard(const admin::HttpRequest& req);

}  // namespace lb::app
