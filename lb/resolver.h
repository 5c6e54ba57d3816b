// HostResolver: backend host names looked up without blocking the loop that
// answers /healthz and the watchdog.
//
// Each name is looked up (conf::resolve_host: getaddrinfo, or the test
// resolver) on a detached thread of its own; the answers come back to the
// loop through a uv_async_t, and a uv_timer_t bounds the wait: at the
// deadline every name still unanswered fails ("timed out"), and its late
// answer is dropped when it comes.
//
// Why not uv_getaddrinfo: it runs on libuv's thread pool, which libuv joins
// when the process exits, so a resolver that never answers would hold up
// lb's exit (and take one of the pool's four threads per name for as long as
// glibc keeps retrying). A detached thread is simply abandoned.
//
// Thread: start(), cancel(), the destructor and the callback all run on the
// loop's thread. One batch at a time.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "conf/load.h"

namespace lb::app {

class HostResolver {
 public:
  using Answers = std::map<std::string, conf::HostAnswer>;
  using Done = std::function<void(Answers)>;

  // A blocking lookup, as conf::resolve_host (the default; tests pass their own).
  using Lookup = std::string (*)(const std::string& host, sockaddr_storage& addr, socklen_t& len);

  explicit HostResolver(uv_loop_t* loop, Lookup lookup = conf::resolve_host) : loop_(loop), lookup_(lookup) {}
  ~HostResolver() { cancel(); }
  HostResolver(const HostResolver&) = delete;
  HostResolver& operator=(const HostResolver&) = delete;

  // Looks every name up at once; `done` runs once, on the loop, with one
  // answer per name (lookups past `deadline` as errors). A batch already
  // running is cancelled first.
  void start(const std::vector<std::string>& hosts, std::chrono::milliseconds deadline, Done done);
  // Forgets the running batch: its callback never runs. Idempotent.
  void cancel();
  bool busy() const { return batch_ != nullptr; }

 private:
  struct Batch;
  void finish();

  uv_loop_t* loop_;
  Lookup lookup_;
  std::shared_ptr<Batch> batch_;
};

}  // namespace lb::app
