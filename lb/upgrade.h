// Upgrade in place: the checks the running lb makes on the program now at
// the path it was started from, before handing anything over (see
// docs/upgrade.md for the whole sequence; Server drives it).
//
// Thread rules: main thread only. run_program() blocks (bounded by its
// timeout): it runs at most twice per upgrade request, and the data path
// lives on the worker threads.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace lb::app::upgrade {

// The absolute path of the running executable, read once at start
// (/proc/self/exe names the file, even after it is replaced on disk it
// says "(deleted)": the path must be remembered before that happens).
std::string own_executable();

struct ProgramRun {
  std::optional<int> exit_status;  // nullopt: did not start, or killed at the timeout
  std::string output;              // stdout and stderr together
  std::string error;               // why it did not start or was killed
};
// What a caller blocked in run_program() must still do meanwhile: `fn` is
// called at least every `every` (lb's main loop feeds the systemd watchdog
// this way while it waits for the new program's checks, which may take up
// to their timeout, longer than WatchdogSec allows between two pings).
struct Keepalive {
  std::function<void()> fn;
  std::chrono::milliseconds every{0};
};

// Runs argv (argv[0] a path) with stdin from /dev/null, capturing its output
// (up to 64 KiB), for at most `timeout`; then SIGKILL.
ProgramRun run_program(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                       const Keepalive& keepalive = {});

// Why the program at `exe` cannot take over from this lb with configuration
// file `config`, or "" when it can: it exists and is executable, accepts the
// configuration (`--check`), and reads this build's hand-over version
// (`--handover-version`).
std::string check_program(const std::string& exe, const std::string& config,
                          std::chrono::milliseconds timeout, const Keepalive& keepalive = {});

// Starts argv (argv[0] a path) with environment `env`, stdin from
// /dev/null, stdout and stderr shared with this process, and `fd` as its
// descriptor 3 (not close-on-exec there). posix_spawn, not uv_spawn: no
// helper pipe whose descriptor number a worker thread could reuse at once
// (ThreadSanitizer reports that reuse), and no SIGCHLD handler needed: the
// hand-over channel tells when the program ends. Returns its pid, or -1
// with *error set.
pid_t spawn_with_fd3(const std::vector<std::string>& argv, const std::vector<std::string>& env, int fd,
                     std::string* error);

// The environment for the new program: this one's, without WATCHDOG_PID
// (systemd set it to this process's pid; the new program has another and
// must still feed the watchdog).
std::vector<std::string> child_environment();

}  // namespace lb::app::upgrade
