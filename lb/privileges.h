// Dropping root after the listening sockets are bound ([global] user).
//
// Thread rules: call on the main thread, preferably before other threads
// start. glibc applies setuid/setgid/setgroups to every thread of the
// process, but the kept CAP_NET_BIND_SERVICE (see below) is a per-thread
// attribute: only the calling thread, and threads it creates afterwards,
// keep it; threads already running lose every capability. lb binds
// listeners on the main thread, so that is the thread that needs it.
#pragma once

#include <string>

namespace lb::app {

// geteuid() == 0.
bool running_as_root();

// Becomes `user`: looks the user up (getpwnam_r), then libcap-ng's
// capng_change_id sets the supplementary groups to the user's (initgroups),
// the group to the user's primary group and finally the user -- in that
// order, since each step needs the privilege the next one gives up. Real, effective and saved ids
// all change, and the drop is verified: the ids are checked and setuid(0)
// must fail.
//
// When not running as root: succeeds without doing anything if `user` is
// already the current user (e.g. systemd started lb with User=lb and the
// configuration also says user = "lb"), fails otherwise.
// A `user` whose uid is 0 is a no-op as well.
//
// keep_net_bind_service: when the process holds CAP_NET_BIND_SERVICE, keep
// just that one capability across the switch, so a reload can still bind a
// new listener on a port below 1024. Everything else (CAP_SETUID included)
// is dropped, so root stays out of reach. Under systemd, prefer User= with
// AmbientCapabilities=CAP_NET_BIND_SERVICE (dist/systemd/lb.service), which
// never runs lb as root at all.
//
// On failure returns false with a one-line message naming the user in
// *error (if non-null). A failure after setgid/setgroups leaves the process
// half-dropped: the caller must exit rather than carry on.
bool drop_privileges(const std::string& user, std::string* error, bool keep_net_bind_service = true);

}  // namespace lb::app
