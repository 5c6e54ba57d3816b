// LD_PRELOAD shim for end-to-end tests: SSL_new(3) fails (returns NULL, as
// it does when memory runs out), so every connection to a TLS-terminating
// listener fails to get its TLS session. lb must refuse each and log a
// throttled warning, not one line per connection.
struct ssl_st;
struct ssl_ctx_st;

extern "C" ssl_st* SSL_new(ssl_ctx_st* /*ctx*/) { return nullptr; }
