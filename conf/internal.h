// Private to lb_conf (and its white-box unit tests and fuzz target): the
// pieces the loading passes share. Nothing outside conf/, test/unit/conf/ and
// test/fuzz/ may include this.
//
// Loading runs in two steps over one Config:
//   parse.cc     toml++ tree -> Config, checking everything a single key can
//                check on its own (type, syntax, range) and unknown keys
//                ([[listener]] in parse_listener.cc, [[pool]] in
//                parse_pool.cc, the key reader they share in reader.*);
//   validate.cc  relations between keys and objects (references, duplicates,
//                protocol-specific keys) and derived defaults.
// The parse step records where every key sits (ConfigSrc) so the later steps
// can point their messages at the file. Thread rules: none; a load is a plain
// function call on the calling thread.
#pragma once

#include <sys/socket.h>

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "conf/load.h"

namespace lb::conf {

// ---- diagnostics -----------------------------------------------------------

class Diags {
 public:
  explicit Diags(std::string file) : file_(std::move(file)) {}
  void error(SourcePos pos, std::string message);
  void error(std::string message) { error(SourcePos{}, std::move(message)); }
  bool empty() const { return list_.empty(); }
  // Sorted by position (position-less ones last), otherwise in report order.
  std::vector<Diagnostic> take_sorted();

 private:
  std::string file_;
  std::vector<Diagnostic> list_;
};

// ---- where things are in the file -----------------------------------------

struct KeyPos {
  SourcePos key;    // the key itself (unknown-key and "not supported" errors)
  SourcePos value;  // its value (errors about the value)
};

// One TOML table of the schema ([global], one [[listener]], ...).
struct ObjectSrc {
  std::string label;                                // `listener "web"`, `pool "a" backend "x"`
  SourcePos pos;                                    // the table's header (or inline brace)
  std::map<std::string, KeyPos, std::less<>> keys;  // every key written in the file
  std::set<std::string, std::less<>> bad;           // keys whose value was rejected

  bool has(std::string_view key) const { return keys.find(key) != keys.end(); }
  // Written and accepted: later checks on this key are meaningful.
  bool usable(std::string_view key) const { return has(key) && !bad.count(key); }
  // Position of the key, or of the table when the key is not written.
  SourcePos key_pos(std::string_view key) const;
  SourcePos value_pos(std::string_view key) const;
};

struct ListenerSrc {
  ObjectSrc obj;
  std::vector<SourcePos> bind_items;    // parallel to Listener::bind
  std::vector<ObjectSrc> routes;        // parallel to Listener::routes
  std::vector<ObjectSrc> certificates;  // parallel to Listener::certificates
  // [[listener.route]] sni entries: positions parallel to SniRoute::sni.
  std::vector<std::vector<SourcePos>> route_sni_items;
};

struct PoolSrc {
  ObjectSrc obj;
  ObjectSrc health_check;
  ObjectSrc outlier;
  ObjectSrc tls;
  std::vector<ObjectSrc> backends;  // parallel to Pool::backends
};

struct ConfigSrc {
  ObjectSrc root;  // the top level: global, admin, listener, pool
  ObjectSrc global;
  ObjectSrc admin;
  std::vector<ListenerSrc> listeners;  // parallel to Config::listeners
  std::vector<PoolSrc> pools;          // parallel to Config::pools
};

// ---- the passes --------------------------------------------------------------

LoadResult load_text(std::string_view text, const std::string& path, Resolve resolve);

// Parses the TOML text and reads it into cfg. Returns false on a TOML syntax
// error (reported; nothing else is then checked, toml++ stops at the first).
bool parse_document(std::string_view text, const std::string& path, Config& cfg, ConfigSrc& src,
                    Diags& diags);
void validate(Config& cfg, const ConfigSrc& src, Diags& diags);
// Only the [admin] table (for lb ctl); false when anything in it is wrong.
bool parse_admin_section(std::string_view text, const std::string& path, Admin& admin, Diags& diags);

// ---- value parsing with reasons ------------------------------------------------
//
// The public helpers in load.h answer "valid or not"; these also say why, in
// words that fit after `KEY "VALUE": ` in a message.

template <class T>
struct Parsed {
  std::optional<T> value;
  std::string error;  // set when !value
  static Parsed fail(std::string why) { return Parsed{std::nullopt, std::move(why)}; }
  static Parsed ok(T v) { return Parsed{std::move(v), {}}; }
};

Parsed<Duration> parse_duration_detailed(std::string_view text);
Parsed<uint64_t> parse_size_detailed(std::string_view text);

enum class PortRule { AllowZero, NonZero };
// AllowHostname resolves a host name at once; HostnameLater only checks its
// syntax and leaves it in Endpoint::host with the address unset.
enum class HostRule { IpOnly, AllowHostname, HostnameLater };
Parsed<Endpoint> parse_endpoint_detailed(std::string_view text, PortRule ports, HostRule hosts);
// Writes the port into an endpoint's resolved address.
void set_endpoint_port(Endpoint& ep, uint16_t port);

struct CidrParse {
  Cidr cidr;
  bool host_bits_set = false;  // "10.1.2.3/8": accepted by parse_cidr, refused in the file
};
Parsed<CidrParse> parse_cidr_detailed(std::string_view text);

// Host name resolution used for backend addresses. Returns an empty string on
// success (filling addr/len), else the resolver's reason. Replaceable so that
// tests never depend on DNS; nullptr restores getaddrinfo(). A plain global:
// set it only while no load runs on another thread.
using ResolveFn = std::string (*)(const std::string& host, sockaddr_storage& addr, socklen_t& len);
void set_resolver_for_testing(ResolveFn fn);

// ---- enum names ----------------------------------------------------------------

template <class E>
struct EnumName {
  E value;
  const char* name;
};

extern const EnumName<Protocol> kProtocolNames[2];
extern const EnumName<ProxyProtocol> kProxyProtocolNames[3];
extern const EnumName<SelectorKind> kSelectorNames[5];
extern const EnumName<HashKey> kHashKeyNames[3];
extern const EnumName<TlsMode> kTlsModeNames[3];
extern const EnumName<TlsVersion> kTlsVersionNames[2];
extern const EnumName<HealthType> kHealthTypeNames[6];
extern const EnumName<LogLevel> kLogLevelNames[4];

// ---- message helpers -------------------------------------------------------------

// `"text"` with quotes, backslashes and control characters escaped, so a
// message never breaks its line.
std::string quote(std::string_view s);

// The candidate a typo most likely meant ("idle_timout" -> "idle_timeout"),
// or "" when none is close enough to be worth suggesting.
std::string suggestion(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace lb::conf
