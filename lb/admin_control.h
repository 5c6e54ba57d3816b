// AdminControl: what the admin API's handlers (lb/admin_api.cc) read and
// change. The Server implements it; the handlers know nothing else of it, so
// the admin API does not depend on the server's wiring.
//
// Thread: main thread only (the admin HTTP server runs on the main loop).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "conf/config.h"
#include "core/control.h"
#include "core/worker.h"

namespace lb::app {

class AdminControl {
 public:
  virtual ~AdminControl() = default;

  // The running configuration.
  virtual const conf::Config& config() const = 0;
  // 1 after start, +1 per successful reload.
  virtual uint64_t generation() const = 0;
  // Stopping (lame duck or draining): /healthz answers 503.
  virtual bool draining() const = 0;
  virtual uint64_t reloads_ok() const = 0;
  virtual uint64_t reloads_error() const = 0;
  // The running listener set, in configuration order.
  virtual const std::vector<core::ListenerRuntimePtr>& listeners() const = 0;
  // Health, drain and weight state behind the backend tables.
  virtual core::ControlPlane& control() = 0;
  // Access-log lines dropped because the writer fell behind (0 when off).
  virtual uint64_t access_log_dropped() const = 0;
  // Upgrades in place: ok (counted by the program that took over), refused.
  virtual uint64_t upgrades_ok() const = 0;
  virtual uint64_t upgrades_refused() const = 0;
  // Starts an upgrade in place (docs/upgrade.md): "" when it started,
  // otherwise why it was refused (nothing changed).
  virtual std::string upgrade() = 0;
};

}  // namespace lb::app
