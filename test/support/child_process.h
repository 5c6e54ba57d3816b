// A child process for end-to-end tests: spawned with its stdout and stderr
// captured line by line, waited for with deadlines, never left behind.
//
// Leaving no process behind: the destructor SIGKILLs and reaps the child if
// it still runs, and the child is spawned with PR_SET_PDEATHSIG = SIGKILL so
// even a test process that crashes (no destructors) takes it along. The death
// signal fires when the *spawning thread* exits, so spawn from the test's main
// thread (or another thread that outlives the child).
//
// Only this object's own pid is ever signalled, and only until it is reaped
// (a reaped pid may be reused by an unrelated process).
//
// Thread rules: one test thread owns the object; a private reader thread
// fills the line list. Every accessor is safe from the owning thread while the
// reader runs. Not copyable or movable (the reader thread points at it).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "test/support/deadline.h"

namespace lb::test {

enum class Stream { Stdout, Stderr };

struct OutputLine {
  Stream stream;
  std::string text;  // without the newline
};

struct SpawnOptions {
  // "KEY=VALUE" entries added to (or replacing in) the inherited environment.
  std::vector<std::string> env;
  // Copy each line to this process's stderr as it arrives, prefixed with
  // `echo_prefix`. Defaults to on when LB_E2E_VERBOSE is set in the environment.
  bool echo_output = false;
  std::string echo_prefix;
  // Socket activation as systemd does it: these descriptors (which stay
  // open here) appear in the child as 3, 4, ... and LISTEN_PID is set to the
  // child's pid. The caller sets LISTEN_FDS (and LISTEN_FDNAMES) in `env`.
  std::vector<int> listen_fds;
};

class ChildProcess {
 public:
  // Spawns argv[0] (a path, not searched in PATH) with argv. Check started().
  explicit ChildProcess(std::vector<std::string> argv, SpawnOptions options = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // False if the fork or the exec failed; spawn_error() then holds the errno.
  bool started() const { return pid_ > 0 && spawn_error_ == 0; }
  int spawn_error() const { return spawn_error_; }
  pid_t pid() const { return pid_; }

  // True until the child has been reaped by wait_exit()/kill().
  bool running();
  // Sends `sig` to the child; false once it has been reaped.
  bool signal(int sig);
  // Waits for the child to exit and reaps it; also waits (within the same
  // deadline) until its output pipes are drained, so lines() is complete.
  // Returns the exit status, or 128 + signal number if a signal killed it;
  // std::nullopt if it still runs at the deadline.
  std::optional<int> wait_exit(Deadline deadline);
  // The status wait_exit() returned, once the child has been reaped.
  std::optional<int> exit_status() const { return exit_status_; }
  // SIGKILL and reap (no-op once reaped).
  void kill();

  // The first line at index >= `from` that matches `re` (std::regex_search),
  // waiting for it until `deadline`. Returns std::nullopt on timeout, or as
  // soon as the child's output has ended without a match. `index`, when given,
  // receives the matching line's index.
  std::optional<std::string> wait_for_line(const std::regex& re, Deadline deadline, size_t from = 0,
                                           size_t* index = nullptr);
  // Same without waiting.
  std::optional<std::string> find_line(const std::regex& re, size_t from = 0) const;
  // Number of lines so far: pass it as `from` to wait only for newer lines.
  size_t line_count() const;
  std::vector<OutputLine> lines() const;
  // Everything captured, one line each, in arrival order.
  std::string output() const;
  std::string stdout_text() const;
  std::string stderr_text() const;

  // Open file descriptors of the child (/proc/PID/fd), -1 if unavailable.
  int fd_count() const;
  // Pipes among them (lb's splice(2) relay holds one per busy direction), -1
  // if unavailable.
  int pipe_count() const;
  // fd_count() once it has not changed for `quiet` (or its last value at the
  // deadline): a baseline for leak checks that is not taken while the child
  // is still setting up (e.g. worker threads opening their loops' fds).
  int settled_fd_count(milliseconds quiet, Deadline deadline) const;
  // One line per open descriptor, "FD -> TARGET", TCP sockets annotated with
  // their addresses and state from /proc/PID/net/tcp{,6}: for the message of
  // a failed fd-leak check.
  std::string describe_fds() const;
  // Resident set size in KiB (/proc/PID/status VmRSS), -1 if unavailable.
  long rss_kb() const;

 private:
  void read_output(int out_fd, int err_fd);
  void append_line(Stream stream, std::string text);
  bool wait_output_closed(Deadline deadline);
  void stop_reader();

  SpawnOptions options_;
  pid_t pid_ = -1;
  int pidfd_ = -1;    // becomes readable when the child exits
  int wake_fd_ = -1;  // eventfd that stops the reader thread early
  int spawn_error_ = 0;
  bool reaped_ = false;
  std::optional<int> exit_status_;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // new line, or output closed
  std::vector<OutputLine> lines_;
  bool output_closed_ = false;
  std::thread reader_;
};

// Pipes among the open files of process `pid`, -1 if unavailable. Safe from
// any thread.
int pipes_of(pid_t pid);
// The same figures as ChildProcess's, for any process by pid (e.g. an lb
// started by an upgrade, which is not the test's child). Safe from any thread.
int proc_fd_count(pid_t pid);
long proc_rss_kb(pid_t pid);
// RssAnon: the process's own memory, without the pages of its program and
// libraries that are resident (RssFile), which depend on the code it has run.
long proc_rss_anon_kb(pid_t pid);
std::string proc_describe_fds(pid_t pid);

}  // namespace lb::test
