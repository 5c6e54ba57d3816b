#include "test/support/lb_process.h"

#include <strings.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <thread>

#include "test/support/config_builder.h"

namespace lb::test {

std::string lb_binary() {
  if (const char* p = std::getenv("LB_BINARY"); p && *p) return p;  // run against another build
  return LB_BINARY_PATH;
}

std::string lb_alt_binary() {
  if (const char* p = std::getenv("LB_ALT_BINARY"); p && *p) return p;
  return LB_ALT_BINARY_PATH;
}

std::string lb_crash_binary() { return LB_CRASH_BINARY_PATH; }

std::string test_data_dir() { return LB_TEST_DATA_DIR; }

bool lb_splice_enabled() {
  const char* v = std::getenv("LB_SPLICE");
  return !(v && (std::strcmp(v, "0") == 0 || strcasecmp(v, "off") == 0 || strcasecmp(v, "false") == 0 ||
                 strcasecmp(v, "no") == 0));
}

std::vector<std::string> preload_env(const std::string& shim) {
  std::string asan = "ASAN_OPTIONS=verify_asan_link_order=0";
  if (const char* cur = std::getenv("ASAN_OPTIONS"); cur && *cur) asan += std::string(":") + cur;
  return {"LD_PRELOAD=" + shim, asan};
}

bool install_program(const std::string& from, const std::string& to) {
  const std::string tmp = to + ".new";
  {
    std::ifstream in(from, std::ios::binary);
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!in || !out) return false;
    out << in.rdbuf();
    if (!out) return false;
  }
  return ::chmod(tmp.c_str(), 0755) == 0 && ::rename(tmp.c_str(), to.c_str()) == 0;
}

bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'Z';
}

bool wait_gone(pid_t pid, Deadline deadline) {
  while (!expired(deadline)) {
    if (process_gone(pid)) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return process_gone(pid);
}

std::string global_section(unsigned workers, bool admin) { return ConfigBuilder().global(workers, admin); }

std::optional<std::string> log_field(const std::string& line, const std::string& key) {
  const std::string needle = key + "=";
  size_t pos = 0;
  for (;;) {
    pos = line.find(needle, pos);
    if (pos == std::string::npos) return std::nullopt;
    if (pos == 0 || line[pos - 1] == ' ') break;  // a whole key, not a suffix of another
    pos += needle.size();
  }
  size_t start = pos + needle.size();
  if (start < line.size() && line[start] == '"') {
    size_t end = line.find('"', start + 1);
    if (end == std::string::npos) return line.substr(start + 1);
    return line.substr(start + 1, end - start - 1);
  }
  size_t end = line.find(' ', start);
  return line.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

uint16_t port_of(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) return 0;
  char* end = nullptr;
  unsigned long port = std::strtoul(address.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port == 0 || port > 65535) return 0;
  return static_cast<uint16_t>(port);
}

LbProcess::LbProcess(const std::string& config_toml, LbOptions options) {
  config_path_ = dir_.write_file("lb.toml", config_toml);
  std::vector<std::string> argv = std::move(options.prefix);
  for (auto a :
       {options.binary.empty() ? lb_binary() : options.binary, std::string("--config"), config_path_})
    argv.push_back(std::move(a));
  for (auto& a : options.extra_args) argv.push_back(std::move(a));
  SpawnOptions spawn;
  spawn.env = std::move(options.env);
  spawn.listen_fds = std::move(options.listen_fds);
  spawn.echo_prefix = "[lb] ";
  child_ = std::make_unique<ChildProcess>(std::move(argv), std::move(spawn));
}

LbProcess::~LbProcess() {
  // Unwinding from a failed REQUIRE: the log is usually what explains it.
  if (std::uncaught_exceptions() > 0) {
    std::fprintf(stderr, "---- lb output (pid %d, exit %s) ----\n%s---- end of lb output ----\n",
                 static_cast<int>(child_->pid()),
                 child_->exit_status() ? std::to_string(*child_->exit_status()).c_str() : "none yet",
                 child_->output().c_str());
  }
  child_.reset();  // kills and reaps lb before the directory goes away
}

bool LbProcess::write_config(const std::string& config_toml) {
  return !dir_.write_file("lb.toml", config_toml).empty();
}

bool LbProcess::wait_started(Deadline deadline) {
  if (!child_->started()) return false;
  static const std::regex started(R"(^info started\b)");
  return child_->wait_for_line(started, deadline).has_value();
}

std::vector<std::string> LbProcess::listener_addresses(const std::string& listener) const {
  std::vector<std::string> out;
  for (const auto& line : child_->lines()) {
    if (line.text.rfind("info listening ", 0) != 0) continue;
    auto name = log_field(line.text, "listener");
    auto address = log_field(line.text, "address");
    if (name && address && *name == listener) out.push_back(*address);
  }
  return out;
}

uint16_t LbProcess::listener_port(const std::string& listener, size_t index) const {
  auto addresses = listener_addresses(listener);
  return index < addresses.size() ? port_of(addresses[index]) : 0;
}

uint16_t LbProcess::admin_port() const {
  for (const auto& line : child_->lines()) {
    if (line.text.rfind("info admin listening ", 0) != 0) continue;
    if (auto address = log_field(line.text, "address")) return port_of(*address);
  }
  return 0;
}

std::optional<int> LbProcess::terminate(Deadline deadline) {
  if (auto status = child_->exit_status()) return status;
  child_->signal(SIGTERM);
  return child_->wait_exit(deadline);
}

LbRun run_lb(const std::vector<std::string>& args, Deadline deadline, const std::vector<std::string>& env) {
  std::vector<std::string> argv = {lb_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  SpawnOptions spawn;
  spawn.env = env;
  spawn.echo_prefix = "[lb] ";
  ChildProcess child(std::move(argv), std::move(spawn));
  LbRun run;
  run.exit_status = child.wait_exit(deadline);
  if (!child.started()) run.exit_status.reset();
  child.kill();
  run.out = child.stdout_text();
  run.err = child.stderr_text();
  run.lines = child.lines();
  return run;
}

}  // namespace lb::test
