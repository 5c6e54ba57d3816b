// UvPtr: the one way lb owns a libuv handle (core, health and lb alike).
//
// libuv allows freeing a handle's memory only in (or after) its close
// callback. UvPtr<T> owns a handle made by make_uv(); resetting or destroying
// it clears `data` (so callbacks still queued for the handle, such as requests
// completing with UV_ECANCELED, see that their owner is gone) and calls
// uv_close; the memory is freed in the close callback. Most owners need
// nothing more: nothing of theirs is touched after the reset. An owner whose
// own lifetime waits for its handles' close callbacks (it frees itself after
// the last, never inside a read) closes them with close_then() instead.
// Ownership moves only as a UvPtr (TcpSession::start takes the accepted
// client's): the memory is a Node<T>, so it must never be freed as a plain T.
//
// Thread rules: a UvPtr is used (and reset) only on the thread running its loop.
#pragma once

#include <uv.h>

#include <memory>

namespace lb {

namespace uv_detail {

// The allocation behind a UvPtr: the handle first (so a pointer to the node
// is a pointer to the handle), then what close_then() asks for.
template <class T>
struct Node {
  T handle{};
  void (*on_closed)(void* owner) = nullptr;
  void* owner = nullptr;
};

}  // namespace uv_detail

template <class T>
struct UvCloser {
  void operator()(T* h) const {
    h->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(h), closed);
  }
  // The close callback: frees the node, then tells its owner (close_then).
  static void closed(uv_handle_t* h) {
    auto* node = reinterpret_cast<uv_detail::Node<T>*>(h);
    auto on_closed = node->on_closed;
    void* owner = node->owner;
    delete node;
    if (on_closed) on_closed(owner);
  }
};

template <class T>
using UvPtr = std::unique_ptr<T, UvCloser<T>>;

// Allocates and initialises a handle with `init(loop, handle, args...)`;
// returns null (and the libuv error in *err, when err is given) when init
// fails, in which case the handle was never registered with the loop and is
// simply deleted.
template <class T, class Init, class... Args>
UvPtr<T> make_uv(uv_loop_t* loop, void* data, int* err, Init init, Args... args) {
  auto* node = new uv_detail::Node<T>;
  int rc = init(loop, &node->handle, args...);
  if (rc != 0) {
    delete node;
    if (err) *err = rc;
    return UvPtr<T>();
  }
  node->handle.data = data;
  if (err) *err = 0;
  return UvPtr<T>(&node->handle);
}

// Closes `h` (when set) like a reset, and calls on_closed(owner) from its
// close callback, after its memory is freed. Returns whether it was set.
template <class T>
bool close_then(UvPtr<T>& h, void (*on_closed)(void* owner), void* owner) {
  if (!h) return false;
  auto* node = reinterpret_cast<uv_detail::Node<T>*>(h.get());
  node->on_closed = on_closed;
  node->owner = owner;
  h.reset();
  return true;
}

// close_then() for a TCP handle, with an abortive close when `reset`: the
// peer gets RST instead of FIN (uv_tcp_close_reset). libuv refuses that while
// a shutdown is pending; the handle then closes plainly.
inline bool close_then(UvPtr<uv_tcp_t>& h, bool reset, void (*on_closed)(void* owner), void* owner) {
  if (!reset) return close_then(h, on_closed, owner);
  if (!h) return false;
  auto* node = reinterpret_cast<uv_detail::Node<uv_tcp_t>*>(h.get());
  node->on_closed = on_closed;
  node->owner = owner;
  uv_tcp_t* tcp = h.release();
  tcp->data = nullptr;
  if (uv_tcp_close_reset(tcp, UvCloser<uv_tcp_t>::closed) != 0)
    uv_close(reinterpret_cast<uv_handle_t*>(tcp), UvCloser<uv_tcp_t>::closed);
  return true;
}

}  // namespace lb
