// Impaired links between network namespaces, for tests that put lb behind a
// bad network from C++ (the soak's --netem mode): namespaces without names,
// and test/netem's lb-netem relay between TAP devices in them.
//
// PrivateNetns is created by unshare(2) on a short-lived thread and held by a
// descriptor only: no /run/netns entry exists, so when the test ends, however
// it ends (a crash, SIGKILL), the namespace and its devices go with the last
// process inside. Other processes enter it through path() (/proc/PID/fd/N,
// root only).
//
// Thread rules: create and destroy on the test's main thread. enter() moves
// the calling thread only (setns applies to one thread); run_in() runs a
// function on a new thread inside and waits for it. Spawn NetemRelay from a
// thread that outlives it (its death signal follows the spawning thread, see
// ChildProcess).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/netns.h"

namespace lb::test {

class PrivateNetns {
 public:
  // Creates the namespace with `lo` up. Check ok().
  PrivateNetns();
  ~PrivateNetns();
  PrivateNetns(const PrivateNetns&) = delete;
  PrivateNetns& operator=(const PrivateNetns&) = delete;

  bool ok() const { return fd_ >= 0; }
  const std::string& error() const { return error_; }
  // A path that enters the namespace (setns, lb-netem --pair, nsenter --net=).
  std::string path() const;
  // Moves the calling thread into the namespace.
  bool enter() const;
  // Runs fn on a thread inside the namespace and waits for it; false when
  // the thread could not enter it (fn then does not run).
  bool run_in(const std::function<void()>& fn) const;
  // Interface `dev` gets IPv4 `address`/`prefix`, a transmit queue of
  // `txqueuelen` frames, and is brought up. False with error() set otherwise.
  bool configure(const std::string& dev, const std::string& address, int prefix, int txqueuelen);
  // Frames the kernel dropped on `dev`'s transmit side (for a TAP device: its
  // reader was behind and the queue full), -1 if unknown.
  long tx_dropped(const std::string& dev) const;

 private:
  int fd_ = -1;
  std::string error_;
};

// Path of the lb-netem relay the build produced; $LB_NETEM overrides it.
std::string lb_netem_binary();

// The impairments of issue 22 on every link: 2 % loss, 20 ms +- 10 ms delay,
// 1 % reordering, 0.5 % duplication.
struct Impairment {
  double loss_pct = 2, delay_ms = 20, jitter_ms = 10, reorder_pct = 1, duplicate_pct = 0.5;
};

// lb-netem's counters (frames, both directions of its pairs together).
struct NetemCounters {
  uint64_t in = 0, out = 0, lost = 0, ruled = 0, duplicated = 0, reordered = 0, overflow = 0,
           write_errors = 0;
  // Frames that entered and were not delivered for any reason but a rule.
  uint64_t dropped() const { return lost + overflow + write_errors; }
};

// One lb-netem process relaying between pairs of TAP devices, each pair
// {namespace path, device, namespace path, device}.
class NetemRelay {
 public:
  struct Pair {
    std::string ns_a, tap_a, ns_b, tap_b;
  };
  NetemRelay(const std::vector<Pair>& pairs, const Impairment& impairment, uint64_t seed, seconds max_run);
  // True once the relay made its TAP devices (they can be configured then).
  bool wait_ready(Deadline deadline);
  // The relay's counters now (SIGUSR1, then its "stats" line).
  std::optional<NetemCounters> counters(Deadline deadline);
  std::string output() const { return process_->output(); }
  pid_t pid() const { return process_->pid(); }

 private:
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace lb::test
