#include "lb/privileges.h"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace lb::app {

namespace {

bool fail(std::string* error, std::string msg) {
  if (error) *error = std::move(msg);
  return false;
}

std::string quoted(const std::string& user) { return "user \"" + user + "\""; }

// Raw capget/capset: libcap is not a dependency, and these two calls with
// the version-3 (64-bit) layout are all lb needs.
bool cap_in_permitted(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  return (data[cap / 32].permitted & (1u << (cap % 32))) != 0;
}

// Permitted = effective = {cap}; inheritable empty (lb execs nothing).
bool keep_only_cap(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
  data[cap / 32].permitted = data[cap / 32].effective = 1u << (cap % 32);
  return ::syscall(SYS_capset, &header, data) == 0;
}

}  // namespace

bool running_as_root() { return ::geteuid() == 0; }

bool drop_privileges(const std::string& user, std::string* error, bool keep_net_bind_service) {
  if (user.empty()) return fail(error, "user name is empty");

  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  int rc;
  while ((rc = ::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found)) == ERANGE &&
         buf.size() < (1u << 20)) {
    buf.resize(buf.size() * 2);
  }
  if (rc != 0) return fail(error, "cannot look up " + quoted(user) + ": " + std::strerror(rc));
  if (!found) return fail(error, quoted(user) + " not found");
  const uid_t uid = pw.pw_uid;
  const gid_t gid = pw.pw_gid;

  if (::geteuid() != 0) {
    if (uid == ::geteuid() && uid == ::getuid()) return true;  // already that user
    return fail(error, "cannot switch to " + quoted(user) + " (uid " + std::to_string(uid) +
                           "): not running as root (uid " + std::to_string(::geteuid()) + ")");
  }
  if (uid == 0) return true;  // root to root: nothing to drop

  const bool keep_cap = keep_net_bind_service && cap_in_permitted(CAP_NET_BIND_SERVICE);
  // Without KEEPCAPS, setuid() away from 0 clears the permitted set, and a
  // cleared set cannot be refilled.
  if (keep_cap && ::prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) != 0) {
    return fail(error, "dropping to " + quoted(user) + ": PR_SET_KEEPCAPS: " + std::strerror(errno));
  }
  // Groups first: setgroups and setgid need root, which setuid gives up.
  if (::initgroups(pw.pw_name, gid) != 0) {
    return fail(error, "dropping to " + quoted(user) + ": initgroups: " + std::strerror(errno));
  }
  if (::setgid(gid) != 0) {
    return fail(error, "dropping to " + quoted(user) + ": setgid(" + std::to_string(gid) +
                           "): " + std::strerror(errno));
  }
  if (::setuid(uid) != 0) {
    return fail(error, "dropping to " + quoted(user) + ": setuid(" + std::to_string(uid) +
                           "): " + std::strerror(errno));
  }
  if (keep_cap) {
    ::prctl(PR_SET_KEEPCAPS, 0L, 0L, 0L, 0L);  // only mattered for the setuid above
    if (!keep_only_cap(CAP_NET_BIND_SERVICE)) {
      return fail(error, "dropping to " + quoted(user) +
                             ": keeping CAP_NET_BIND_SERVICE: " + std::strerror(errno));
    }
  }

  // Verify rather than trust: a silently partial drop is worse than none.
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (::getresuid(&ru, &eu, &su) != 0 || ru != uid || eu != uid || su != uid ||
      ::getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid) {
    return fail(error, "dropping to " + quoted(user) + ": ids did not change as requested");
  }
  if (::setuid(0) == 0) {
    return fail(error, "dropping to " + quoted(user) + ": setuid(0) still succeeds afterwards");
  }
  if (gid != 0 && ::setgid(0) == 0) {
    return fail(error, "dropping to " + quoted(user) + ": setgid(0) still succeeds afterwards");
  }
  return true;
}

}  // namespace lb::app
