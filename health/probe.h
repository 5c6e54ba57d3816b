// Probe: one active health check of one backend, running on a libuv loop.
//
// A probe is started once and reports exactly once through its callback,
// `(bool pass, std::string reason)`, within the configured timeout (plus loop
// latency), always from a loop callback — never from inside start(). The
// types (tcp, http, tls, dns, udp) live in their own files; make_probe()
// picks one from conf::HealthCheck::type.
//
// Lifetime and threads: a Probe and all its handles belong to the thread
// running `loop`. cancel() or destroying the probe guarantees the callback
// never fires and closes every handle (the loop frees them afterwards, so the
// loop must run once more before uv_loop_close). The callback must not
// destroy the probe that is calling it: keep the finished probe and drop it
// later (the health checker replaces it when it starts the next one). After
// the callback has fired the probe holds no handle.
#pragma once

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "conf/config.h"
#include "core/uv_ptr.h"

namespace lb::health {

// Where and how to reach a backend for probing.
struct ProbeAddress {
  sockaddr_storage addr{};  // port in network order, already overridden
  socklen_t addr_len = 0;
  std::string host;  // backend address text: default HTTP Host, logs
};

// The backend's address with the check's `port` override applied (0 = keep).
ProbeAddress probe_address(const conf::Endpoint& backend, uint16_t port_override);

// Human-readable "1.2.3.4:80" / "[::1]:80" for reasons and logs.
std::string format_sockaddr(const sockaddr* sa);

class Probe {
 public:
  using Callback = std::function<void(bool pass, std::string reason)>;

  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;
  virtual ~Probe() = default;  // member UvPtrs close the handles

  // Begins the probe. Call once.
  void start();
  // The callback will never fire; every handle is closed. Idempotent.
  void cancel();
  // True once the result was reported or the probe was cancelled.
  bool done() const { return state_ == State::Done; }

 protected:
  Probe(uv_loop_t* loop, ProbeAddress address, std::chrono::milliseconds timeout, Callback cb);

  // Starts the type-specific I/O. On an immediate error call fail_later().
  virtual void begin() = 0;
  // Closes every handle of the derived probe (reset its UvPtrs).
  virtual void close_io() = 0;

  // Reports the result: closes every handle first, then calls the callback.
  // Only the first call counts. Callers must return right after it and touch
  // no member: the owner may reuse or drop the probe once it has the result.
  void finish(bool pass, std::string reason);
  // Reports a failure from the next loop iteration (keeps the callback out of
  // start() and out of libuv calls that failed synchronously).
  void fail_later(std::string reason);

  uv_loop_t* const loop_;
  const ProbeAddress address_;

 private:
  enum class State { Idle, Running, Done };
  static void on_timer(uv_timer_t* t);

  std::chrono::milliseconds timeout_;
  Callback cb_;
  UvPtr<uv_timer_t> timer_;
  State state_ = State::Idle;
  bool deferred_ = false;  // fail_later() armed the timer
  std::string deferred_reason_;
  bool last_look_ = false;  // the timeout passed: one more turn of the loop reads what came (on_timer)
};

// Everything the probes of one loop share.
struct ProbeEnv {
  uv_loop_t* loop = nullptr;
  SSL_CTX* tls = nullptr;  // client context for tls probes (see tls_probe.h)
  // [pool.tls]: the name sent (when check.tls_sni is empty) and, with
  // tls_verify, verified.
  const std::string* tls_name = nullptr;
  bool tls_verify = false;
};

// A started probe for `check.type`, or null for HealthType::None.
std::unique_ptr<Probe> make_probe(const ProbeEnv& env, const conf::HealthCheck& check,
                                  const ProbeAddress& address, Probe::Callback cb);

// "connection refused" style text for a libuv error code.
std::string uv_reason(int err);

}  // namespace lb::health
