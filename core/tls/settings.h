// From the configuration to the TLS contexts of one generation: the
// settings structs of ServerContext/ClientContext filled from conf, and every
// certificate, key and CA file read at once (on start, on every SIGHUP and
// for `lb --check`).
//
// Thread rules: load_contexts() runs on the control thread; the Contexts it
// fills are immutable and shared (through ListenerRuntime) by every worker.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "core/tls/client_context.h"
#include "core/tls/server_context.h"
#include "core/tls/ticket_keys.h"

namespace lb::tls {

ServerSettings server_settings(const conf::Listener& listener);
ClientSettings client_settings(const conf::PoolTls& tls);

// The name a [pool.tls] connection to `backend` sends as SNI and verifies
// the certificate against: the pool's sni; for "$client" the client's
// server name (`client_sni`, empty when it sent none: then the default);
// by default the backend's host name, or its IP literal (not sent as SNI,
// verified as an IP subjectAltName). Health probes pass no client name.
std::string backend_server_name(const ClientContext& ctx, const conf::Endpoint& backend,
                                std::string_view client_sni = {});

// One configuration generation's TLS contexts.
struct Contexts {
  std::map<std::string, std::shared_ptr<const ServerContext>> listeners;  // tls = "terminate", by name
  std::map<std::string, std::shared_ptr<const ClientContext>> pools;      // [pool.tls] enabled, by name

  const ServerContext* listener(const std::string& name) const;
  const ClientContext* pool(const std::string& name) const;
};

// Reads every file `cfg` names for TLS. All or nothing: false, and `errors`
// holds one line per failure ("listener NAME: FILE: why", "pool NAME: ...").
bool load_contexts(const conf::Config& cfg, const std::shared_ptr<TicketKeyStore>& tickets, Contexts* out,
                   std::vector<std::string>* errors);

// `lb --check` on loaded contexts: expired certificates (errors) and
// certificates that name none of their listener's route names (warnings),
// each prefixed with "listener NAME: ".
std::vector<CheckFinding> check_contexts(const conf::Config& cfg, const Contexts& contexts, int64_t now_unix);

}  // namespace lb::tls
