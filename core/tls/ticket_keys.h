// Session-ticket keys shared by every worker, so that a client resuming with
// a ticket may land on any worker (SO_REUSEPORT spreads connections at will).
//
// One TicketKeyStore serves any number of SSL_CTX (one per worker or one per
// listener, it does not matter): install() points a context's ticket callback
// at it. The current key encrypts new tickets; the previous ones still decrypt
// (and ask OpenSSL to renew the ticket) until they fall out of the window.
// Keys rotate by themselves once `rotation_interval` has passed since the
// current one was made; rotate() forces it.
//
// Thread rules: every method is thread-safe (one mutex, held for a key copy,
// never across OpenSSL calls); the ticket callback runs on whichever worker
// thread drives the handshake. Key material never leaves the process.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>

namespace lb::tls {

class TicketKeyStore {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;

  struct Key {
    std::array<unsigned char, 16> name{};      // sent in the clear, selects the key
    std::array<unsigned char, 32> aes_key{};   // AES-256-CBC
    std::array<unsigned char, 32> hmac_key{};  // HMAC-SHA256
    std::chrono::steady_clock::time_point created{};
  };

  // `keep` = how many keys decrypt (the current one included). With hourly
  // rotation and keep = 3, a ticket stays usable for at least two hours,
  // the session lifetime install() sets.
  explicit TicketKeyStore(std::chrono::seconds rotation_interval = std::chrono::hours(1), size_t keep = 3,
                          Clock clock = {});
  TicketKeyStore(const TicketKeyStore&) = delete;
  TicketKeyStore& operator=(const TicketKeyStore&) = delete;

  // Makes `ctx` issue and accept tickets with this store's keys. The store
  // must outlive the context. Returns false when OpenSSL refuses.
  bool install(SSL_CTX* ctx);

  // A new current key now; the oldest falls out past `keep`.
  void rotate();
  // The key new tickets are encrypted with (rotating first if it is due).
  Key current();
  // The key named `name`, and whether it is the current one; nullopt when
  // it has rotated out (the client then gets a full handshake).
  std::optional<std::pair<Key, bool>> find(const unsigned char* name);

 private:
  static int ticket_callback(SSL* ssl, unsigned char* key_name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
                             EVP_MAC_CTX* mac, int enc);
  std::chrono::steady_clock::time_point now() const;
  void rotate_locked();

  const std::chrono::seconds interval_;
  const size_t keep_;
  const Clock clock_;
  mutable std::mutex mu_;
  std::deque<Key> keys_;  // front = current
};

}  // namespace lb::tls
