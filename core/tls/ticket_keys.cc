#include "core/tls/ticket_keys.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstring>

namespace lb::tls {

namespace {

// The SSL_CTX ex_data slot that points at the store (one slot for the process).
int store_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Two hours: a ticket minted just before a rotation is still accepted by the
// previous key for a full interval, and by the one before for another.
constexpr long kSessionLifetimeSeconds = 2 * 3600;

}  // namespace

TicketKeyStore::TicketKeyStore(std::chrono::seconds rotation_interval, size_t keep, Clock clock)
    : interval_(rotation_interval), keep_(keep < 1 ? 1 : keep), clock_(std::move(clock)) {
  std::lock_guard lk(mu_);
  rotate_locked();
}

std::chrono::steady_clock::time_point TicketKeyStore::now() const {
  return clock_ ? clock_() : std::chrono::steady_clock::now();
}

bool TicketKeyStore::install(SSL_CTX* ctx) {
  if (store_index() < 0 || SSL_CTX_set_ex_data(ctx, store_index(), this) != 1) return false;
  SSL_CTX_set_timeout(ctx, kSessionLifetimeSeconds);
  return SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, &TicketKeyStore::ticket_callback) == 1;
}

void TicketKeyStore::rotate() {
  std::lock_guard lk(mu_);
  rotate_locked();
}

void TicketKeyStore::rotate_locked() {
  Key k;
  // Without fresh randomness keep the keys we have: tickets stay safe, they
  // just do not rotate this time.
  if (RAND_bytes(k.name.data(), static_cast<int>(k.name.size())) != 1 ||
      RAND_priv_bytes(k.aes_key.data(), static_cast<int>(k.aes_key.size())) != 1 ||
      RAND_priv_bytes(k.hmac_key.data(), static_cast<int>(k.hmac_key.size())) != 1)
    return;
  k.created = now();
  keys_.push_front(k);
  while (keys_.size() > keep_) keys_.pop_back();
}

TicketKeyStore::Key TicketKeyStore::current() {
  std::lock_guard lk(mu_);
  if (keys_.empty() || now() - keys_.front().created >= interval_) rotate_locked();
  return keys_.empty() ? Key{} : keys_.front();
}

std::optional<std::pair<TicketKeyStore::Key, bool>> TicketKeyStore::find(const unsigned char* name) {
  std::lock_guard lk(mu_);
  if (!keys_.empty() && now() - keys_.front().created >= interval_) rotate_locked();
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (std::memcmp(keys_[i].name.data(), name, keys_[i].name.size()) == 0) {
      return std::make_pair(keys_[i], i == 0);
    }
  }
  return std::nullopt;
}

// OpenSSL's contract (SSL_CTX_set_tlsext_ticket_key_evp_cb(3)): on encrypt,
// fill the name and IV and key both contexts, return 1 (0 = issue no ticket);
// on decrypt, return 0 for an unknown key (full handshake), 1 to accept, 2 to
// accept and issue a fresh ticket under the current key.
int TicketKeyStore::ticket_callback(SSL* ssl, unsigned char* key_name, unsigned char* iv,
                                    EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int enc) {
  // After the servername callback switched certificates this is the
  // certificate's context: every context of a listener holds the slot.
  auto* self = static_cast<TicketKeyStore*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), store_index()));
  if (!self) return 0;
  const EVP_CIPHER* aes = EVP_aes_256_cbc();
  auto key_mac = [&](Key& k) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac_key.data(), k.hmac_key.size()),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
        OSSL_PARAM_construct_end()};
    return EVP_MAC_CTX_set_params(mac, params) == 1;
  };
  if (enc) {
    Key k = self->current();
    if (k.created == std::chrono::steady_clock::time_point{}) return 0;
    std::memcpy(key_name, k.name.data(), k.name.size());
    if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(aes)) != 1) return 0;
    if (EVP_EncryptInit_ex(cipher, aes, nullptr, k.aes_key.data(), iv) != 1 || !key_mac(k)) return -1;
    return 1;
  }
  auto found = self->find(key_name);
  if (!found) return 0;
  Key& k = found->first;
  if (!key_mac(k) || EVP_DecryptInit_ex(cipher, aes, nullptr, k.aes_key.data(), iv) != 1) return -1;
  return found->second ? 1 : 2;
}

}  // namespace lb::tls
