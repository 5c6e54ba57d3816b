// LD_PRELOAD shim for end-to-end tests: the first uv_loop_close(3) called on
// a thread other than the process's first one (lb's first worker to end: the
// workers are joined before the health thread stops) closes the loop as
// usual but reports UV_EBUSY, as it does when a handle was left open. lb must
// then log the leak and exit 1, so that every test that stops lb with
// `terminate() == 0` catches a handle leaked in a worker.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>

struct uv_loop_s;

namespace {

using LoopCloseFn = int (*)(uv_loop_s*);
std::atomic<bool> reported{false};
constexpr int kUvEbusy = -16;  // UV_EBUSY on Linux

}  // namespace

extern "C" int uv_loop_close(uv_loop_s* loop) {
  static auto real = reinterpret_cast<LoopCloseFn>(dlsym(RTLD_NEXT, "uv_loop_close"));
  const int rc = real(loop);
  const bool main_thread = syscall(SYS_gettid) == getpid();
  if (rc == 0 && !main_thread && !reported.exchange(true)) return kUvEbusy;
  return rc;
}
