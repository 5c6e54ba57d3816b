// Small members of the config structs, enum names and diagnostics plumbing.

#include "conf/config.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <net/if.h>

#include <algorithm>
#include <climits>

#include "conf/internal.h"
#include "conf/load.h"

namespace lb::conf {

// The single list of spellings: parse.cc reads with these, to_string prints them.
const EnumName<Protocol> kProtocolNames[2] = {{Protocol::Tcp, "tcp"}, {Protocol::Udp, "udp"}};
const EnumName<ProxyProtocol> kProxyProtocolNames[3] = {
    {ProxyProtocol::Off, "off"}, {ProxyProtocol::V1, "v1"}, {ProxyProtocol::V2, "v2"}};
const EnumName<SelectorKind> kSelectorNames[5] = {{SelectorKind::RoundRobin, "round_robin"},
                                                  {SelectorKind::LeastConnections, "least_connections"},
                                                  {SelectorKind::RandomTwo, "random_two"},
                                                  {SelectorKind::RingHash, "ring_hash"},
                                                  {SelectorKind::Maglev, "maglev"}};
const EnumName<HashKey> kHashKeyNames[3] = {
    {HashKey::SourceIp, "source_ip"}, {HashKey::SourceIpPort, "source_ip_port"}, {HashKey::Sni, "sni"}};
const EnumName<TlsMode> kTlsModeNames[3] = {
    {TlsMode::Off, "off"}, {TlsMode::Passthrough, "passthrough"}, {TlsMode::Terminate, "terminate"}};
const EnumName<TlsVersion> kTlsVersionNames[2] = {{TlsVersion::V1_2, "1.2"}, {TlsVersion::V1_3, "1.3"}};
const EnumName<HealthType> kHealthTypeNames[6] = {{HealthType::Tcp, "tcp"}, {HealthType::Http, "http"},
                                                  {HealthType::Tls, "tls"}, {HealthType::Dns, "dns"},
                                                  {HealthType::Udp, "udp"}, {HealthType::None, "none"}};
const EnumName<LogLevel> kLogLevelNames[4] = {{LogLevel::Error, "error"},
                                              {LogLevel::Warn, "warn"},
                                              {LogLevel::Info, "info"},
                                              {LogLevel::Debug, "debug"}};

namespace {
template <class E, size_t N>
const char* name_of(const EnumName<E> (&names)[N], E v) {
  for (const auto& n : names) {
    if (n.value == v) return n.name;
  }
  return "?";
}
}  // namespace

const char* to_string(Protocol v) { return name_of(kProtocolNames, v); }
const char* to_string(ProxyProtocol v) { return name_of(kProxyProtocolNames, v); }
const char* to_string(SelectorKind v) { return name_of(kSelectorNames, v); }
const char* to_string(HashKey v) { return name_of(kHashKeyNames, v); }
const char* to_string(TlsMode v) { return name_of(kTlsModeNames, v); }
const char* to_string(TlsVersion v) { return name_of(kTlsVersionNames, v); }
const char* to_string(HealthType v) { return name_of(kHealthTypeNames, v); }
const char* to_string(LogLevel v) { return name_of(kLogLevelNames, v); }

uint16_t Endpoint::port() const {
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  }
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  }
  return 0;
}

std::string Endpoint::to_string() const {
  char buf[INET6_ADDRSTRLEN] = "";
  if (addr.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(addr);
    inet_ntop(AF_INET, &sin.sin_addr, buf, sizeof buf);
    return fmt::format("{}:{}", buf, port());
  }
  if (addr.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(addr);
    inet_ntop(AF_INET6, &sin6.sin6_addr, buf, sizeof buf);
    if (sin6.sin6_scope_id == 0) return fmt::format("[{}]:{}", buf, port());
    char ifname[IF_NAMESIZE] = "";
    if (if_indextoname(sin6.sin6_scope_id, ifname) != nullptr) {
      return fmt::format("[{}%{}]:{}", buf, ifname, port());
    }
    return fmt::format("[{}%{}]:{}", buf, sin6.sin6_scope_id, port());
  }
  return text;  // never resolved (only possible for a default-constructed Endpoint)
}

const Pool* Config::find_pool(const std::string& name) const {
  for (const auto& p : pools) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

std::string Diagnostic::str() const {
  if (line <= 0) return fmt::format("{}: error: {}", file, message);
  if (col <= 0) return fmt::format("{}:{}: error: {}", file, line, message);
  return fmt::format("{}:{}:{}: error: {}", file, line, col, message);
}

void Diags::error(SourcePos pos, std::string message) {
  list_.push_back(Diagnostic{file_, pos.line, pos.col, std::move(message)});
}

std::vector<Diagnostic> Diags::take_sorted() {
  // Compiler order: by position; errors about the file as a whole come last.
  auto key = [](const Diagnostic& d) { return std::pair{d.line > 0 ? d.line : INT_MAX, d.col}; };
  std::stable_sort(list_.begin(), list_.end(),
                   [&](const Diagnostic& a, const Diagnostic& b) { return key(a) < key(b); });
  return std::move(list_);
}

SourcePos ObjectSrc::key_pos(std::string_view key) const {
  auto it = keys.find(key);
  return it != keys.end() ? it->second.key : pos;
}

SourcePos ObjectSrc::value_pos(std::string_view key) const {
  auto it = keys.find(key);
  return it != keys.end() ? it->second.value : pos;
}

std::string quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  return out;
}

std::string suggestion(std::string_view word, const std::vector<std::string>& candidates) {
  // Edit distance with transpositions (optimal string alignment), case-insensitive; close means at
  // most 2 edits and fewer than half the word, so short unrelated words are not "suggested".
  auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
  auto distance = [&](std::string_view a, std::string_view b) {
    std::vector<size_t> prev2(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t subst = prev[j - 1] + (lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1);
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
        // A swap of two neighbours ("wbe" for "web") is one slip, not two.
        if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1])) {
          cur[j] = std::min(cur[j], prev2[j - 2] + 1);
        }
      }
      prev2 = prev;
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  std::string best;
  size_t best_distance = std::min<size_t>(2, word.size() / 2) + 1;
  for (const auto& c : candidates) {
    size_t dist = distance(word, c);
    if (dist < best_distance) {
      best = c;
      best_distance = dist;
    }
  }
  return best;
}

}  // namespace lb::conf
