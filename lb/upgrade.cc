#include "lb/upgrade.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "core/handover/state.h"

extern char** environ;

namespace lb::app::upgrade {

namespace {

int64_t now_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

// The first line of `text` that is not empty, shortened for a log line.
std::string first_line(const std::string& text) {
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    std::string line = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (!line.empty()) return line.size() > 300 ? line.substr(0, 300) + "..." : line;
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return "(no output)";
}

// The child starts with default signal dispositions and an empty mask (lb
// ignores SIGPIPE; libuv may block signals on its threads).
void default_signals(posix_spawnattr_t* attr) {
  posix_spawnattr_init(attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(attr, &all);
  posix_spawnattr_setsigmask(attr, &none);
  posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
}

}  // namespace

std::string own_executable() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  return std::string(buf, static_cast<size_t>(n));
}

namespace {

// Calls the keepalive whenever it is due; returns how long until the next
// one is (INT_MAX without a keepalive).
class KeepaliveClock {
 public:
  explicit KeepaliveClock(const Keepalive& k) : k_(k), next_(now_ms() + k.every.count()) {}
  int64_t until_due() {
    if (!k_.fn || k_.every.count() <= 0) return INT_MAX;
    const int64_t now = now_ms();
    if (now >= next_) {
      k_.fn();
      next_ = now + k_.every.count();
    }
    return next_ - now;
  }

 private:
  const Keepalive& k_;
  int64_t next_;
};

}  // namespace

ProgramRun run_program(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                       const Keepalive& keepalive) {
  KeepaliveClock ping(keepalive);
  ProgramRun run;
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    run.error = std::string("pipe: ") + std::strerror(errno);
    return run;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out[1], 2);
  posix_spawnattr_t attr;
  default_signals(&attr);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]);
  if (rc != 0) {
    ::close(out[0]);
    run.error = std::string("cannot run it: ") + std::strerror(rc);
    return run;
  }
  const int64_t deadline = now_ms() + timeout.count();
  bool timed_out = false;
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min(left, ping.until_due())));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char buf[4096];
    ssize_t got = ::read(out[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // EOF: the program (and anything it started) closed its output
    if (run.output.size() < 64 * 1024) run.output.append(buf, static_cast<size_t>(got));
  }
  ::close(out[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  // Its output ended: it exits now. Still bounded, in case it closed
  // stdout and stderr and kept running.
  for (;;) {
    pid_t w = ::waitpid(pid, &status, timed_out ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w == 0) {
      ping.until_due();
      if (now_ms() >= deadline) {
        ::kill(pid, SIGKILL);
        timed_out = true;
        continue;
      }
      timespec ts{0, 5'000'000};
      ::nanosleep(&ts, nullptr);
    }
  }
  if (timed_out) {
    run.error = "no answer within " + std::to_string(timeout.count()) + " ms";
    return run;
  }
  if (WIFEXITED(status))
    run.exit_status = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    run.error = std::string("killed by signal ") + std::to_string(WTERMSIG(status));
  return run;
}

std::string check_program(const std::string& exe, const std::string& config,
                          std::chrono::milliseconds timeout, const Keepalive& keepalive) {
  if (exe.empty()) return "the path lb was started from is unknown";
  if (::access(exe.c_str(), X_OK) != 0)
    return "no program to upgrade to at " + exe + " (" + std::strerror(errno) + ")";
  ProgramRun check = run_program({exe, "--check", "--config", config}, timeout, keepalive);
  if (!check.exit_status)
    return "the new program " + exe + " did not check the configuration: " + check.error;
  if (*check.exit_status != 0)
    return "the new program " + exe + " rejects the configuration: " + first_line(check.output);
  ProgramRun version = run_program({exe, "--handover-version"}, timeout, keepalive);
  if (!version.exit_status || *version.exit_status != 0)
    return "the new program " + exe + " cannot take over lb's state: it does not speak the hand-over (" +
           (version.exit_status ? first_line(version.output) : version.error) + ")";
  std::string why;
  if (!core::handover::reads_version(first_line(version.output), core::handover::kHandoverVersion, &why))
    return "the new program " + exe + " cannot take over lb's state: " + why;
  return {};
}

pid_t spawn_with_fd3(const std::vector<std::string>& argv, const std::vector<std::string>& env, int fd,
                     std::string* error) {
  // dup2 onto itself would leave close-on-exec set: move off 3 first. With
  // dup(), not fcntl(F_DUPFD): ThreadSanitizer follows dup(), and an fd it
  // did not see created looks like a race with whichever worker last used
  // the number (libuv closes with a raw syscall it cannot see either).
  int high = fd == 3 ? ::dup(fd) : fd;
  if (high < 0) {
    *error = std::string("dup: ") + std::strerror(errno);
    return -1;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, high, 3);
  posix_spawnattr_t attr;
  default_signals(&attr);
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, args[0], &fa, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (high != fd) ::close(high);
  if (rc != 0) {
    *error = std::string("cannot start it: ") + std::strerror(rc);
    return -1;
  }
  return pid;
}

std::vector<std::string> child_environment() {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "WATCHDOG_PID=", 13) != 0) env.emplace_back(*e);
  return env;
}

}  // namespace lb::app::upgrade
