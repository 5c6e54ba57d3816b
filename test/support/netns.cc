#include "test/support/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "test/support/child_process.h"

namespace lb::test {

NetNamespace::NetNamespace() : name_("lbtest-" + std::to_string(::getpid())) {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (::access(p, X_OK) == 0) {
      ip_ = p;
      break;
    }
  if (ip_.empty()) {
    error_ = "ip(8) not found (package iproute2)";
    return;
  }
  run_ip({"netns", "del", name_});  // a leftover of a killed run, if any
  error_.clear();                   // (usually there is none to delete)
  if (!run_ip({"netns", "add", name_})) return;
  created_ = true;
  ok_ = run_ip({"netns", "exec", name_, ip_, "link", "set", "lo", "up"});
}

NetNamespace::~NetNamespace() {
  std::error_code ec;
  std::filesystem::remove_all("/etc/netns/" + name_, ec);
  std::filesystem::remove("/etc/netns", ec);  // only when empty: another namespace may use it
  if (created_) run_ip({"netns", "del", name_});
}

bool NetNamespace::run_ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv{ip_};
  argv.insert(argv.end(), args.begin(), args.end());
  ChildProcess p(argv);
  auto rc = p.wait_exit(in(seconds(10)));
  if (rc && *rc == 0) return true;
  error_ = "ip " + args[0] + " " + args[1] + " failed: " + p.output();
  return false;
}

bool NetNamespace::write_resolv_conf(const std::string& text) {
  std::error_code ec;
  const std::string dir = "/etc/netns/" + name_;
  std::filesystem::create_directories(dir, ec);
  if (ec) return false;
  std::ofstream f(dir + "/resolv.conf", std::ios::trunc);
  f << text;
  return static_cast<bool>(f.flush());
}

std::vector<std::string> NetNamespace::exec_prefix() const { return {ip_, "netns", "exec", name_}; }

bool enter_netns(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::setns(fd, CLONE_NEWNET) == 0;
  ::close(fd);
  return ok;
}

bool run_in_netns(const std::string& path, const std::function<void()>& fn) {
  bool entered = false;
  std::thread t([&] {
    entered = enter_netns(path);
    if (entered) fn();
  });
  t.join();
  return entered;
}

bool NetNamespace::enter() const { return enter_netns("/run/netns/" + name_); }

bool NetNamespace::run_in(const std::function<void()>& fn) const {
  return run_in_netns("/run/netns/" + name_, fn);
}

}  // namespace lb::test
