// LD_PRELOAD shim for end-to-end tests: every accept4(2)/accept(2) that
// returns a connection then sleeps LB_TEST_ACCEPT_DELAY_US microseconds
// (default 2000) before returning it. The kernel has already taken the
// connection off the listening socket's queue, so for that moment it belongs
// to a worker that has not counted it yet: the gap a drain (stop or upgrade)
// must not fall into. A loaded or instrumented (ThreadSanitizer) lb has such
// gaps by itself; the shim makes them wide enough to test.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

namespace {

useconds_t delay_us() {
  static const useconds_t d = [] {
    const char* v = std::getenv("LB_TEST_ACCEPT_DELAY_US");
    return static_cast<useconds_t>(v && *v ? std::strtoul(v, nullptr, 10) : 2000);
  }();
  return d;
}

using Accept4Fn = int (*)(int, sockaddr*, socklen_t*, int);
using AcceptFn = int (*)(int, sockaddr*, socklen_t*);

}  // namespace

extern "C" int accept4(int fd, sockaddr* addr, socklen_t* len, int flags) {
  static auto real = reinterpret_cast<Accept4Fn>(dlsym(RTLD_NEXT, "accept4"));
  int c = real(fd, addr, len, flags);
  if (c >= 0) ::usleep(delay_us());
  return c;
}

extern "C" int accept(int fd, sockaddr* addr, socklen_t* len) {
  static auto real = reinterpret_cast<AcceptFn>(dlsym(RTLD_NEXT, "accept"));
  int c = real(fd, addr, len);
  if (c >= 0) ::usleep(delay_us());
  return c;
}
