// The admin API and /metrics, answered on the main thread.
//
//   GET  /, /dashboard.js, /dashboard.css, /favicon.svg  the dashboard (lb/dashboard.h)
//   GET  /healthz                                200 "ok" / 503 "draining"
//   GET  /metrics                                Prometheus text format 0.0.4
//   GET  /api/v1/status                          JSON (shared/spec/interface.md)
//   POST /api/v1/pools/{pool}/backends/{id}      {"state":"drain"|"active"} or {"weight":N}
#pragma once

#include <string>

#include "core/admin/http_server.h"

namespace lb::app {

class Server;

admin::HttpResponse handle_admin(Server& server, const admin::HttpRequest& req);

// Prometheus label value escaping (\\, \", \n).
std::string prom_escape(const std::string& v);
// 16 lower-case hex digits.
std::string hex_digest(uint64_t d);

}  // namespace lb::app
