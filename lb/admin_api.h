// The admin API and /metrics, answered on the main thread.
//
//   GET  /, /dashboard.js, /dashboard.css, /favicon.svg  the dashboard (lb/dashboard.h)
//   GET  /healthz                                200 "ok" / 503 "draining"
//   GET  /metrics                                Prometheus text format 0.0.4
//   GET  /api/v1/status                          JSON (shared/spec/interface.md)
//   POST /api/v1/pools/{pool}/backends/{id}      {"state":"drain"|"active"} or {"weight":N}
//
// Before routing: a POST with a foreign Origin gets 403, one without
// Content-Type: application/json 415; with [admin] api_token_file, every POST
// and every GET /api/* without the bearer token gets 401. [admin] allow is
// applied earlier, at accept (admin_peer_allowed).
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>

#include "conf/config.h"

#include "core/admin/http_server.h"
#include "lb/admin_control.h"

namespace lb::app {

// Answers one request (routing and the checks above) against `server`.
admin::HttpResponse handle_admin(AdminControl& server, const admin::HttpRequest& req);

// Whether `origin` (an Origin header) is the admin address the connection
// reached (`local`): http, that IP literally or "localhost" on loopback, that port.
bool same_origin(std::string_view origin, const sockaddr_storage& local);
// Whether an Authorization header carries "Bearer <token>"; constant time.
bool bearer_matches(const std::string* authorization, const std::string& token);
// [admin] allow: may this peer connect at all (empty list: anyone).
bool admin_peer_allowed(const conf::Admin& admin, const sockaddr* peer);

}  // namespace lb::app
