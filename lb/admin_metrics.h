// GET /metrics: the Prometheus text format (0.0.4) of lb's counters, from
// the running listeners, the control plane's snapshot and the process.
//
// Thread: main thread (the admin HTTP server's loop).
#pragma once

#include <cstdint>
#include <string>

#include "core/admin/http_server.h"
#include "lb/admin_control.h"

namespace lb::app {

admin::HttpResponse metrics_response(AdminControl& server);

// Prometheus label value escaping (\\, \", \n).
std::string prom_escape(const std::string& v);
// 16 lower-case hex digits.
std::string hex_digest(uint64_t d);

}  // namespace lb::app
