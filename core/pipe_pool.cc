#include "core/pipe_pool.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace lb::core {

PipePool::PipePool(size_t pipe_size, size_t max_idle)
    : pipe_size_(pipe_size == 0 ? kDefaultPipeSize : pipe_size), max_idle_(max_idle) {
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
  int rc = create(out);
  if (rc == 0) ++in_use_;
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
  int current = fcntl(fds[1], F_GETPIPE_SZ);
  // Ask for the configured size; when the kernel refuses (above
  // fs.pipe-max-size, or over the user's pipe page quota), halve until it
  // accepts or we are back at its default, and remember what worked so later
  // pipes do not repeat the refused attempts.
  size_t want = pipe_size_;
  while (current > 0 && want != static_cast<size_t>(current)) {
    int got = fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(want));
    if (got > 0) {
      current = got;
      break;
    }
    if (want <= static_cast<size_t>(current)) break;  // even shrinking refused: keep the default
    want /= 2;
    if (want <= static_cast<size_t>(current)) {
      pipe_size_ = static_cast<size_t>(current);
      break;
    }
    pipe_size_ = want;
  }
  out->rd = fds[0];
  out->wr = fds[1];
  out->capacity = current > 0 ? static_cast<size_t>(current) : 4096;
  ++created_;
  return 0;
}

void PipePool::close_pipe(Pipe* p) {
  if (p->rd >= 0) ::close(p->rd);
  if (p->wr >= 0) ::close(p->wr);
  p->rd = p->wr = -1;
}

}  // namespace lb::core
