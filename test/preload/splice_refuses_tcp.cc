// LD_PRELOAD shim for end-to-end tests: splice(2) fails with EINVAL whenever
// either end is a TCP socket, as it does on a kernel or socket type without
// splice support; anything else (lb's start-up probe on an AF_UNIX
// socketpair) goes to the real splice. So lb believes splice works, switches
// a bulk stream to its splice relay and only then finds out, which is the
// case its fallback to the copy path has to handle.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>

namespace {

bool is_tcp(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &v, &len) != 0) return false;  // not a socket
  return v == IPPROTO_TCP;
}

using SpliceFn = ssize_t (*)(int, loff_t*, int, loff_t*, size_t, unsigned);

}  // namespace

extern "C" ssize_t splice(int fd_in, loff_t* off_in, int fd_out, loff_t* off_out, size_t len,
                          unsigned flags) {
  if (is_tcp(fd_in) || is_tcp(fd_out)) {
    errno = EINVAL;
    return -1;
  }
  static const auto real = reinterpret_cast<SpliceFn>(dlsym(RTLD_NEXT, "splice"));
  if (!real) {
    errno = ENOSYS;
    return -1;
  }
  return real(fd_in, off_in, fd_out, off_out, len, flags);
}
