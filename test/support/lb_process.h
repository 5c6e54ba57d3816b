// The lb binary under test, run as a child process.
//
// LbProcess writes a configuration to a private temporary directory, starts
// `lb --config FILE` and learns from its log what it bound: lb logs
//   info listening listener=NAME address=IP:PORT     (one line per bind)
//   info admin listening address=IP:PORT
//   info started version=X workers=N                 (serving from now on)
// so configurations bind port 0 and tests ask listener_port()/admin_port().
//
// Failure reporting: if an LbProcess is destroyed while an exception unwinds
// (a failed REQUIRE), it prints lb's captured output to stderr so the log is
// in the test report. Set LB_E2E_VERBOSE=1 to see lb's output live instead.
//
// Thread rules: owned by one test thread (see ChildProcess); spawn from the
// test's main thread.
#pragma once

#include <csignal>
#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "test/support/child_process.h"
#include "test/support/deadline.h"
#include "test/support/temp_dir.h"

namespace lb::test {

// Path of the lb executable the build produced.
std::string lb_binary();
// A second build of lb that differs from lb_binary() (its --version line):
// the upgrade tests alternate between the two. $LB_ALT_BINARY overrides it.
std::string lb_alt_binary();
// A build that aborts right after taking over in an upgrade (lb_crash).
std::string lb_crash_binary();
// test/data in the source tree (fixtures).
std::string test_data_dir();

// Generous defaults: sanitizer builds start and stop several times slower.
inline constexpr auto kStartTimeout = seconds(15);
inline constexpr auto kStopTimeout = seconds(15);

struct LbOptions {
  std::vector<std::string> extra_args;  // appended after --config FILE
  std::vector<std::string> env;         // "KEY=VALUE" for the child
  std::vector<std::string> prefix;      // a command lb runs under (NetNamespace::exec_prefix())
  std::vector<int> listen_fds;          // socket activation: see SpawnOptions::listen_fds
  std::string binary;                   // another lb build than lb_binary()
};

class LbProcess {
 public:
  // Writes `config_toml` to <tmp>/lb.toml and spawns lb on it. Does not wait:
  // call wait_started() (or wait_exit() for start-up failures).
  explicit LbProcess(const std::string& config_toml, LbOptions options = {});
  ~LbProcess();
  LbProcess(const LbProcess&) = delete;
  LbProcess& operator=(const LbProcess&) = delete;

  const std::string& config_path() const { return config_path_; }
  // Rewrites the configuration file (e.g. before a SIGHUP reload).
  bool write_config(const std::string& config_toml);

  // Waits for the "info started" line. False on timeout, or at once if lb
  // exits first (then exit_status()/output() tell why).
  bool wait_started(Deadline deadline = in(kStartTimeout));

  // Ports lb logged, from the lines captured so far (complete once
  // wait_started() returned true). 0 when not found. `index` selects among
  // several binds of one listener, in log order.
  uint16_t listener_port(const std::string& listener, size_t index = 0) const;
  // Every "IP:PORT" lb logged for `listener`, in log order.
  std::vector<std::string> listener_addresses(const std::string& listener) const;
  uint16_t admin_port() const;

  bool signal(int sig) { return child_->signal(sig); }
  std::optional<int> wait_exit(Deadline deadline) { return child_->wait_exit(deadline); }
  std::optional<int> exit_status() const { return child_->exit_status(); }
  // SIGTERM, then waits for the exit: the exit status, or std::nullopt if lb
  // is still running at the deadline (the destructor then kills it).
  std::optional<int> terminate(Deadline deadline = in(kStopTimeout));

  int fd_count() const { return child_->fd_count(); }
  long rss_kb() const { return child_->rss_kb(); }
  pid_t pid() const { return child_->pid(); }

  std::optional<std::string> wait_for_line(const std::regex& re, Deadline deadline, size_t from = 0) {
    return child_->wait_for_line(re, deadline, from);
  }
  size_t line_count() const { return child_->line_count(); }
  std::string output() const { return child_->output(); }
  ChildProcess& process() { return *child_; }

 private:
  TempDir dir_;
  std::string config_path_;
  std::unique_ptr<ChildProcess> child_;
};

// A one-shot run of lb with arbitrary arguments (--check, --version, bad
// command lines). The child is killed if it is still running at the deadline
// (exit_status is then std::nullopt).
struct LbRun {
  std::optional<int> exit_status;
  std::string out;                // stdout
  std::string err;                // stderr
  std::vector<OutputLine> lines;  // both, in arrival order
};
LbRun run_lb(const std::vector<std::string>& args, Deadline deadline = in(kStartTimeout),
             const std::vector<std::string>& env = {});

// Whether lb started from this process may use splice(2): false when
// LB_SPLICE in the environment turns it off (ctest's e2e_copy_path run).
bool lb_splice_enabled();

// The environment that LD_PRELOADs `shim` (a test/preload library) into lb:
// LD_PRELOAD, and ASAN_OPTIONS (the test's own, if any) with ASan's check
// that its runtime is loaded first turned off, since the shim is.
std::vector<std::string> preload_env(const std::string& shim);

// Upgrades in place (docs/upgrade.md). lb re-executes the program at the path
// it was started from, so tests run it from a copy they can replace.
// Puts a copy of `from` at `to` the way a package manager does: write beside
// it, then rename over it (the running program keeps its file).
bool install_program(const std::string& from, const std::string& to);

// A process the test did not spawn (a new lb started by an upgrade) has
// exited: gone, or a zombie waiting for its new parent.
bool process_gone(pid_t pid);
bool wait_gone(pid_t pid, Deadline deadline);

// The usual head of a test configuration: [global] with `workers`, no access
// log, and (when `admin`) an [admin] section listening on 127.0.0.1:0.
std::string global_section(unsigned workers = 1, bool admin = true);

// Value of `key=` in a "LEVEL message key=value ..." log line (quotes around
// the value are stripped); std::nullopt when the key is absent.
std::optional<std::string> log_field(const std::string& line, const std::string& key);
// The port of "IP:PORT" / "[IPv6]:PORT"; 0 when malformed.
uint16_t port_of(const std::string& address);

}  // namespace lb::test
