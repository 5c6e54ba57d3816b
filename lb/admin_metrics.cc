#include "lb/admin_metrics.h"

#include <fmt/format.h>

#include <string>
#include <vector>

#include "core/tls/server_context.h"
#include "lb/process_stats.h"

namespace lb::app {

using admin::HttpResponse;

std::string prom_escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string hex_digest(uint64_t d) { return fmt::format("{:016x}", d); }

namespace {

// Accumulates one metric family: HELP and TYPE once, then its samples.
class Family {
 public:
  Family(std::string& out, const char* name, const char* type, const char* help) : out_(out), name_(name) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  template <typename T>
  void sample(const std::string& labels, T value) {
    if (labels.empty()) {
      fmt::format_to(std::back_inserter(out_), "{} {}\n", name_, value);
    } else {
      fmt::format_to(std::back_inserter(out_), "{}{{{}}} {}\n", name_, labels, value);
    }
  }

 private:
  std::string& out_;
  const char* name_;
};

std::string lbl(const char* k, const std::string& v) { return fmt::format("{}=\"{}\"", k, prom_escape(v)); }

}  // namespace

HttpResponse metrics_response(AdminControl& s) {
  std::string out;
  out.reserve(16384);
  const auto& listeners = s.listeners();
  std::vector<core::ListenerTotals> totals;
  totals.reserve(listeners.size());
  for (auto& l : listeners) totals.push_back(l->stats->sum());

  {
    Family f(out, "lb_listener_connections_total", "counter",
             "Accepted TCP connections and new UDP sessions.");
    for (size_t i = 0; i < listeners.size(); ++i)
      f.sample(lbl("listener", listeners[i]->cfg.name), totals[i].connections);
  }
  {
    Family f(out, "lb_listener_active", "gauge", "Open TCP connections and live UDP sessions.");
    for (size_t i = 0; i < listeners.size(); ++i)
      f.sample(lbl("listener", listeners[i]->cfg.name), totals[i].active);
  }
  {
    Family f(out, "lb_listener_rejected_total", "counter", "Connections or sessions refused, by reason.");
    for (size_t i = 0; i < listeners.size(); ++i) {
      std::string l = lbl("listener", listeners[i]->cfg.name);
      f.sample(l + ",reason=\"acl\"", totals[i].rejected_acl);
      f.sample(l + ",reason=\"limit\"", totals[i].rejected_limit);
      f.sample(l + ",reason=\"no_backend\"", totals[i].rejected_no_backend);
      // Clients whose PROXY header was missing, malformed, late or sent by
      // an untrusted peer (accept_proxy_protocol listeners only).
      if (listeners[i]->cfg.accept_proxy_protocol)
        f.sample(l + ",reason=\"proxy_protocol\"", totals[i].rejected_proxy);
      // No valid ClientHello in time, or a failed handshake (TLS listeners).
      if (listeners[i]->cfg.tls != conf::TlsMode::Off)
        f.sample(l + ",reason=\"tls\"", totals[i].rejected_tls);
    }
  }
  {
    Family f(out, "lb_tls_handshakes_total", "counter", "TLS handshakes of terminate listeners, by result.");
    for (size_t i = 0; i < listeners.size(); ++i) {
      if (listeners[i]->cfg.tls != conf::TlsMode::Terminate) continue;
      std::string l = lbl("listener", listeners[i]->cfg.name);
      f.sample(l + ",result=\"ok\"", totals[i].tls_ok);
      f.sample(l + ",result=\"failed\"", totals[i].tls_failed);
      f.sample(l + ",result=\"timeout\"", totals[i].tls_timeout);
    }
  }
  {
    Family f(out, "lb_tls_certificate_expiry_timestamp_seconds", "gauge",
             "notAfter of each certificate of terminate listeners, as a Unix time.");
    for (const auto& rt : listeners) {
      if (!rt->tls_server) continue;
      for (const auto& c : rt->tls_server->certificates())
        f.sample(lbl("listener", rt->cfg.name) + "," + lbl("certificate", c.first_name), c.not_after);
    }
  }
  {
    Family f(out, "lb_udp_datagrams_total", "counter",
             "UDP datagrams received from clients (in) and sent to them (out).");
    for (size_t i = 0; i < listeners.size(); ++i) {
      if (listeners[i]->cfg.protocol != conf::Protocol::Udp) continue;
      std::string l = lbl("listener", listeners[i]->cfg.name);
      f.sample(l + ",direction=\"in\"", totals[i].datagrams_in);
      f.sample(l + ",direction=\"out\"", totals[i].datagrams_out);
    }
  }

  auto pools = s.control().snapshot();
  auto r = std::memory_order_relaxed;
  auto each_backend = [&](auto&& fn) {
    for (auto& p : pools)
      for (auto& b : p.backends) fn(p, b, lbl("pool", p.name) + "," + lbl("backend", b.backend->id));
  };
  {
    Family f(out, "lb_backend_up", "gauge", "1 when the backend is healthy, 0 when not.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.up ? 1 : 0); });
  }
  {
    Family f(out, "lb_backend_connections_total", "counter",
             "Connections and UDP sessions sent to the backend.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->total.load(r)); });
  }
  {
    Family f(out, "lb_backend_active", "gauge", "Open connections and live UDP sessions on the backend.");
    each_backend([&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->active.load(r)); });
  }
  {
    Family f(out, "lb_backend_connect_failures_total", "counter",
             "Failed connection attempts to the backend.");
    each_backend(
        [&](auto&, auto& b, const std::string& l) { f.sample(l, b.backend->connect_failures.load(r)); });
  }
  {
    Family f(out, "lb_backend_bytes_total", "counter", "Bytes relayed, by direction.");
    each_backend([&](auto&, auto& b, const std::string& l) {
      f.sample(l + ",direction=\"to_backend\"", b.backend->bytes_to_backend.load(r));
      f.sample(l + ",direction=\"to_client\"", b.backend->bytes_to_client.load(r));
    });
  }
  {
    Family f(out, "lb_health_checks_total", "counter", "Health probes, by result.");
    each_backend([&](auto&, auto& b, const std::string& l) {
      f.sample(l + ",result=\"pass\"", b.backend->checks_pass.load(r));
      f.sample(l + ",result=\"fail\"", b.backend->checks_fail.load(r));
    });
  }
  {
    Family f(out, "lb_config_reloads_total", "counter", "Configuration reloads, by result.");
    f.sample("result=\"ok\"", s.reloads_ok());
    f.sample("result=\"error\"", s.reloads_error());
  }
  {
    Family f(out, "lb_upgrades_total", "counter",
             "Upgrades in place, by result (ok: counted by the program that took over).");
    f.sample("result=\"ok\"", s.upgrades_ok());
    f.sample("result=\"refused\"", s.upgrades_refused());
  }
  {
    Family f(out, "lb_access_log_dropped_total", "counter",
             "Access log lines dropped because the writer fell behind.");
    f.sample("", s.access_log_dropped());
  }
  {
    Family f(out, "lb_pool_table_info", "gauge", "Digest of each hash pool's lookup table; always 1.");
    for (auto& p : pools)
      if (p.has_digest) f.sample(lbl("pool", p.name) + "," + lbl("digest", hex_digest(p.digest)), 1);
  }
  if (auto ps = read_process_stats()) {
    // The Prometheus client conventions: unlabelled, as every client library
    // exports them, so stock dashboards and alerts work unchanged.
    fmt::format_to(
        std::back_inserter(out),
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\nprocess_open_fds {}\n"
        "# HELP process_max_fds Maximum number of open file descriptors.\n"
        "# TYPE process_max_fds gauge\nprocess_max_fds {}\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.2f}\n",
        ps->cpu_seconds, ps->resident_bytes, ps->open_fds, ps->max_fds, ps->start_time_seconds);
  }
  HttpResponse resp;
  resp.content_type = "text/plain; version=0.0.4; charset=utf-8";
  resp.body = std::move(out);
  return resp;
}

}  // namespace lb::app
