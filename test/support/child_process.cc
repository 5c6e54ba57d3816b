#include "test/support/child_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>

#include "test/support/proc_net.h"

extern char** environ;

namespace lb::test {

namespace {

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

std::string env_key(const std::string& entry) { return entry.substr(0, entry.find('=')); }

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

}  // namespace

ChildProcess::ChildProcess(std::vector<std::string> argv, SpawnOptions options)
    : options_(std::move(options)) {
  if (const char* v = std::getenv("LB_E2E_VERBOSE"); v && *v && std::string(v) != "0") {
    options_.echo_output = true;
  }
  if (argv.empty()) {
    spawn_error_ = EINVAL;
    return;
  }

  // Everything the child needs is built before fork(): after fork() in a
  // multi-threaded process only async-signal-safe calls are allowed.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    std::string entry(*e);
    bool overridden = false;
    for (const auto& o : options_.env) overridden |= env_key(o) == env_key(entry);
    if (!overridden) env_strings.push_back(std::move(entry));
  }
  for (const auto& o : options_.env) env_strings.push_back(o);
  // Filled in by the child with its own pid (no allocation after fork).
  static constexpr char kListenPid[] = "LISTEN_PID=";
  if (!options_.listen_fds.empty()) env_strings.push_back(std::string(kListenPid) + std::string(20, '\0'));
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> args;
  for (auto& s : argv) args.push_back(s.data());
  args.push_back(nullptr);

  int out_pipe[2], err_pipe[2], exec_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    spawn_error_ = errno;
    return;
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    spawn_error_ = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return;
  }
  // exec_pipe reports an exec failure: its write end closes on a successful
  // exec (O_CLOEXEC), so the parent reads either EOF or the child's errno.
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
    spawn_error_ = errno;
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) ::close(fd);
    return;
  }
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid == 0) {
    // Child: async-signal-safe calls only.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // parent already gone
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    // No descriptor of the test process may leak into the child (it would
    // skew fd_count() and keep sockets alive): mark everything >= 3 CLOEXEC.
    ::syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
    if (!options_.listen_fds.empty()) {
      // Lift every fd clear of 3.. first, so no dup2 overwrites another.
      const size_t n = options_.listen_fds.size();
      int lifted[64];
      if (n > 64) ::_exit(126);
      for (size_t i = 0; i < n; ++i) {
        lifted[i] = ::fcntl(options_.listen_fds[i], F_DUPFD_CLOEXEC, 200);
        if (lifted[i] < 0) ::_exit(126);
      }
      for (size_t i = 0; i < n; ++i)
        if (::dup2(lifted[i], static_cast<int>(3 + i)) < 0) ::_exit(126);  // dup2: not close-on-exec
      char* slot = envp[envp.size() - 2] + sizeof(kListenPid) - 1;
      char digits[20];
      int len = 0;
      for (long v = static_cast<long>(::getpid()); v > 0 && len < 20; v /= 10)
        digits[len++] = static_cast<char>('0' + v % 10);
      for (int i = 0; i < len; ++i) slot[i] = digits[len - 1 - i];
      slot[len] = '\0';
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD}) {
      ::sigaction(sig, &dfl, nullptr);
    }
    ::execve(args[0], args.data(), envp.data());
    int err = errno;
    (void)!::write(exec_pipe[1], &err, sizeof(err));
    ::_exit(127);
  }

  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(exec_pipe[1]);
  if (devnull >= 0) ::close(devnull);
  if (pid < 0) {
    spawn_error_ = errno;
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    ::close(exec_pipe[0]);
    return;
  }
  pid_ = pid;

  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(exec_pipe[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  ::close(exec_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) spawn_error_ = child_errno;

  pidfd_ = pidfd_open(pid_);  // -1 on old kernels: wait_exit() then polls
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  int out_fd = out_pipe[0], err_fd = err_pipe[0];
  reader_ = std::thread([this, out_fd, err_fd] { read_output(out_fd, err_fd); });
}

ChildProcess::~ChildProcess() {
  kill();
  // The child is gone, so its pipes normally hit EOF at once; a grandchild
  // holding them would not, hence the bound and the forced stop.
  wait_output_closed(in(seconds(2)));
  stop_reader();
  close_fd(pidfd_);
  close_fd(wake_fd_);
}

void ChildProcess::stop_reader() {
  if (!reader_.joinable()) return;
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof(one));
  reader_.join();
}

void ChildProcess::read_output(int out_fd, int err_fd) {
  std::string partial[2];
  int fds[2] = {out_fd, err_fd};
  for (;;) {
    pollfd p[3];
    int n = 0;
    int map[2] = {-1, -1};
    for (int i = 0; i < 2; ++i) {
      if (fds[i] >= 0) {
        map[i] = n;
        p[n++] = {fds[i], POLLIN, 0};
      }
    }
    if (n == 0) break;
    p[n++] = {wake_fd_, POLLIN, 0};
    int rc = ::poll(p, n, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[n - 1].revents) break;  // destructor: stop now
    for (int i = 0; i < 2; ++i) {
      if (map[i] < 0 || !p[map[i]].revents) continue;
      char buf[8192];
      ssize_t got = ::read(fds[i], buf, sizeof(buf));
      if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      Stream stream = i == 0 ? Stream::Stdout : Stream::Stderr;
      if (got <= 0) {
        if (!partial[i].empty()) append_line(stream, std::move(partial[i]));
        partial[i].clear();
        ::close(fds[i]);
        fds[i] = -1;
        continue;
      }
      partial[i].append(buf, static_cast<size_t>(got));
      size_t start = 0;
      for (size_t nl; (nl = partial[i].find('\n', start)) != std::string::npos; start = nl + 1) {
        append_line(stream, partial[i].substr(start, nl - start));
      }
      partial[i].erase(0, start);
    }
  }
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  std::lock_guard<std::mutex> lock(mu_);
  output_closed_ = true;
  cv_.notify_all();
}

void ChildProcess::append_line(Stream stream, std::string text) {
  if (options_.echo_output) {
    std::fprintf(stderr, "%s%s\n", options_.echo_prefix.c_str(), text.c_str());
  }
  std::lock_guard<std::mutex> lock(mu_);
  lines_.push_back({stream, std::move(text)});
  cv_.notify_all();
}

bool ChildProcess::wait_output_closed(Deadline deadline) {
  if (!reader_.joinable()) return true;
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return output_closed_; });
}

bool ChildProcess::running() {
  if (pid_ <= 0 || reaped_) return false;
  return !wait_exit(Clock::now()).has_value();
}

bool ChildProcess::signal(int sig) {
  if (pid_ <= 0 || reaped_) return false;
  return ::kill(pid_, sig) == 0;
}

std::optional<int> ChildProcess::wait_exit(Deadline deadline) {
  if (pid_ <= 0) return std::nullopt;
  if (!reaped_) {
    for (;;) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        if (WIFEXITED(status)) {
          exit_status_ = WEXITSTATUS(status);
        } else if (WIFSIGNALED(status)) {
          exit_status_ = 128 + WTERMSIG(status);
        } else {
          exit_status_ = -1;
        }
        break;
      }
      if (r < 0 && errno != EINTR) {
        // ECHILD: someone else reaped it (should not happen); treat as gone.
        reaped_ = true;
        exit_status_ = -1;
        break;
      }
      if (expired(deadline)) return std::nullopt;
      if (pidfd_ >= 0) {
        pollfd p{pidfd_, POLLIN, 0};
        ::poll(&p, 1, poll_timeout_ms(deadline));
      } else {
        std::this_thread::sleep_for(milliseconds(5));
      }
    }
  }
  wait_output_closed(deadline);
  return exit_status_;
}

void ChildProcess::kill() {
  if (pid_ <= 0 || reaped_) return;
  ::kill(pid_, SIGKILL);
  // SIGKILL cannot be caught; the wait is bounded only as a safety net.
  wait_exit(in(seconds(30)));
}

std::optional<std::string> ChildProcess::wait_for_line(const std::regex& re, Deadline deadline, size_t from,
                                                       size_t* index) {
  std::unique_lock<std::mutex> lock(mu_);
  size_t next = from;
  for (;;) {
    for (; next < lines_.size(); ++next) {
      if (std::regex_search(lines_[next].text, re)) {
        if (index) *index = next;
        return lines_[next].text;
      }
    }
    if (output_closed_ || !reader_.joinable()) return std::nullopt;
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && lines_.size() == next) {
      return std::nullopt;
    }
  }
}

std::optional<std::string> ChildProcess::find_line(const std::regex& re, size_t from) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = from; i < lines_.size(); ++i) {
    if (std::regex_search(lines_[i].text, re)) return lines_[i].text;
  }
  return std::nullopt;
}

size_t ChildProcess::line_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lines_.size();
}

std::vector<OutputLine> ChildProcess::lines() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lines_;
}

std::string ChildProcess::output() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& l : lines_) out += l.text + "\n";
  return out;
}

std::string ChildProcess::stdout_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& l : lines_) {
    if (l.stream == Stream::Stdout) out += l.text + "\n";
  }
  return out;
}

std::string ChildProcess::stderr_text() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& l : lines_) {
    if (l.stream == Stream::Stderr) out += l.text + "\n";
  }
  return out;
}

int ChildProcess::fd_count() const {
  if (pid_ <= 0 || reaped_) return -1;
  return proc_fd_count(pid_);
}

int proc_fd_count(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/fd";
  DIR* dir = ::opendir(path.c_str());
  if (!dir) return -1;
  int count = 0;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

int ChildProcess::pipe_count() const {
  if (pid_ <= 0 || reaped_) return -1;
  return pipes_of(pid_);
}

int pipes_of(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  char target[256];
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    ssize_t len = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
    if (len > 0 && std::string_view(target, static_cast<size_t>(len)).substr(0, 5) == "pipe:") ++n;
  }
  ::closedir(d);
  return n;
}

int ChildProcess::settled_fd_count(milliseconds quiet, Deadline deadline) const {
  int last = fd_count();
  auto since = Clock::now();
  wait_until(
      [&] {
        int now = fd_count();
        if (now != last) {
          last = now;
          since = Clock::now();
        }
        return Clock::now() - since >= quiet;
      },
      deadline);
  return last;
}

namespace {

// "0100007F:1F90" (IPv4) or 32 hex digits + port (IPv6) from /proc/net/tcp*.
std::string proc_net_address(const std::string& hex, uint16_t port) {
  std::string ip = hex.substr(0, hex.find(':'));
  if (ip.size() == 8) {
    // Four bytes in host (little-endian) order.
    unsigned long v = std::strtoul(ip.c_str(), nullptr, 16);
    return std::to_string(v & 0xff) + "." + std::to_string((v >> 8) & 0xff) + "." +
           std::to_string((v >> 16) & 0xff) + "." + std::to_string((v >> 24) & 0xff) + ":" +
           std::to_string(port);
  }
  return "[" + ip + "]:" + std::to_string(port);
}

const char* tcp_state_name(unsigned st) {
  static const char* const names[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                      "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                      "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};
  return st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

}  // namespace

std::string ChildProcess::describe_fds() const {
  if (pid_ <= 0 || reaped_) return "(process gone)\n";
  return proc_describe_fds(pid_);
}

std::string proc_describe_fds(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  // inode -> "local -> remote STATE"
  std::vector<std::pair<std::string, std::string>> sockets;
  for (const auto& r : proc_net_rows("tcp", proc))
    sockets.emplace_back(r.inode, proc_net_address(r.local, r.local_port) + " -> " +
                                      proc_net_address(r.remote, r.remote_port) + " " +
                                      tcp_state_name(r.state));
  std::string out;
  DIR* dir = ::opendir((proc + "/fd").c_str());
  if (!dir) return "(cannot open " + proc + "/fd)\n";
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end(),
            [](const std::string& a, const std::string& b) { return std::stoi(a) < std::stoi(b); });
  for (const auto& name : names) {
    char target[256];
    ssize_t n = ::readlink((proc + "/fd/" + name).c_str(), target, sizeof(target) - 1);
    std::string t = n > 0 ? std::string(target, static_cast<size_t>(n)) : "?";
    out += name + " -> " + t;
    if (t.rfind("socket:[", 0) == 0) {
      std::string inode = t.substr(8, t.size() - 9);
      for (const auto& [ino, desc] : sockets) {
        if (ino == inode) out += " (tcp " + desc + ")";
      }
    }
    out += "\n";
  }
  return out;
}

long ChildProcess::rss_kb() const {
  if (pid_ <= 0 || reaped_) return -1;
  return proc_rss_kb(pid_);
}

namespace {

// A "Key:   N kB" line of /proc/PID/status; -1 if unavailable.
long proc_status_kb(pid_t pid, const std::string& key) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key, 0) == 0) return std::strtol(line.c_str() + key.size(), nullptr, 10);
  }
  return -1;
}

}  // namespace

long proc_rss_kb(pid_t pid) { return proc_status_kb(pid, "VmRSS:"); }

long proc_rss_anon_kb(pid_t pid) { return proc_status_kb(pid, "RssAnon:"); }

}  // namespace lb::test
