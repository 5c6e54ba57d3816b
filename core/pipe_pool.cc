#include "core/pipe_pool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "core/descriptors.h"

namespace lb::core {

PipePool::PipePool(size_t pipe_size, size_t max_idle, size_t min_size)
    : configured_size_(pipe_size == 0 ? kDefaultPipeSize : pipe_size),
      pipe_size_(configured_size_),
      min_size_(std::min(min_size, configured_size_)),
      max_idle_(max_idle) {
  idle_.reserve(max_idle_);
}

PipePool::~PipePool() {
  for (Pipe& p : idle_) close_pipe(&p);
}

int PipePool::acquire(Pipe* out) {
  ++acquires_;
  if (!idle_.empty()) {
    *out = idle_.back();
    idle_.pop_back();
    ++in_use_;
    return 0;
  }
  if (failing_) return -ENOBUFS;
  int rc = create(out);
  if (rc == 0)
    ++in_use_;
  else
    failing_ = true;
  return rc;
}

void PipePool::trim() {
  for (Pipe& p : idle_) close_pipe(&p);
  idle_.clear();
}

void PipePool::release(Pipe* p, size_t pending) {
  if (!p->valid()) return;
  --in_use_;
  if (pending == 0 && idle_.size() < max_idle_) {
    idle_.push_back(*p);  // within the reserved capacity: no allocation
  } else {
    close_pipe(p);
  }
  *p = Pipe{};
}

int PipePool::create(Pipe* out) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return -errno;
  if (descriptors::in_accept_floor(fds[1])) {
    // The last descriptors are accept()'s (core/descriptors.h): the session
    // keeps the copy path.
    ::close(fds[0]);
    ::close(fds[1]);
    return -EMFILE;
  }
  int current = fcntl(fds[1], F_GETPIPE_SZ);
  // Ask for the current target; when the kernel refuses (above
  // fs.pipe-max-size, or over the user's pipe page quota), halve down to
  // min_size_, and remember what worked (until retry()) so later pipes do not
  // repeat the refused attempts.
  size_t want = pipe_size_;
  while (current > 0 && want != static_cast<size_t>(current)) {
    int got = fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(want));
    if (got > 0) {
      current = got;
      break;
    }
    if (want / 2 < min_size_) break;
    want /= 2;
    pipe_size_ = want;
  }
  if (current <= 0 || static_cast<size_t>(current) < min_size_) {
    // Only a pipe too small to be worth splicing through (a spent quota
    // gives 8 KiB ones): none at all, the copy path is faster.
    ::close(fds[0]);
    ::close(fds[1]);
    return -ENOBUFS;
  }
  out->rd = fds[0];
  out->wr = fds[1];
  out->capacity = static_cast<size_t>(current);
  ++created_;
  return 0;
}

void PipePool::close_pipe(Pipe* p) {
  if (p->rd >= 0) ::close(p->rd);
  if (p->wr >= 0) ::close(p->wr);
  p->rd = p->wr = -1;
}

}  // namespace lb::core
