#include "health/health_checker.h"

#include <pthread.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "health/random.h"

namespace lb::health {

using std::chrono::milliseconds;

struct HealthChecker::State {
  HealthChecker* owner = nullptr;
  core::BackendPtr backend;
  conf::HealthCheck check;
  conf::Outlier outlier;
  ProbeAddress address;
  std::shared_ptr<const tls::ClientContext> tls;  // see Target
  std::string tls_name;
  Hysteresis hysteresis{1, 1};

  std::unique_ptr<Probe> probe;   // running, or finished until the next starts
  UvPtr<uv_timer_t> probe_timer;  // next probe
  UvPtr<uv_timer_t> ejection_timer;

  bool published = false;     // the sink has heard the first result
  bool published_up = false;  // what the sink last heard
  bool ejected = false;
  unsigned failures = 0;  // consecutive passive failures

  bool active() const { return check.type != conf::HealthType::None; }
  // A target's settings, for a new state or one kept across an update.
  void take_settings(Target& t) {
    check = std::move(t.check);
    outlier = t.outlier;
    tls = std::move(t.tls);
    tls_name = std::move(t.tls_name);
    address = probe_address(backend->address, check.port);
    hysteresis.set_thresholds(check.rise, check.fall);
  }
  // Without an active check a backend is up unless passive health says no.
  bool probe_known() const { return !active() || hysteresis.known(); }
  bool probe_up() const { return !active() || hysteresis.up(); }
};

namespace {

milliseconds with_jitter(milliseconds interval) {
  // Up to 10% later, so probes of many backends (and of several lb
  // instances) do not synchronise into bursts.
  auto extra = random_below_or_equal(static_cast<uint64_t>(interval.count()) / 10);
  return interval + milliseconds(extra);
}

uint64_t to_uv_ms(milliseconds d) { return d.count() > 0 ? static_cast<uint64_t>(d.count()) : 1; }

}  // namespace

HealthChecker::HealthChecker(HealthSink& sink) : sink_(sink) {}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::start() {
  std::lock_guard lk(mu_);
  if (thread_.joinable() || stop_result_) throw std::runtime_error("health checker: started twice");
  auto loop = std::make_unique<uv_loop_t>();
  int err = uv_loop_init(loop.get());
  if (err != 0) throw std::runtime_error(std::string("health checker: uv_loop_init: ") + uv_strerror(err));
  loop_ = std::move(loop);
  tls_ = make_probe_tls_context();
  wake_owner_ = make_uv<uv_async_t>(loop_.get(), this, &err, uv_async_init, on_wake);
  if (!tls_ || !wake_owner_) {
    std::string why = !tls_ ? std::string("cannot create the TLS client context")
                            : std::string("uv_async_init: ") + uv_strerror(err);
    tls_.reset();
    wake_owner_.reset();
    uv_run(loop_.get(), UV_RUN_DEFAULT);  // lets the async's close callback free it
    uv_loop_close(loop_.get());
    loop_.reset();
    throw std::runtime_error("health checker: " + why);
  }
  wake_ = wake_owner_.get();
  {
    std::lock_guard rlk(report_mu_);
    accept_reports_ = true;
  }
  running_ = true;
  stopped_ = false;
  // Targets handed over before start() are picked up on the first iteration.
  if (pending_targets_) uv_async_send(wake_);
  thread_ = std::thread([this] { run(); });
}

bool HealthChecker::stop() {
  {
    std::lock_guard lk(mu_);
    if (!thread_.joinable()) return stop_result_.value_or(true);
    stop_requested_ = true;
    if (running_) uv_async_send(wake_);
  }
  thread_.join();
  std::lock_guard lk(mu_);
  loop_.reset();
  return stop_result_.value_or(false);
}

void HealthChecker::set_targets(std::vector<Target> targets) {
  std::lock_guard lk(mu_);
  pending_targets_ = std::move(targets);
  ++requested_generation_;
  if (running_) uv_async_send(wake_);
}

void HealthChecker::report(const core::BackendPtr& backend, bool success) {
  if (!backend) return;
  std::lock_guard lk(report_mu_);
  if (!accept_reports_) return;
  bool first = reports_.empty();
  reports_.emplace_back(backend, success);
  // One wake-up per batch: the loop takes the whole vector at once.
  if (first) uv_async_send(wake_);
}

bool HealthChecker::wait_initial(milliseconds deadline) {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, deadline, [&] {
    return stopped_ || (applied_generation_ == requested_generation_ && awaiting_first_ == 0);
  });
  return !stopped_ && applied_generation_ == requested_generation_ && awaiting_first_ == 0;
}

void HealthChecker::run() {
  pthread_setname_np(pthread_self(), "lb-health");  // best effort, for top/gdb
  uv_loop_t* loop = loop_.get();
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) {
    // A handle leaked (a bug): close what is left so the loop can be closed,
    // and report the failure through stop(). The leaked memory stays leaked.
    uv_walk(
        loop,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
  }
  std::lock_guard lk(mu_);
  stop_result_ = rc == 0;
  stopped_ = true;
  cv_.notify_all();
}

void HealthChecker::on_wake(uv_async_t* a) {
  auto* self = static_cast<HealthChecker*>(a->data);
  if (!self) return;
  std::optional<std::vector<Target>> targets;
  uint64_t generation = 0;
  bool stop = false;
  {
    std::lock_guard lk(self->mu_);
    targets.swap(self->pending_targets_);
    generation = self->requested_generation_;
    stop = self->stop_requested_;
  }
  if (stop) return self->shutdown_loop();
  if (targets) self->apply_targets(std::move(*targets), generation);

  std::vector<std::pair<core::BackendPtr, bool>> batch = std::move(self->spare_reports_);
  batch.clear();
  {
    std::lock_guard lk(self->report_mu_);
    batch.swap(self->reports_);
  }
  for (auto& [backend, success] : batch) self->apply_report(backend, success);
  batch.clear();  // drops the BackendPtr copies, keeps the capacity
  self->spare_reports_ = std::move(batch);
}

void HealthChecker::shutdown_loop() {
  {
    std::lock_guard lk(report_mu_);
    accept_reports_ = false;
    reports_.clear();
  }
  spare_reports_.clear();
  {
    std::lock_guard lk(mu_);
    running_ = false;  // nobody signals wake_ from now on
    pending_targets_.reset();
  }
  states_.clear();  // cancels every probe, closes every timer
  wake_ = nullptr;
  wake_owner_.reset();
  tls_.reset();
  // uv_run returns once the close callbacks have run.
}

void HealthChecker::apply_targets(std::vector<Target> targets, uint64_t generation) {
  std::unordered_map<const core::Backend*, std::unique_ptr<State>> next;
  std::vector<State*> to_probe;
  std::vector<std::pair<State*, const char*>> to_publish;
  next.reserve(targets.size());

  for (auto& t : targets) {
    if (!t.backend) continue;
    const core::Backend* key = t.backend.get();
    if (next.count(key)) continue;  // listed twice: the first entry wins
    auto old = states_.find(key);
    if (old == states_.end()) {
      auto s = std::make_unique<State>();
      s->owner = this;
      s->backend = std::move(t.backend);
      s->take_settings(t);
      if (s->active())
        to_probe.push_back(s.get());
      else
        to_publish.emplace_back(s.get(), "no health check");
      next.emplace(key, std::move(s));
      continue;
    }

    // A backend we already know: keep its health state, take the new settings.
    std::unique_ptr<State> s = std::move(old->second);
    states_.erase(old);
    const bool was_active = s->active();
    const milliseconds old_interval = s->check.interval;
    s->take_settings(t);
    if (s->outlier.consecutive_failures == 0) s->failures = 0;
    if (was_active && !s->active()) {
      s->probe.reset();
      s->probe_timer.reset();
      to_publish.emplace_back(s.get(), "health check disabled");
    } else if (!was_active && s->active()) {
      // It was up (no check); rise/fall now apply from that state.
      s->hysteresis.reset_to(HealthState::Up);
      to_probe.push_back(s.get());
    } else if (s->active() && s->check.interval != old_interval && s->probe_timer &&
               uv_is_active(reinterpret_cast<uv_handle_t*>(s->probe_timer.get()))) {
      schedule_probe(*s, with_jitter(s->check.interval));
    }
    next.emplace(key, std::move(s));
  }

  // Backends no longer listed: destroying their state cancels the probes.
  states_.swap(next);
  next.clear();

  {
    std::lock_guard lk(mu_);
    applied_generation_ = generation;
    awaiting_first_ = 0;
    for (auto& [key, s] : states_)
      if (!s->published) ++awaiting_first_;
    if (awaiting_first_ == 0) cv_.notify_all();
  }

  for (auto& [s, reason] : to_publish) publish(*s, reason);
  for (State* s : to_probe) start_probe(*s);
}

void HealthChecker::start_probe(State& s) {
  ProbeEnv env{loop_.get(), tls_.get()};
  if (s.tls) {
    env.tls = s.tls->ctx();
    env.tls_name = &s.tls_name;
    env.tls_verify = s.tls->verify();
  }
  State* sp = &s;
  // Replacing the previous probe here (never from its own callback) is what
  // lets probes be reused safely: it has reported and holds no handle.
  s.probe = make_probe(env, s.check, s.address, [this, sp](bool pass, const std::string& reason) {
    on_probe_result(*sp, pass, reason);
  });
}

void HealthChecker::on_probe_result(State& s, bool pass, const std::string& reason) {
  (pass ? s.backend->checks_pass : s.backend->checks_fail).fetch_add(1, std::memory_order_relaxed);
  s.backend->record_check(pass, reason);
  s.hysteresis.observe(pass);
  publish(s, reason);
  schedule_probe(s, with_jitter(s.check.interval));
}

void HealthChecker::schedule_probe(State& s, milliseconds delay) {
  if (!s.probe_timer) {
    int err = 0;
    s.probe_timer = make_uv<uv_timer_t>(loop_.get(), &s, &err, uv_timer_init);
    if (!s.probe_timer) return;  // cannot happen: uv_timer_init does not fail
  }
  uv_update_time(loop_.get());  // the cached time may be a long iteration old
  uv_timer_start(s.probe_timer.get(), on_probe_timer, to_uv_ms(delay), 0);
}

void HealthChecker::on_probe_timer(uv_timer_t* t) {
  auto* s = static_cast<State*>(t->data);
  if (!s || !s->active()) return;
  s->owner->start_probe(*s);
}

void HealthChecker::apply_report(const core::BackendPtr& backend, bool success) {
  auto it = states_.find(backend.get());
  // The pointer compare alone could match a new Backend at a reused address;
  // the shared_ptr we hold keeps the reported one alive, so equal pointers
  // are the same object.
  if (it == states_.end() || it->second->backend != backend) return;
  State& s = *it->second;
  const unsigned threshold = s.outlier.consecutive_failures;
  if (success || threshold == 0) {
    s.failures = 0;
    return;
  }
  if (s.ejected || ++s.failures < threshold) return;
  s.failures = 0;
  s.ejected = true;
  if (!s.ejection_timer) {
    int err = 0;
    s.ejection_timer = make_uv<uv_timer_t>(loop_.get(), &s, &err, uv_timer_init);
  }
  uv_update_time(loop_.get());
  if (s.ejection_timer)
    uv_timer_start(s.ejection_timer.get(), on_ejection_timer, to_uv_ms(s.outlier.ejection_time), 0);
  publish(s, "ejected");
}

void HealthChecker::on_ejection_timer(uv_timer_t* t) {
  auto* s = static_cast<State*>(t->data);
  if (!s) return;
  s->ejected = false;
  s->failures = 0;
  // Back only if the active check (when there is one) says up; otherwise the
  // next probe transition to up publishes it.
  s->owner->publish(*s, "ejection ended");
}

void HealthChecker::publish(State& s, const std::string& reason) {
  if (!s.probe_known()) return;
  const bool up = s.probe_up() && !s.ejected;
  const bool first = !s.published;
  if (!first && up == s.published_up) return;
  s.published = true;
  s.published_up = up;
  static const std::string kEjected = "ejected";
  // A first result that passes while already ejected is reported as ejected.
  const std::string& why = (!up && s.ejected && s.probe_up()) ? kEjected : reason;
  sink_.on_health(*s.backend, up, why);
  if (first) first_result_done();
}

void HealthChecker::first_result_done() {
  std::lock_guard lk(mu_);
  if (awaiting_first_ > 0 && --awaiting_first_ == 0) cv_.notify_all();
}

}  // namespace lb::health
