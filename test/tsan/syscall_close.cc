// Linked into every target of a ThreadSanitizer build (LB_TSAN), nowhere else.
//
// libuv closes descriptors with syscall(SYS_close, fd) rather than close(fd)
// (so that close is not a cancellation point). ThreadSanitizer intercepts
// close() but not syscall(), so it never learns that libuv closed a
// descriptor: when the kernel hands the same number to another thread (a
// worker accepting, dup()ing a socket for splice, the health thread opening a
// probe), ThreadSanitizer reports a data race on "file descriptor N" between
// two unrelated sockets. That is a false positive, and it fails CI at random
// under load (seen in the 2000-client backpressure test).
//
// This definition of syscall() interposes the C library's for the whole
// process (libuv.so calls it through its PLT), tells ThreadSanitizer about a
// close through its syscall hooks, and forwards every call unchanged.
#include <dlfcn.h>
#include <sys/syscall.h>

#include <cstdarg>

// ThreadSanitizer's runtime exports these (declared in LLVM's
// <sanitizer/linux_syscall_hooks.h>, which g++ does not ship).
extern "C" void __sanitizer_syscall_pre_impl_close(long fd);
extern "C" void __sanitizer_syscall_post_impl_close(long res, long fd);

extern "C" long syscall(long number, ...) {  // NOLINT: must match the C library's declaration
  // Like the C library's own syscall(), take six argument registers whatever
  // the call passed; the kernel ignores the ones a call does not use.
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (long& x : a) x = va_arg(ap, long);
  va_end(ap);
  using Syscall = long (*)(long, ...);
  static const auto real = reinterpret_cast<Syscall>(dlsym(RTLD_NEXT, "syscall"));
  if (number == SYS_close) __sanitizer_syscall_pre_impl_close(a[0]);
  const long rc = real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
  if (number == SYS_close) __sanitizer_syscall_post_impl_close(rc, a[0]);
  return rc;
}
