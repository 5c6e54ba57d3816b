#include "test/support/upgrade.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <fstream>
#include <regex>

#include "test/support/http_client.h"
#include "test/support/net.h"
#include "test/support/proc_net.h"

namespace lb::test {

bool install_script(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".new";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) return false;
  }
  return ::chmod(tmp.c_str(), 0755) == 0 && ::rename(tmp.c_str(), path.c_str()) == 0;
}

int fd_count_of(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  int n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    return n;
  }
  return -1;
}

Socket accept_within(const Socket& listener, Deadline deadline) {
  while (true) {
    int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return Socket(fd);
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return {};
    if (expired(deadline)) return {};
    pollfd p{listener.fd(), POLLIN, 0};
    ::poll(&p, 1, std::min(poll_timeout_ms(deadline), 1000));
  }
}

AdoptedLb::~AdoptedLb() {
  if (pid > 0 && !process_gone(pid)) {
    ::kill(pid, SIGKILL);
    wait_gone(pid, in(seconds(10)));
  }
}

bool await_handover(LbProcess& lb, int generation, size_t from,
                    std::vector<std::unique_ptr<AdoptedLb>>& adopted) {
  auto handed = lb.wait_for_line(
      std::regex(fmt::format(R"(^info upgrade handed over to pid=([0-9]+) generation={}$)", generation)),
      in(std::chrono::seconds(30)), from);
  if (!handed) return false;
  adopted.push_back(std::make_unique<AdoptedLb>());
  adopted.back()->pid = static_cast<pid_t>(std::stoi(handed->substr(handed->find("pid=") + 4)));
  return true;
}

ConfigBuilder upgrade_config() { return ConfigBuilder().global(2, true, "", "shutdown_timeout = \"60s\""); }

uint64_t status_generation(uint16_t admin) {
  HttpResponse r = http_get(admin, "/api/v1/status");
  std::smatch m;
  if (r.status != 200 || !std::regex_search(r.body, m, std::regex(R"("generation":\s*([0-9]+))"))) return 0;
  return std::stoull(m[1].str());
}

double metric(uint16_t admin, const std::string& name, const Labels& labels) {
  auto m = fetch_metrics(admin);
  if (!m) return -1;
  return m->value(name, labels).value_or(-1);
}

std::vector<CounterSeries> upgrade_counters(const Metrics& before, const Metrics& after) {
  std::vector<CounterSeries> all = counters_across(before, after);
  all.erase(std::remove_if(all.begin(), all.end(),
                           [](const CounterSeries& c) { return c.series == "process_cpu_seconds_total"; }),
            all.end());
  return all;
}

SteadyClient::SteadyClient(uint16_t port) {
  thread = std::thread([this, port] {
    for (int i = 0; i < 20000 && !stop.load(); ++i) {
      auto t0 = Clock::now();
      bool good = echoes(port, fmt::format("steady {}", i));
      int64_t us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
      if (good) {
        ++ok;
        if (us > longest_us.load()) longest_us.store(us);
      } else {
        ++failed;
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
  });
}

void SteadyClient::finish() {
  stop.store(true);
  if (thread.joinable()) thread.join();
}

}  // namespace lb::test
