#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <vector>

#include "core/pipe_pool.h"

using lb::core::Pipe;
using lb::core::PipePool;

namespace {

int open_fds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  while (readdir(d)) ++n;
  closedir(d);
  return n;
}

bool fd_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

size_t pipe_max_size() {
  size_t v = 0;
  if (FILE* f = std::fopen("/proc/sys/fs/pipe-max-size", "r")) {
    if (std::fscanf(f, "%zu", &v) != 1) v = 0;
    std::fclose(f);
  }
  return v;
}

}  // namespace

TEST_CASE("pipe pool hands out non-blocking close-on-exec pipes of the configured size",
          "[splice][pipe_pool]") {
  const int before = open_fds();
  {
    PipePool pool;  // 256 KiB default
    Pipe p;
    REQUIRE(pool.acquire(&p) == 0);
    REQUIRE(p.valid());
    CHECK(pool.in_use() == 1);
    CHECK(pool.created() == 1);
    CHECK((fcntl(p.rd, F_GETFL) & O_NONBLOCK) != 0);
    CHECK((fcntl(p.wr, F_GETFL) & O_NONBLOCK) != 0);
    CHECK((fcntl(p.rd, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK((fcntl(p.wr, F_GETFD) & FD_CLOEXEC) != 0);
    // 256 KiB is below the default fs.pipe-max-size (1 MiB), so it is granted.
    if (pipe_max_size() >= PipePool::kDefaultPipeSize) {
      CHECK(p.capacity == PipePool::kDefaultPipeSize);
      CHECK(fcntl(p.wr, F_GETPIPE_SZ) == static_cast<int>(PipePool::kDefaultPipeSize));
    }
    // The capacity is real: that many bytes fit without blocking.
    std::vector<char> buf(p.capacity, 'x');
    CHECK(write(p.wr, buf.data(), buf.size()) == static_cast<ssize_t>(buf.size()));
    CHECK(write(p.wr, "y", 1) == -1);
    CHECK(errno == EAGAIN);
    pool.release(&p, p.capacity);
    CHECK_FALSE(p.valid());
  }
  CHECK(open_fds() == before);
}

TEST_CASE("pipe pool reuses empty pipes and closes non-empty ones", "[splice][pipe_pool]") {
  const int before = open_fds();
  {
    PipePool pool(PipePool::kDefaultPipeSize, 4);
    Pipe a;
    REQUIRE(pool.acquire(&a) == 0);
    const int rd = a.rd, wr = a.wr;
    pool.release(&a, 0);
    CHECK(pool.idle() == 1);
    CHECK(pool.in_use() == 0);
    CHECK(fd_open(rd));

    // The same pipe comes back; nothing new is created.
    Pipe b;
    REQUIRE(pool.acquire(&b) == 0);
    CHECK(b.rd == rd);
    CHECK(b.wr == wr);
    CHECK(pool.created() == 1);
    CHECK(pool.idle() == 0);

    // A pipe with bytes left in it must never reach another user.
    REQUIRE(write(b.wr, "z", 1) == 1);
    pool.release(&b, 1);
    CHECK(pool.idle() == 0);
    CHECK(pool.in_use() == 0);
    CHECK_FALSE(fd_open(rd));
    CHECK_FALSE(fd_open(wr));

    Pipe c;
    REQUIRE(pool.acquire(&c) == 0);
    CHECK(pool.created() == 2);
    pool.release(&c, 0);
    // Releasing an invalid pipe is harmless.
    Pipe none;
    pool.release(&none, 0);
    CHECK(pool.in_use() == 0);
    CHECK(pool.idle() == 1);
  }
  CHECK(open_fds() == before);
}

TEST_CASE("pipe pool keeps at most max_idle pipes and closes the rest", "[splice][pipe_pool]") {
  const int before = open_fds();
  {
    PipePool pool(64 * 1024, 2);
    Pipe p[3];
    for (Pipe& x : p) REQUIRE(pool.acquire(&x) == 0);
    CHECK(pool.in_use() == 3);
    CHECK(pool.created() == 3);
    const int third_rd = p[2].rd;
    for (Pipe& x : p) pool.release(&x, 0);
    CHECK(pool.idle() == 2);
    CHECK(pool.in_use() == 0);
    CHECK_FALSE(fd_open(third_rd));
    CHECK(open_fds() == before + 4);  // two idle pipes, two fds each
  }
  // The destructor closes the idle ones.
  CHECK(open_fds() == before);
}

TEST_CASE("pipe pool honours smaller sizes", "[splice][pipe_pool]") {
  PipePool pool(16 * 1024);
  Pipe p;
  REQUIRE(pool.acquire(&p) == 0);
  CHECK(p.capacity == 16 * 1024);
  pool.release(&p, 0);
}

TEST_CASE("pipe pool falls back silently when the kernel refuses the size", "[splice][pipe_pool]") {
  const size_t max = pipe_max_size();
  REQUIRE(max > 0);  // every Linux lb supports has /proc/sys/fs/pipe-max-size
  // Root may exceed fs.pipe-max-size (CAP_SYS_RESOURCE), so drop that
  // capability in a child and ask for four times the limit there.
  std::fflush(nullptr);  // the child must not inherit (and repeat) buffered output
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (syscall(SYS_capget, &hdr, data) != 0) _exit(10);
    data[CAP_SYS_RESOURCE / 32].effective &= ~(1u << (CAP_SYS_RESOURCE % 32));
    data[CAP_SYS_RESOURCE / 32].permitted &= ~(1u << (CAP_SYS_RESOURCE % 32));
    if (syscall(SYS_capset, &hdr, data) != 0) _exit(11);
    PipePool pool(max * 4);
    Pipe a, b;
    if (pool.acquire(&a) != 0) _exit(12);
    if (a.capacity == 0 || a.capacity > max) _exit(13);  // fell back to what is allowed
    if (pool.pipe_size() > max) _exit(14);               // and remembers it
    if (pool.acquire(&b) != 0 || b.capacity != a.capacity) _exit(15);
    if (static_cast<size_t>(fcntl(a.wr, F_GETPIPE_SZ)) != a.capacity) _exit(16);
    pool.release(&a, 0);
    pool.release(&b, 0);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("pipe pool trim closes every idle pipe and counts acquires", "[splice][pipe_pool]") {
  const int before = open_fds();
  {
    PipePool pool(64 * 1024, 8);
    Pipe a, b;
    REQUIRE(pool.acquire(&a) == 0);
    REQUIRE(pool.acquire(&b) == 0);
    CHECK(pool.acquires() == 2);
    const int rd = a.rd;
    pool.release(&a, 0);
    pool.release(&b, 0);
    CHECK(pool.idle() == 2);
    CHECK(open_fds() == before + 4);
    pool.trim();
    CHECK(pool.idle() == 0);
    CHECK_FALSE(fd_open(rd));
    CHECK(open_fds() == before);
    // Still usable afterwards.
    REQUIRE(pool.acquire(&a) == 0);
    CHECK(pool.acquires() == 3);
    pool.release(&a, 0);
  }
  CHECK(open_fds() == before);
}

TEST_CASE("pipe pool: a spent pipe quota gives no small pipes, and full size again after retry()",
          "[splice][pipe_pool]") {
  // fs.pipe-user-pages-soft is per user and binds only unprivileged ones: past
  // it, new pipes get 8 KiB and cannot grow. Rather than lower the sysctl
  // (system-wide), a child becomes a fresh user of its own (no other process
  // has its pipes, and setuid() drops every capability) and spends that
  // user's quota with the pool itself.
  long soft = 0;
  if (FILE* f = std::fopen("/proc/sys/fs/pipe-user-pages-soft", "r")) {
    if (std::fscanf(f, "%ld", &soft) != 1) soft = 0;
    std::fclose(f);
  }
  if (soft <= 0 || geteuid() != 0) {
    WARN("needs root (to become a fresh user) and fs.pipe-user-pages-soft > 0: skipped");
    return;
  }
  constexpr size_t kSize = 256 * 1024;
  const long max_pipes = soft / static_cast<long>(kSize / 4096) + 16;  // then it must have run out
  std::fflush(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const uid_t uid = 0x4c420000u + static_cast<uid_t>(getpid() & 0xffff);  // owns nothing
    if (setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) _exit(10);
    PipePool pool(kSize, 8);
    std::vector<Pipe> held;
    int rc = 0;
    while (static_cast<long>(held.size()) < max_pipes) {
      Pipe p;
      rc = pool.acquire(&p);
      if (rc != 0) break;
      if (p.capacity < PipePool::kDefaultMinSize) _exit(11);  // a pipe too small to be of use
      held.push_back(p);
    }
    if (rc != -ENOBUFS) _exit(12);  // ran out, and said so
    if (held.empty()) _exit(13);
    if (pool.pipe_size() < PipePool::kDefaultMinSize) _exit(14);
    // Failing now costs no syscalls: nothing is created.
    const size_t created = pool.created();
    Pipe p;
    if (pool.acquire(&p) != -ENOBUFS || pool.created() != created || pool.can_acquire()) _exit(15);
    // The quota comes back; the pool waits for retry() before it asks again.
    for (Pipe& h : held) pool.release(&h, 1);  // not empty: closed, not pooled
    if (pool.acquire(&p) != -ENOBUFS) _exit(16);
    pool.retry();
    if (!pool.can_acquire()) _exit(17);
    if (pool.acquire(&p) != 0 || p.capacity != kSize || pool.pipe_size() != kSize) _exit(18);
    pool.release(&p, 0);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
