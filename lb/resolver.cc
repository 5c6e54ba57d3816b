#include "lb/resolver.h"

#include <fmt/format.h>

#include <mutex>
#include <system_error>
#include <thread>

#include "core/uv_ptr.h"

namespace lb::app {

// Shared by the loop and the lookup threads; the threads hold it by
// shared_ptr, so it outlives whichever side finishes last.
struct HostResolver::Batch {
  std::mutex mu;
  Answers answers;         // under mu
  size_t left = 0;         // lookups not answered yet, under mu
  bool abandoned = false;  // under mu: from now on no thread touches `async`
  // Reset on the loop (finish or cancel) before the last reference can go
  // to a lookup thread, so they are never closed off the loop.
  UvPtr<uv_async_t> async;
  UvPtr<uv_timer_t> timer;
  HostResolver* owner = nullptr;
  Done done;
  std::chrono::milliseconds deadline{0};
};

void HostResolver::start(const std::vector<std::string>& hosts, std::chrono::milliseconds deadline,
                         Done done) {
  cancel();
  auto batch = std::make_shared<Batch>();
  batch->owner = this;
  batch->done = std::move(done);
  batch->deadline = deadline;
  batch->async = make_uv<uv_async_t>(loop_, batch.get(), nullptr, uv_async_init, [](uv_async_t* a) {
    if (auto* b = static_cast<Batch*>(a->data)) b->owner->finish();
  });
  batch->timer = make_uv<uv_timer_t>(loop_, batch.get(), nullptr, uv_timer_init);
  batch_ = batch;

  {
    std::lock_guard lk(batch->mu);
    for (const auto& h : hosts) batch->answers.try_emplace(h);
    batch->left = batch->answers.size();
  }
  for (const auto& [host, unused] : Answers(batch->answers)) {
    try {
      std::thread([batch, host = host, lookup = lookup_] {
        conf::HostAnswer a;
        a.error = lookup(host, a.addr, a.len);
        std::lock_guard lk(batch->mu);
        if (batch->abandoned) return;
        batch->answers[host] = std::move(a);
        if (--batch->left == 0) uv_async_send(batch->async.get());
      }).detach();
    } catch (const std::system_error& e) {
      std::lock_guard lk(batch->mu);
      batch->answers[host].error = fmt::format("cannot start a lookup thread: {}", e.what());
      --batch->left;
    }
  }
  bool all_done;
  {
    std::lock_guard lk(batch->mu);
    all_done = batch->left == 0;
  }
  if (all_done) {
    uv_async_send(batch->async.get());  // answer on the loop, never from inside start()
    return;
  }
  uv_timer_start(
      batch->timer.get(),
      [](uv_timer_t* t) {
        if (auto* b = static_cast<Batch*>(t->data)) b->owner->finish();
      },
      static_cast<uint64_t>(std::max<int64_t>(1, deadline.count())), 0);
}

void HostResolver::finish() {
  std::shared_ptr<Batch> batch = std::move(batch_);
  if (!batch) return;
  Answers answers;
  {
    std::lock_guard lk(batch->mu);
    batch->abandoned = true;
    for (auto& [host, a] : batch->answers)
      if (a.len == 0 && a.error.empty())
        a.error = fmt::format("no answer within {}ms", batch->deadline.count());
    answers = std::move(batch->answers);
  }
  batch->async.reset();
  batch->timer.reset();
  Done done = std::move(batch->done);
  done(std::move(answers));
}

void HostResolver::cancel() {
  std::shared_ptr<Batch> batch = std::move(batch_);
  if (!batch) return;
  {
    std::lock_guard lk(batch->mu);
    batch->abandoned = true;
  }
  batch->async.reset();
  batch->timer.reset();
}

}  // namespace lb::app
