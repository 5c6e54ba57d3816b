// A network namespace of a test's own, for tests that need what loopback in
// the shared namespace cannot give (a DNS server on 127.0.0.1:53, say). Tests
// run as root.
//
// `ip netns exec NAME` bind-mounts /etc/netns/NAME/resolv.conf (when it
// exists) over /etc/resolv.conf for the program it runs, so lb started with
// exec_prefix() resolves through whatever the test serves in the namespace.
//
// Thread rules: create and destroy on the test's main thread; run_in() runs a
// function on a new thread that has entered the namespace (setns applies to
// one thread only), so the test's own thread never changes namespace.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace lb::test {

// Moves the calling thread into the network namespace at `path`
// (/run/netns/NAME, /proc/PID/fd/N, ...).
bool enter_netns(const std::string& path);
// Runs fn on a new thread inside that namespace and waits for it; false when
// the thread could not enter it (fn then does not run).
bool run_in_netns(const std::string& path, const std::function<void()>& fn);

class NetNamespace {
 public:
  // Creates the namespace (unique name per process) with `lo` up.
  NetNamespace();
  // Deletes the namespace and /etc/netns/NAME.
  ~NetNamespace();
  NetNamespace(const NetNamespace&) = delete;
  NetNamespace& operator=(const NetNamespace&) = delete;

  // False when the namespace could not be set up (error() says why).
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const std::string& name() const { return name_; }

  // Writes /etc/netns/NAME/resolv.conf.
  bool write_resolv_conf(const std::string& text);
  // `ip netns exec NAME`: put before a command to run it inside.
  std::vector<std::string> exec_prefix() const;
  // Runs fn on a thread inside the namespace and waits for it; false when
  // the thread could not enter it (fn then does not run).
  bool run_in(const std::function<void()>& fn) const;
  // Moves the calling thread into the namespace (for a thread of its own).
  bool enter() const;

 private:
  bool run_ip(const std::vector<std::string>& args);

  std::string name_;
  std::string ip_;  // path of the ip(8) program
  bool ok_ = false;
  bool created_ = false;
  std::string error_;
};

}  // namespace lb::test
