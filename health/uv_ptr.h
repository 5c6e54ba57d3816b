// Owning pointers for libuv handles used by the health module.
//
// libuv allows freeing a handle's memory only in (or after) its close
// callback. UvPtr<T> owns a heap-allocated, initialised handle; resetting or
// destroying it clears `data` (so callbacks still queued for the handle, such
// as requests completing with UV_ECANCELED, see that their owner is gone) and
// calls uv_close; the memory is freed in the close callback.
//
// Thread rules: a UvPtr is used only on the thread running its loop.
#pragma once

#include <uv.h>

#include <memory>

namespace lb::health {

template <class T>
struct UvCloser {
  void operator()(T* h) const {
    h->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(h),
             [](uv_handle_t* closed) { delete reinterpret_cast<T*>(closed); });
  }
};

template <class T>
using UvPtr = std::unique_ptr<T, UvCloser<T>>;

// Allocates and initialises a handle with `init(loop, handle, args...)`;
// returns null (and the libuv error in *err) when init fails, in which case
// the handle was never registered with the loop and is simply deleted.
template <class T, class Init, class... Args>
UvPtr<T> make_uv(uv_loop_t* loop, void* data, int* err, Init init, Args... args) {
  T* h = new T{};
  int rc = init(loop, h, args...);
  if (rc != 0) {
    delete h;
    if (err) *err = rc;
    return UvPtr<T>();
  }
  h->data = data;
  if (err) *err = 0;
  return UvPtr<T>(h);
}

}  // namespace lb::health
