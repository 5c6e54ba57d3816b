#include "lb/ctl.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "conf/load.h"
#include "core/socket.h"

namespace lb::app {

namespace {

using json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultConfig = "/etc/lb/lb.toml";
constexpr auto kRequestTimeout = std::chrono::seconds(10);
constexpr size_t kMaxResponseBytes = 64 << 20;

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

struct Reply {
  int status = 0;  // 0: no HTTP answer (error says why)
  std::string body;
  std::string error;
};

// One request on a fresh connection ("Connection: close"), blocking with a
// deadline: all ctl ever needs, so no HTTP library.
class Client {
 public:
  Client(sockaddr_storage addr, socklen_t len, std::string host, std::string token)
      : addr_(addr), len_(len), host_(std::move(host)), token_(std::move(token)) {}

  Reply request(const std::string& method, const std::string& target, const std::string& body = "") const {
    Reply r;
    const auto deadline = Clock::now() + kRequestTimeout;
    int fd = ::socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      r.error = fmt::format("socket: {}", std::strerror(errno));
      return r;
    }
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr_), len_) != 0 && errno != EINPROGRESS) {
      r.error = fmt::format("cannot connect to the admin API at {}: {}", host_, std::strerror(errno));
      return r;
    }
    if (!wait(fd, POLLOUT, deadline)) {
      r.error = fmt::format("cannot connect to the admin API at {}: timed out", host_);
      return r;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr != 0) {
      r.error = fmt::format("cannot connect to the admin API at {}: {}", host_, std::strerror(soerr));
      return r;
    }
    std::string req =
        fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: lb-ctl/{}\r\n", method,
                    target, host_, LB_VERSION);
    if (!token_.empty()) req += "Authorization: Bearer " + token_ + "\r\n";
    if (method == "POST")
      req += fmt::format("Content-Type: application/json\r\nContent-Length: {}\r\n", body.size());
    req += "\r\n" + body;
    size_t sent = 0;
    while (sent < req.size()) {
      ssize_t n = ::send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno == EAGAIN) {
        if (!wait(fd, POLLOUT, deadline)) {
          r.error = "timed out sending the request";
          return r;
        }
      } else {
        // The server may have answered and closed early: read what it said.
        break;
      }
    }
    std::string in;
    for (;;) {
      char buf[16384];
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        in.append(buf, static_cast<size_t>(n));
        if (in.size() > kMaxResponseBytes) {
          r.error = "response too large";
          return r;
        }
        continue;
      }
      if (n == 0) break;
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        if (!wait(fd, POLLIN, deadline)) {
          r.error = "timed out waiting for the admin API's answer";
          return r;
        }
        continue;
      }
      if (in.empty()) {
        // An [admin] allow list that does not include us closes the
        // connection without a word.
        r.error = fmt::format("the admin API at {} closed the connection: {}", host_, std::strerror(errno));
        return r;
      }
      break;
    }
    return parse(in);
  }

 private:
  static bool wait(int fd, short events, Clock::time_point deadline) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd, events, 0};
      int rc = ::poll(&p, 1, static_cast<int>(left));
      if (rc > 0) return true;
      if (rc < 0 && errno != EINTR) return false;
    }
  }

  Reply parse(const std::string& in) const {
    Reply r;
    size_t head_end = in.find("\r\n\r\n");
    if (in.empty()) {
      r.error = fmt::format("the admin API at {} closed the connection without an answer", host_);
      return r;
    }
    if (head_end == std::string::npos || in.rfind("HTTP/1.", 0) != 0 || in.size() < 12) {
      r.error = "malformed answer from the admin API";
      return r;
    }
    r.status = std::atoi(in.c_str() + 9);
    std::string head = in.substr(0, head_end);
    r.body = in.substr(head_end + 4);
    // Content-Length frames the body; with Connection: close the end of the
    // stream does too, so only a short body is an error.
    for (size_t pos = head.find("\r\n"); pos != std::string::npos; pos = head.find("\r\n", pos + 2)) {
      std::string line = head.substr(pos + 2, head.find("\r\n", pos + 2) - pos - 2);
      if (line.size() > 15 && strncasecmp(line.c_str(), "content-length:", 15) == 0) {
        size_t n = std::strtoul(line.c_str() + 15, nullptr, 10);
        if (r.body.size() < n) {
          r.status = 0;
          r.error = "truncated answer from the admin API";
        } else {
          r.body.resize(n);
        }
      }
    }
    return r;
  }

  sockaddr_storage addr_;
  socklen_t len_;
  std::string host_;
  std::string token_;
};

// The API's own words: {"error": "..."} when it sent that, else the body.
std::string api_error(const Reply& r) {
  if (r.status == 0) return r.error;
  json j = json::parse(r.body, nullptr, false);
  std::string msg;
  if (j.is_object() && j.contains("error") && j["error"].is_string())
    msg = j["error"].get<std::string>();
  else
    msg = r.body;
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
  return fmt::format("HTTP {}: {}", r.status, msg);
}

std::string percent_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == ':')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

// Columns padded to their widest cell; the last column is not padded.
std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], row[i].size());
    }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

// obj[key], or null (const operator[] on a missing key is undefined).
const json& field(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it == obj.end() ? kNull : *it;
}

std::string num(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

uint64_t u64(const json& obj, const char* key) {
  const json& v = field(obj, key);
  return v.is_number_unsigned() ? v.get<uint64_t>() : 0;
}

std::string rate(uint64_t before, uint64_t after, double seconds) {
  if (after < before || seconds <= 0) return "-";
  return fmt::format("{:.1f}", static_cast<double>(after - before) / seconds);
}

std::string human_bytes_rate(uint64_t before, uint64_t after, double seconds) {
  if (after < before || seconds <= 0) return "-";
  double v = static_cast<double>(after - before) / seconds;
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}/s", v, units[u]);
}

std::string last_check_text(const json& b) {
  const json& c = field(b, "last_check");
  if (!field(c, "result").is_string()) return "-";
  std::string out = field(c, "result").get<std::string>();
  if (field(c, "age_ms").is_number())
    out += fmt::format(" {:.1f}s ago", field(c, "age_ms").get<double>() / 1000.0);
  if (field(c, "detail").is_string() && out.rfind("fail", 0) == 0)
    out += " (" + field(c, "detail").get<std::string>() + ")";
  return out;
}

// `prev` (an earlier sample, or null) adds the rate columns.
std::string render_status(const json& doc, const json* prev, double seconds) {
  std::string out;
  out += fmt::format("lb {}  generation {}\n\n", num(doc.value("version", json())),
                     num(doc.value("generation", json())));

  auto find_by = [](const json& arr, const char* key, const json& val) -> const json* {
    if (!arr.is_array()) return nullptr;
    for (const auto& e : arr)
      if (e.is_object() && e.contains(key) && e[key] == val) return &e;
    return nullptr;
  };

  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> head = {"LISTENER", "PROTO", "BIND", "POOL", "ACTIVE", "TOTAL", "REJECTED"};
  if (prev) head.push_back("CONN/S");
  rows.push_back(head);
  for (const auto& l : doc.value("listeners", json::array())) {
    std::string binds;
    for (const auto& b : l.value("bind", json::array())) binds += (binds.empty() ? "" : ",") + num(b);
    uint64_t rejected = 0;
    if (field(l, "rejected").is_object())
      for (const auto& [k, v] : field(l, "rejected").items())
        rejected += v.is_number_unsigned() ? v.get<uint64_t>() : 0;
    std::vector<std::string> row = {
        num(l.value("name", json())), num(l.value("protocol", json())), binds,
        num(l.value("pool", json())), num(l.value("active", json())),   num(l.value("total", json())),
        std::to_string(rejected)};
    if (prev) {
      const json* pl = find_by(field(*prev, "listeners"), "name", field(l, "name"));
      row.push_back(pl ? rate(u64(*pl, "total"), u64(l, "total"), seconds) : "-");
    }
    rows.push_back(std::move(row));
  }
  out += table(rows);

  for (const auto& p : doc.value("pools", json::array())) {
    out += fmt::format("\npool {} ({}", num(p.value("name", json())), num(p.value("selector", json())));
    if (field(p, "table_digest").is_string()) out += ", table " + field(p, "table_digest").get<std::string>();
    out += ")\n";
    rows.clear();
    head = {"BACKEND", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "ACTIVE", "TOTAL", "FAILED", "LAST CHECK"};
    if (prev) {
      head.insert(head.end() - 1, "CONN/S");
      head.insert(head.end() - 1, "BYTES/S");
    }
    rows.push_back(head);
    const json* pp = prev ? find_by(field(*prev, "pools"), "name", field(p, "name")) : nullptr;
    for (const auto& b : p.value("backends", json::array())) {
      std::string weight = num(b.value("weight", json()));
      // During slow start the weight in force is lower than the configured one.
      if (b.contains("effective_weight") && field(b, "effective_weight") != field(b, "weight"))
        weight += " (now " + num(field(b, "effective_weight")) + ")";
      std::string health = num(b.value("health", json()));
      if (b.value("backup", false)) health += " (backup)";
      std::vector<std::string> row = {num(b.value("id", json())),
                                      num(b.value("address", json())),
                                      health,
                                      num(b.value("admin_state", json())),
                                      weight,
                                      num(b.value("active", json())),
                                      num(b.value("total", json())),
                                      num(b.value("connect_failures", json()))};
      if (prev) {
        const json* pb = pp ? find_by(field(*pp, "backends"), "id", field(b, "id")) : nullptr;
        row.push_back(pb ? rate(u64(*pb, "total"), u64(b, "total"), seconds) : "-");
        row.push_back(pb ? human_bytes_rate(u64(*pb, "bytes_to_backend") + u64(*pb, "bytes_to_client"),
                                            u64(b, "bytes_to_backend") + u64(b, "bytes_to_client"), seconds)
                         : "-");
      }
      row.push_back(last_check_text(b));
      rows.push_back(std::move(row));
    }
    out += table(rows);
  }
  return out;
}

struct Options {
  std::optional<std::string> config;
  std::optional<std::string> admin;
  std::optional<std::string> token_file;
  bool json_out = false;
  bool rates = false;
  std::vector<std::string> words;
};

// Where and how to reach the API; false (with the reason in *why) when it
// cannot be found.
std::optional<Client> make_client(const Options& o, std::string* why) {
  std::string token;
  std::optional<conf::Endpoint> ep;
  // The file is read unless --admin alone says where to go.
  if (o.config || !o.admin) {
    const std::string path = o.config.value_or(kDefaultConfig);
    auto res = conf::load_admin_section(path);
    if (!res.admin) {
      std::string all;
      for (const auto& d : res.errors) all += (all.empty() ? "" : "\n") + d.str();
      *why = all;
      return std::nullopt;
    }
    if (!o.admin && !res.admin->listen) {
      *why = fmt::format("{}: no [admin] listen: the admin API is off (or give --admin ADDR)", path);
      return std::nullopt;
    }
    ep = res.admin->listen;
    token = res.admin->api_token;
  }
  if (o.admin) {
    ep = conf::parse_ip_endpoint(*o.admin);
    if (!ep || ep->port() == 0) {
      *why = fmt::format("--admin {}: expected IP:PORT or [IPv6]:PORT", *o.admin);
      return std::nullopt;
    }
  }
  if (o.token_file) {
    token.clear();
    std::string err = conf::read_token_file(*o.token_file, token);
    if (!err.empty()) {
      *why = "--token-file " + err;
      return std::nullopt;
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
  return Client(addr, ep->addr_len, core::format_address(reinterpret_cast<const sockaddr*>(&addr)), token);
}

int usage_error(std::FILE* err, const std::string& msg) {
  std::fprintf(err, "lb ctl: %s\n%s", msg.c_str(), kUsage);
  return 2;
}

int fail(std::FILE* err, const std::string& msg) {
  std::fprintf(err, "lb ctl: %s\n", msg.c_str());
  return 1;
}

std::optional<json> get_status(const Client& c, std::FILE* err, int* rc) {
  Reply r = c.request("GET", "/api/v1/status");
  if (r.status != 200) {
    *rc = fail(err, api_error(r));
    return std::nullopt;
  }
  json j = json::parse(r.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    *rc = fail(err, "the admin API's status is not a JSON object");
    return std::nullopt;
  }
  return j;
}

int cmd_status(const Client& c, const Options& o, std::FILE* out, std::FILE* err) {
  int rc = 1;
  if (o.json_out && !o.rates) {
    // The API's JSON exactly as it sent it.
    Reply r = c.request("GET", "/api/v1/status");
    if (r.status != 200) return fail(err, api_error(r));
    std::fputs(r.body.c_str(), out);
    return 0;
  }
  auto first = get_status(c, err, &rc);
  if (!first) return rc;
  if (!o.rates) {
    std::fputs(render_status(*first, nullptr, 0).c_str(), out);
    return 0;
  }
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  auto second = get_status(c, err, &rc);
  if (!second) return rc;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (o.json_out) {
    std::fprintf(out, "%s\n", second->dump().c_str());
    return 0;
  }
  std::fputs(render_status(*second, &*first, seconds).c_str(), out);
  return 0;
}

int cmd_backend(const Client& c, const std::string& pool, const std::string& id, const json& body,
                std::FILE* out, std::FILE* err) {
  Reply r = c.request("POST", "/api/v1/pools/" + percent_encode(pool) + "/backends/" + percent_encode(id),
                      body.dump());
  if (r.status < 200 || r.status > 299) return fail(err, api_error(r));
  std::fprintf(out, "pool %s backend %s: %s\n", pool.c_str(), id.c_str(), body.dump().c_str());
  return 0;
}

// The upgrade itself is the API's (POST /api/v1/upgrade: 202, or 409 with
// the reason). Accepted: wait until the status shows the next generation,
// which the new program reports once it serves.
int cmd_upgrade(const Client& c, std::FILE* out, std::FILE* err) {
  int rc = 1;
  auto before = get_status(c, err, &rc);
  if (!before) return rc;
  const uint64_t gen = u64(*before, "generation");
  Reply r = c.request("POST", "/api/v1/upgrade", "{}");
  if (r.status < 200 || r.status > 299) return fail(err, "upgrade refused: " + api_error(r));
  std::fprintf(out, "upgrade started (generation %llu), waiting for the new program\n",
               static_cast<unsigned long long>(gen));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  std::string last;
  while (Clock::now() < deadline) {
    Reply s = c.request("GET", "/api/v1/status");
    if (s.status == 200) {
      json j = json::parse(s.body, nullptr, false);
      if (!j.is_discarded() && u64(j, "generation") > gen) {
        std::fprintf(out, "upgraded: generation %llu serves\n",
                     static_cast<unsigned long long>(u64(j, "generation")));
        return 0;
      }
    } else {
      last = api_error(s);
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

  std::string why;
  auto client = make_client(o, &why);
  if (!client) return fail(err, why);
  if (cmd == "status") return cmd_status(*client, o, out, err);
  if (cmd == "upgrade") return cmd_upgrade(*client, out, err);
  return cmd_backend(*client, o.words[1], o.words[2], body, out, err);
}

}  // namespace lb::app
