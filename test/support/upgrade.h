// Helpers for the upgrade-in-place tests (test/e2e/upgrade*_test.cc): put
// another build at the path lb runs from, follow the programs an upgrade
// starts (children of lb, not of the test) by pid, and keep clients going
// across the hand-offs.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "test/support/config_builder.h"
#include "test/support/deadline.h"
#include "test/support/lb_process.h"
#include "test/support/metrics.h"
#include "test/support/net.h"
#include "test/support/proc_net.h"

namespace lb::test {

bool install_script(const std::string& path, const std::string& text);

int fd_count_of(pid_t pid);

// Accepts one connection on a listening socket (tcp_listen) within the
// deadline; invalid on failure or timeout.
Socket accept_within(const Socket& listener, Deadline deadline);

// Ends a new lb the test did not spawn, by its pid, and waits for it.
struct AdoptedLb {
  pid_t pid = 0;
  ~AdoptedLb();
};

// Waits for the old program's "handed over" line for `generation` and adopts
// the new program it names (ended by the test if still running at the end).
bool await_handover(LbProcess& lb, int generation, size_t from,
                    std::vector<std::unique_ptr<AdoptedLb>>& adopted);

// The head of the upgrade tests' configurations: two workers (so every
// worker's socket is handed over), the admin API, shutdown_timeout 60 s.
ConfigBuilder upgrade_config();

uint64_t status_generation(uint16_t admin);
double metric(uint16_t admin, const std::string& name, const Labels& labels);

// counters_across() for a scrape before an upgrade and one of the program
// that took over, whose values must not be lower (docs/upgrade.md). Without
// process_cpu_seconds_total: the serving process's own CPU time, which starts
// again in the new process (Prometheus's process_* conventions, like
// process_start_time_seconds beside it).
std::vector<CounterSeries> upgrade_counters(const Metrics& before, const Metrics& after);

// New connections at a steady pace, each one echoed, until stopped:
// every failure counted, and the longest connect-to-echo time kept.
struct SteadyClient {
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::atomic<int64_t> longest_us{0};
  std::thread thread;
  explicit SteadyClient(uint16_t port);
  ~SteadyClient() { finish(); }
  void finish();
};

}  // namespace lb::test
