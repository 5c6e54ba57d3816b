#include "lb/ctl.h"

#include <netinet/in.h>

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>

#include "conf/load.h"
#include "core/socket.h"
#include "lb/ctl_client.h"
#include "lb/ctl_status.h"

namespace lb::app {

namespace {

using ctl::Client;
using ctl::json;
using ctl::Reply;
using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultConfig = "/etc/lb/lb.toml";

const char* const kUsage =
    "usage: lb ctl [-c PATH] [--admin ADDR] [--token-file PATH] COMMAND\n"
    "\n"
    "  status [--json] [--rates]   listeners, pools and backends; --json: the API's JSON;\n"
    "                              --rates: sample twice, 1 s apart, and add per-second rates\n"
    "  drain POOL BACKEND          no new connections to the backend\n"
    "  activate POOL BACKEND       back in rotation\n"
    "  weight POOL BACKEND N       set the backend's weight (0..1000)\n"
    "  upgrade                     upgrade in place (POST /api/v1/upgrade) and wait for the new program\n"
    "\n"
    "  -c, --config PATH     read [admin] listen and api_token_file from this file (default "
    "/etc/lb/lb.toml)\n"
    "      --admin ADDR      the admin API at IP:PORT instead\n"
    "      --token-file PATH the bearer token (first line) instead of the file's api_token_file\n"
    "\n"
    "exit status: 0 success, 1 the API refused or cannot be reached, 2 bad command line\n";

struct Options {
  std::optional<std::string> config;
  std::optional<std::string> admin;
  std::optional<std::string> token_file;
  bool json_out = false;
  bool rates = false;
  std::vector<std::string> words;
};

// Where and how to reach the API, or why it cannot be found.
struct ClientOrError {
  std::optional<Client> client;
  std::string error;
};

ClientOrError make_client(const Options& o) {
  std::string token;
  std::optional<conf::Endpoint> ep;
  // The file is read unless --admin alone says where to go.
  if (o.config || !o.admin) {
    const std::string path = o.config.value_or(kDefaultConfig);
    auto res = conf::load_admin_section(path);
    if (!res.admin) {
      std::string all;
      for (const auto& d : res.errors) all += (all.empty() ? "" : "\n") + d.str();
      return {std::nullopt, all};
    }
    if (!o.admin && !res.admin->listen) {
      return {std::nullopt,
              fmt::format("{}: no [admin] listen: the admin API is off (or give --admin ADDR)", path)};
    }
    ep = res.admin->listen;
    token = res.admin->api_token;
  }
  if (o.admin) {
    ep = conf::parse_ip_endpoint(*o.admin);
    if (!ep || ep->port() == 0) {
      return {std::nullopt, fmt::format("--admin {}: expected IP:PORT or [IPv6]:PORT", *o.admin)};
    }
  }
  if (o.token_file) {
    token.clear();
    std::string err = conf::read_token_file(*o.token_file, token);
    if (!err.empty()) {
      return {std::nullopt, "--token-file " + err};
    }
  }
  sockaddr_storage addr = ep->addr;
  // Listening on every address: talk to it over loopback.
  if (addr.ss_family == AF_INET) {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&addr);
    if (s4->sin_addr.s_addr == htonl(INADDR_ANY)) s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&addr);
    if (IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr)) s6->sin6_addr = in6addr_loopback;
  }
  return {Client(addr, ep->addr_len, core::format_address(reinterpret_cast<const sockaddr*>(&addr)), token),
          {}};
}

int usage_error(std::FILE* err, const std::string& msg) {
  std::fprintf(err, "lb ctl: %s\n%s", msg.c_str(), kUsage);
  return 2;
}

int fail(std::FILE* err, const std::string& msg) {
  std::fprintf(err, "lb ctl: %s\n", msg.c_str());
  return 1;
}

// The status document; nullopt when there is none (the reason is on `err`,
// and ctl exits 1).
std::optional<json> get_status(const Client& c, std::FILE* err) {
  Reply r = c.request("GET", "/api/v1/status");
  if (r.status != 200) {
    fail(err, ctl::api_error(r));
    return std::nullopt;
  }
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    fail(err, "the admin API's status is not a JSON object");
    return std::nullopt;
  }
  return j;
}

int cmd_status(const Client& c, const Options& o, std::FILE* out, std::FILE* err) {
  if (o.json_out && !o.rates) {
    // The API's JSON exactly as it sent it.
    Reply r = c.request("GET", "/api/v1/status");
    if (r.status != 200) return fail(err, ctl::api_error(r));
    std::fputs(r.body.c_str(), out);
    return 0;
  }
  auto first = get_status(c, err);
  if (!first) return 1;
  if (!o.rates) {
    std::fputs(ctl::render_status(*first, nullptr, 0).c_str(), out);
    return 0;
  }
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto second = get_status(c, err);
  if (!second) return 1;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (o.json_out) {
    std::fprintf(out, "%s\n", second->dump().c_str());
    return 0;
  }
  std::fputs(ctl::render_status(*second, &*first, seconds).c_str(), out);
  return 0;
}

int cmd_backend(const Client& c, const std::string& pool, const std::string& id, const json& body,
                std::FILE* out, std::FILE* err) {
  Reply r =
      c.request("POST", "/api/v1/pools/" + ctl::percent_encode(pool) + "/backends/" + ctl::percent_encode(id),
                body.dump());
  if (r.status < 200 || r.status > 299) return fail(err, ctl::api_error(r));
  std::fprintf(out, "pool %s backend %s: %s\n", pool.c_str(), id.c_str(), body.dump().c_str());
  return 0;
}

// lb_upgrades_total{result="refused"} from /metrics; nullopt when unreadable.
std::optional<uint64_t> upgrades_refused(const Client& c) {
  Reply r = c.request("GET", "/metrics");
  if (r.status != 200) return std::nullopt;
  static constexpr std::string_view kSeries = "lb_upgrades_total{result=\"refused\"} ";
  for (size_t at = 0; at < r.body.size();) {
    size_t nl = r.body.find('\n', at);
    if (nl == std::string::npos) nl = r.body.size();
    std::string_view line(r.body.data() + at, nl - at);
    if (line.substr(0, kSeries.size()) == kSeries) {
      uint64_t v = 0;
      auto value = line.substr(kSeries.size());
      if (std::from_chars(value.data(), value.data() + value.size(), v).ec == std::errc()) return v;
      return std::nullopt;
    }
    at = nl + 1;
  }
  return std::nullopt;
}

// The upgrade itself is the API's (POST /api/v1/upgrade: 202, or 409 with
// the reason). Accepted: wait until the status shows the next generation,
// which the new program reports once it serves, or a refusal counted after
// the 202.
int cmd_upgrade(const Client& c, std::FILE* out, std::FILE* err) {
  auto before = get_status(c, err);
  if (!before) return 1;
  const uint64_t gen = ctl::json_u64(*before, "generation");
  // A refusal after the 202 (the new program failed to start or to take
  // over) shows only in the counter and the log.
  const std::optional<uint64_t> refused_before = upgrades_refused(c);
  Reply r = c.request("POST", "/api/v1/upgrade", "{}");
  if (r.status < 200 || r.status > 299) return fail(err, "upgrade refused: " + ctl::api_error(r));
  std::fprintf(out, "upgrade started (generation %llu), waiting for the new program\n",
               static_cast<unsigned long long>(gen));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  std::string last;
  while (Clock::now() < deadline) {
    Reply s = c.request("GET", "/api/v1/status");
    if (s.status == 200) {
      json j = json::parse(s.body, nullptr, false);
      if (!j.is_discarded() && ctl::json_u64(j, "generation") > gen) {
        std::fprintf(out, "upgraded: generation %llu serves\n",
                     static_cast<unsigned long long>(ctl::json_u64(j, "generation")));
        return 0;
      }
      if (auto refused = upgrades_refused(c); refused && refused_before && *refused > *refused_before)
        return fail(err,
                    "upgrade refused after it started: the new program did not take over; lb keeps serving "
                    "(lb's log says why: \"upgrade refused reason=...\")");
    } else {
      last = ctl::api_error(s);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return fail(err, "upgrade: no new generation within 60 s" + (last.empty() ? "" : " (last: " + last + ")"));
}

}  // namespace

int run_ctl(const std::vector<std::string>& args, std::FILE* out, std::FILE* err) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::optional<std::string>& dst) -> bool {
      if (i + 1 >= args.size()) return false;
      dst = args[++i];
      return true;
    };
    if (a == "-c" || a == "--config") {
      if (!value(o.config)) return usage_error(err, a + " needs a path");
    } else if (a.rfind("--config=", 0) == 0) {
      o.config = a.substr(9);
    } else if (a == "--admin") {
      if (!value(o.admin)) return usage_error(err, "--admin needs IP:PORT");
    } else if (a.rfind("--admin=", 0) == 0) {
      o.admin = a.substr(8);
    } else if (a == "--token-file") {
      if (!value(o.token_file)) return usage_error(err, "--token-file needs a path");
    } else if (a.rfind("--token-file=", 0) == 0) {
      o.token_file = a.substr(13);
    } else if (a == "--json") {
      o.json_out = true;
    } else if (a == "--rates") {
      o.rates = true;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsage, out);
      return 0;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error(err, "unknown option '" + a + "'");
    } else {
      o.words.push_back(a);
    }
  }
  if (o.words.empty()) return usage_error(err, "missing command");
  const std::string& cmd = o.words[0];
  const size_t n = o.words.size() - 1;
  auto want = [&](size_t k) { return n == k; };
  json body;
  if (cmd == "status") {
    if (!want(0)) return usage_error(err, "status takes no arguments");
  } else if (cmd == "drain" || cmd == "activate") {
    if (!want(2)) return usage_error(err, cmd + " needs POOL BACKEND");
    body = {{"state", cmd == "drain" ? "drain" : "active"}};
  } else if (cmd == "weight") {
    if (!want(3)) return usage_error(err, "weight needs POOL BACKEND N");
    const std::string& w = o.words[3];
    if (w.empty() || w.size() > 4 || w.find_first_not_of("0123456789") != std::string::npos ||
        std::stoul(w) > 1000)
      return usage_error(err, "weight N must be an integer from 0 to 1000, got '" + w + "'");
    body = {{"weight", std::stoul(w)}};
  } else if (cmd == "upgrade") {
    if (!want(0)) return usage_error(err, "upgrade takes no arguments");
  } else {
    return usage_error(err, "unknown command '" + cmd + "'");
  }
  if ((o.json_out || o.rates) && cmd != "status")
    return usage_error(err, "--json and --rates go with status");
  if (o.admin) {
    auto ep = conf::parse_ip_endpoint(*o.admin);
    if (!ep || ep->port() == 0)
      return usage_error(err, "--admin " + *o.admin + ": expected IP:PORT or [IPv6]:PORT");
  }

  auto [client, why] = make_client(o);
  if (!client) return fail(err, why);
  if (cmd == "status") return cmd_status(*client, o, out, err);
  if (cmd == "upgrade") return cmd_upgrade(*client, out, err);
  return cmd_backend(*client, o.words[1], o.words[2], body, out, err);
}

}  // namespace lb::app