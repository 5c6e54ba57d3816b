// PipePool: a worker's reusable kernel pipes for splice(2) relaying.
//
// splice() moves bytes between two sockets only through a pipe, and creating
// one costs two fds plus a pipe2() and an fcntl(). A relay holds a pipe only
// while bytes are actually in flight in one direction, so a worker needs about
// as many pipes as it has *busy* directions at once, not as many as it has
// connections: idle connections hold none. The pool keeps up to `max_idle`
// empty pipes between uses; a pipe that still holds bytes is never pooled
// (the next user would receive someone else's data) and is closed instead.
//
// Pipes are created non-blocking and close-on-exec and enlarged with
// F_SETPIPE_SZ to `pipe_size` (256 KiB by default: the session's high-water
// mark, so one pipe can carry a whole backpressure window). The kernel may
// refuse that size (fs.pipe-max-size, or, for an unprivileged lb, the user's
// pipe page quota fs.pipe-user-pages-soft, past which new pipes get 8 KiB);
// the pool then halves the request, but never below `min_size` (64 KiB: a
// smaller pipe makes splice slower than copying). When not even that can be
// had, acquire() fails with -ENOBUFS (the connection stays on, or goes back
// to, the copy path) and keeps failing at once, without syscalls, until
// retry(): the worker calls it every second, so the pool asks for the full
// size again after a burst instead of shrinking for good. Each Pipe records
// the capacity it really got.
//
// Thread: one worker loop; not thread-safe, no locks. Ownership: the pool owns
// its idle pipes and closes them in its destructor; a pipe handed out by
// acquire() belongs to the caller until it is given to release().
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lb::core {

struct Pipe {
  int rd = -1;          // read end
  int wr = -1;          // write end
  size_t capacity = 0;  // bytes the pipe holds (F_GETPIPE_SZ)
  bool valid() const { return rd >= 0; }
};

class PipePool {
 public:
  static constexpr size_t kDefaultPipeSize = 256 * 1024;
  static constexpr size_t kDefaultMaxIdle = 64;
  static constexpr size_t kDefaultMinSize = 64 * 1024;

  explicit PipePool(size_t pipe_size = kDefaultPipeSize, size_t max_idle = kDefaultMaxIdle,
                    size_t min_size = kDefaultMinSize);
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  // Hands out an empty pipe of at least min_size: a pooled one if any, else
  // a new one. Returns 0, or -errno (EMFILE, ENFILE, ENOMEM; ENOBUFS: the
  // kernel grants no pipe of min_size, or an earlier failure since the last
  // retry()) with *out left invalid.
  int acquire(Pipe* out);
  // Whether acquire() may succeed now (a pooled pipe, or no failure since
  // the last retry()).
  bool can_acquire() const { return !idle_.empty() || !failing_; }
  // Forgets earlier failures and smaller sizes: the next new pipe is asked
  // for at the configured size again.
  void retry() {
    failing_ = false;
    pipe_size_ = configured_size_;
  }
  // Takes `p` back; `pending` is how many bytes the caller left in it. Only
  // an empty pipe goes back to the pool (while there is room); anything else
  // is closed. *p is reset to invalid. Releasing an invalid Pipe is a no-op.
  void release(Pipe* p, size_t pending);

  size_t in_use() const { return in_use_; }     // handed out, not yet released
  size_t idle() const { return idle_.size(); }  // pooled, ready for reuse
  size_t created() const { return created_; }   // pipes ever created
  size_t max_idle() const { return max_idle_; }
  // What the pool asks the kernel for now (may have fallen back below the
  // configured size, never below min_size, until retry()).
  size_t pipe_size() const { return pipe_size_; }
  uint64_t acquires() const { return acquires_; }  // acquire() calls ever

  // Closes every idle pipe. The worker calls it when the pool went unused
  // for a while, so a quiet lb holds no pipes (and its fd count returns to
  // where it was before the traffic).
  void trim();

 private:
  int create(Pipe* out);
  static void close_pipe(Pipe* p);

  const size_t configured_size_;
  size_t pipe_size_;
  const size_t min_size_;
  bool failing_ = false;  // acquire() fails at once until retry()
  const size_t max_idle_;
  std::vector<Pipe> idle_;  // capacity reserved up front: release never allocates
  size_t in_use_ = 0;
  size_t created_ = 0;
  uint64_t acquires_ = 0;
};

}  // namespace lb::core
