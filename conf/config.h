// Plain configuration structs: what lb.toml says, parsed and validated.
//
// Produced by conf/load.h; consumed (read-only) by core, health and lb. No
// toml++ type appears here. Defaults are the ones of shared/spec/interface.md.
// Thread rules: a Config is immutable once loaded and may be shared freely.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lb::conf {

using Duration = std::chrono::milliseconds;

// Where a value came from, for messages that point at the file.
struct SourcePos {
  int line = 0;
  int col = 0;
};

// "IP:PORT", "[IPv6]:PORT" or (backends only) "HOST:PORT", resolved at load.
struct Endpoint {
  std::string text;         // as written in the file
  std::string host;         // the host name of HOST:PORT (backends), "" for an IP literal
  sockaddr_storage addr{};  // resolved; port in network order inside
  socklen_t addr_len = 0;
  uint16_t port() const;  // host order
  bool is_v6() const { return addr.ss_family == AF_INET6; }
  std::string to_string() const;  // "1.2.3.4:80" / "[::1]:80" from addr
};

// An IPv4 or IPv6 prefix from allow/deny.
struct Cidr {
  std::string text;
  int family = AF_INET;  // AF_INET or AF_INET6
  uint8_t bytes[16]{};   // network order, host bits zeroed
  int prefix_len = 0;
};

enum class Protocol { Tcp, Udp };
enum class ProxyProtocol { Off, V1, V2 };
enum class SelectorKind { RoundRobin, LeastConnections, RandomTwo, RingHash, Maglev };
// Sni: by the client's TLS server name (pools of TLS listeners only); clients
// without one are placed by source_ip.
enum class HashKey { SourceIp, SourceIpPort, Sni };
// tls on a tcp listener: off, passthrough (route by the ClientHello's server
// name and relay it untouched), terminate (complete TLS in lb).
enum class TlsMode { Off, Passthrough, Terminate };
enum class TlsVersion { V1_2, V1_3 };
enum class HealthType { Tcp, Http, Tls, Dns, Udp, None };
enum class LogLevel { Error, Warn, Info, Debug };

const char* to_string(Protocol);
const char* to_string(ProxyProtocol);
const char* to_string(SelectorKind);
const char* to_string(HashKey);
const char* to_string(TlsMode);
const char* to_string(TlsVersion);
const char* to_string(HealthType);
const char* to_string(LogLevel);
inline bool is_hash_selector(SelectorKind k) {
  return k == SelectorKind::RingHash || k == SelectorKind::Maglev;
}

struct Global {
  unsigned workers = 0;  // 0 = one per CPU (resolved by lb, not here)
  uint64_t max_connections = 100000;
  // Bytes lb's own relay buffers may hold, all connections together.
  uint64_t max_buffer_memory = uint64_t{1} << 30;
  Duration shutdown_timeout = std::chrono::seconds(30);
  Duration drain_delay = Duration(0);
  std::string user;  // empty = do not drop privileges
  LogLevel log_level = LogLevel::Info;
  std::string access_log = "stderr";  // "off" | "stderr" | path
};

struct Admin {
  std::optional<Endpoint> listen;  // absent = no admin server
  std::vector<Cidr> allow;         // peers that may connect at all; empty = any
  std::string api_token_file;      // empty = no token required
  // The first line of api_token_file, read at every load (so SIGHUP re-reads
  // it). A secret: never log it or put it in a message.
  std::string api_token;
};

// [[listener.route]]: clients whose server name matches one of `sni` go to
// `pool` (first matching route wins; the listener's pool is the default).
struct SniRoute {
  // Exact names or "*." + suffix (exactly one more label), lower-cased at
  // load; matched without regard to case.
  std::vector<std::string> sni;
  std::string pool;  // names a Pool (validated)
  SourcePos pos;     // of the [[listener.route]] table
};

// [[listener.certificate]]: a PEM certificate chain (leaf first) and its key.
// The files are read by the TLS layer, not by conf.
struct Certificate {
  std::string cert;
  std::string key;
  SourcePos pos;
};

struct Listener {
  std::string name;
  SourcePos pos;  // of the [[listener]] table
  Protocol protocol = Protocol::Tcp;
  std::vector<Endpoint> bind;  // at least one
  std::string pool;            // names a Pool (validated)
  Duration connect_timeout = std::chrono::seconds(5);
  Duration idle_timeout = std::chrono::minutes(10);
  unsigned retries = 2;
  ProxyProtocol proxy_protocol = ProxyProtocol::Off;
  bool accept_proxy_protocol = false;
  std::vector<Cidr> proxy_protocol_trusted;  // peers allowed to send a PROXY header; empty = any
  Duration session_timeout = std::chrono::seconds(30);
  unsigned udp_responses = 0;
  uint64_t max_connections = 0;  // 0 = unlimited
  uint64_t max_connections_per_source = 0;
  std::vector<Cidr> allow;
  std::vector<Cidr> deny;
  std::vector<Cidr> udp_source;  // udp: local addresses to send to backends from (empty: kernel's choice)

  // TLS (tcp only). Keys marked "terminate" are refused on other modes.
  TlsMode tls = TlsMode::Off;
  Duration tls_handshake_timeout = std::chrono::seconds(5);  // passthrough: ClientHello; terminate: handshake
  TlsVersion tls_min_version = TlsVersion::V1_2;             // terminate
  std::string tls_ciphers;                // terminate: TLS 1.2 list, OpenSSL syntax; "" = default
  std::vector<std::string> alpn;          // terminate: in order of preference
  std::string client_ca;                  // terminate: PEM bundle path; "" = no client certs
  bool session_tickets = true;            // terminate
  std::vector<SniRoute> routes;           // passthrough | terminate
  std::vector<Certificate> certificates;  // terminate: at least one; the first is the default
};

// expect_status: either an exact code (200) or a class ("2xx" -> class_digit 2).
struct ExpectStatus {
  int code = 200;       // exact code when class_digit == 0
  int class_digit = 0;  // 1..5 for "1xx".."5xx"
  bool matches(int status) const { return class_digit ? status / 100 == class_digit : status == code; }
};

struct HealthCheck {
  HealthType type = HealthType::None;  // resolved default: tcp for pools of tcp listeners
  bool type_explicit = false;          // written in the file
  Duration interval = std::chrono::seconds(2);
  Duration timeout = std::chrono::seconds(1);
  unsigned rise = 2;
  unsigned fall = 3;
  uint16_t port = 0;  // 0 = backend's port
  std::string http_path = "/";
  std::string http_host;  // empty = backend address
  ExpectStatus expect_status;
  std::string tls_sni;
  std::string dns_query = ".";
  std::string udp_send;
  std::string udp_expect;
};

struct Outlier {
  unsigned consecutive_failures = 0;  // 0 = off
  Duration ejection_time = std::chrono::seconds(30);
};

struct Backend {
  Endpoint address;
  std::string id;       // defaults to address.text
  unsigned weight = 1;  // 0..1000
  bool backup = false;
  uint64_t max_connections = 0;  // 0 = unlimited
};

// [pool.tls]: TLS from lb to the backends (re-encryption).
struct PoolTls {
  bool enabled = false;
  // Server name sent: "" = the backend's host (its address's host name, none
  // for an IP literal), "$client" = the client's SNI, else this name.
  std::string sni;
  bool verify = true;  // chain against ca_file, name against sni
  std::string ca_file = "/etc/ssl/certs/ca-certificates.crt";
  std::string cert;  // optional client certificate (with key)
  std::string key;
};

struct Pool {
  std::string name;
  SourcePos pos;
  SelectorKind selector = SelectorKind::RoundRobin;
  HashKey hash_key = HashKey::SourceIp;
  unsigned hash_balance_factor = 0;  // 0 = off, else > 100
  Duration slow_start = Duration(0);
  HealthCheck health_check;
  Outlier outlier;
  PoolTls tls;
  std::vector<Backend> backends;  // at least one, ids unique
};

// A backend host name that a load with Resolve::Later left for the caller to
// resolve (conf/load.h apply_host_answers).
struct PendingHost {
  size_t pool = 0;     // index into Config::pools
  size_t backend = 0;  // index into that pool's backends
  std::string host;
  SourcePos pos;        // of the address value, for the error
  std::string context;  // `pool "p" backend "x": address "h:80"`
};

struct Config {
  std::string path;  // file it was loaded from
  Global global;
  Admin admin;
  std::vector<Listener> listeners;      // file order
  std::vector<Pool> pools;              // file order
  std::vector<PendingHost> unresolved;  // empty unless loaded with Resolve::Later

  const Pool* find_pool(const std::string& name) const;
};

}  // namespace lb::conf
