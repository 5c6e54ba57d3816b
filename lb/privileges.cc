#include "lb/privileges.h"

#include <cap-ng.h>
#include <pwd.h>
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

  // libcap-ng does the order that matters: keep capabilities across the
  // switch (PR_SET_KEEPCAPS), groups first (initgroups, setresgid: they need
  // root, which setresuid gives up), then the user, then apply the kept set
  // (permitted = effective = CAP_NET_BIND_SERVICE or nothing; inheritable and
  // bounding set cleared, so nothing lb could ever exec regains more).
  capng_get_caps_process();
  const bool keep_cap = keep_net_bind_service && capng_have_capability(CAPNG_PERMITTED, CAP_NET_BIND_SERVICE);
  capng_clear(CAPNG_SELECT_BOTH);
  if (keep_cap && capng_update(CAPNG_ADD, static_cast<capng_type_t>(CAPNG_EFFECTIVE | CAPNG_PERMITTED),
                               CAP_NET_BIND_SERVICE) != 0) {
    return fail(error, "dropping to " + quoted(user) + ": cannot keep CAP_NET_BIND_SERVICE");
  }
  if (int crc = capng_change_id(static_cast<int>(uid), static_cast<int>(gid),
                                static_cast<capng_flags_t>(CAPNG_INIT_SUPP_GRP | CAPNG_CLEAR_BOUNDING));
      crc != 0) {
    // capng_change_id returns a negative step number; errno says why.
    return fail(error, "dropping to " + quoted(user) + " (uid " + std::to_string(uid) + ", gid " +
                           std::to_string(gid) + "): capng_change_id step " + std::to_string(-crc) + ": " +
                           std::strerror(errno));
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
