#include <catch2/catch.hpp>

#include <uv.h>

#include <vector>

#include "core/timeout_wheel.h"

using lb::core::TimeoutNode;
using lb::core::TimeoutWheel;

namespace {

struct Item {
  TimeoutNode node;
  int id = 0;
  uint64_t fired_at = 0;
  static std::vector<int>* order;
  static uv_loop_t* loop;
};
std::vector<int>* Item::order = nullptr;
uv_loop_t* Item::loop = nullptr;

void fire(TimeoutNode* n) {
  auto* it = reinterpret_cast<Item*>(n);
  it->fired_at = uv_now(Item::loop);
  Item::order->push_back(it->id);
}

}  // namespace

TEST_CASE("timeouts fire in deadline order across durations", "[timeout]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  std::vector<int> order;
  Item::order = &order;
  Item::loop = &loop;
  {
    TimeoutWheel wheel(&loop);
    Item a, b, c;
    a.id = 1;
    b.id = 2;
    c.id = 3;
    for (Item* i : {&a, &b, &c}) i->node.fire = fire;
    uint64_t start = uv_now(&loop);
    wheel.arm(&a.node, 80);
    wheel.arm(&b.node, 20);
    wheel.arm(&c.node, 50);
    uv_run(&loop, UV_RUN_DEFAULT);  // the timer is not repeating: returns when all fired
    CHECK(order == std::vector<int>{2, 3, 1});
    CHECK(b.fired_at - start >= 20);
    CHECK(a.fired_at - start >= 80);
    CHECK_FALSE(a.node.armed());
    wheel.close();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("touch postpones and disarm cancels", "[timeout]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  std::vector<int> order;
  Item::order = &order;
  Item::loop = &loop;
  {
    TimeoutWheel wheel(&loop);
    Item a, b, c;
    a.id = 1;
    b.id = 2;
    c.id = 3;
    for (Item* i : {&a, &b, &c}) i->node.fire = fire;
    uint64_t start = uv_now(&loop);
    wheel.arm(&a.node, 60);
    wheel.arm(&b.node, 60);
    wheel.arm(&c.node, 60);
    wheel.disarm(&c.node);
    // Keep `a` alive by touching it from a repeating timer for ~150ms.
    struct Toucher {
      uv_timer_t t;
      TimeoutWheel* w;
      Item* item;
      int left;
    } toucher{{}, &wheel, &a, 6};
    uv_timer_init(&loop, &toucher.t);
    toucher.t.data = &toucher;
    uv_timer_start(
        &toucher.t,
        [](uv_timer_t* t) {
          auto* tt = static_cast<Toucher*>(t->data);
          tt->w->touch(&tt->item->node);
          if (--tt->left == 0) uv_close(reinterpret_cast<uv_handle_t*>(t), nullptr);
        },
        25, 25);
    uv_run(&loop, UV_RUN_DEFAULT);
    REQUIRE(order == std::vector<int>{2, 1});
    CHECK(a.fired_at - start >= 150 + 60 - 30);  // last touch ~150ms, then 60ms (minus slack)
    wheel.close();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0);
}

TEST_CASE("a node re-armed from its own expiry fires again", "[timeout]") {
  uv_loop_t loop;
  REQUIRE(uv_loop_init(&loop) == 0);
  {
    TimeoutWheel wheel(&loop);
    struct Again {
      TimeoutNode node;
      TimeoutWheel* w;
      int fired = 0;
    } x;
    x.w = &wheel;
    x.node.fire = [](TimeoutNode* n) {
      auto* a = reinterpret_cast<Again*>(n);
      if (++a->fired < 3) a->w->arm(n, 10);
    };
    wheel.arm(&x.node, 10);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x.fired == 3);
    wheel.close();
    uv_run(&loop, UV_RUN_DEFAULT);
  }
  CHECK(uv_loop_close(&loop) == 0);
}
