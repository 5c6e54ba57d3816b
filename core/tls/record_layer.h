// TLS 1.3 records (RFC 8446 section 5) sealed and opened by lb itself once a
// handshake is over, from the two traffic secrets the handshake derived.
//
// Why: after the handshake an OpenSSL `SSL` still holds about 14 KB per
// connection (the object itself 7.6 KB, the session, a copy of the
// certificate set, the key-exchange keys, the handshake digest), all of it
// idle on a connection that only moves records. With this layer a terminated
// connection keeps two AEAD contexts and its secrets (about 2 KB) and the
// `SSL` is freed. The same keys are what kernel TLS would need.
//
// Scope: the three TLS 1.3 AEAD suites OpenSSL enables by default
// (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256).
// Everything else (TLS 1.2, TLS_AES_128_CCM_*) stays in OpenSSL.
//
// This class is the cryptography only: nonces, additional data, the inner
// content type and its zero padding, key updates. The protocol (alerts,
// KeyUpdate messages, close_notify) is TlsStream's.
//
// Thread rules: one thread at a time; not copyable.
#pragma once

#include <openssl/evp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace lb::tls {

class RecordLayer {
 public:
  enum class Suite : uint16_t {
    aes_128_gcm_sha256 = 0x1301,
    aes_256_gcm_sha384 = 0x1302,
    chacha20_poly1305_sha256 = 0x1303,
  };

  static constexpr size_t kHeader = 5;
  static constexpr size_t kTag = 16;
  static constexpr size_t kMaxPlaintext = 16384;
  // RFC 8446 5.2: a record's ciphertext is at most 2^14 + 256 bytes.
  static constexpr size_t kMaxCiphertext = kMaxPlaintext + 256;
  static constexpr size_t kMaxSecret = 48;  // SHA-384

  // The suite of an IANA cipher suite number, if this layer can carry it.
  static std::optional<Suite> suite_for(uint16_t protocol_id);
  // The hash length of the suite's secrets (32 or 48).
  static size_t secret_length(Suite suite);

  // Keys from the traffic secrets; `read_seq`/`write_seq` are the records
  // each direction has already carried under them. Null when the secrets
  // have the wrong length or OpenSSL cannot make the cipher contexts.
  static std::unique_ptr<RecordLayer> create(Suite suite, std::string_view read_secret,
                                             std::string_view write_secret, uint64_t read_seq,
                                             uint64_t write_seq);
  ~RecordLayer();
  RecordLayer(const RecordLayer&) = delete;
  RecordLayer& operator=(const RecordLayer&) = delete;

  // Appends one record carrying `len` (<= kMaxPlaintext) bytes of content
  // type `type` to `out`. False only when OpenSSL fails.
  bool seal(uint8_t type, const char* data, size_t len, std::string& out);

  enum class Opened { ok, bad_record_mac, unexpected_message, record_overflow };
  // Opens, in place, the whole record `rec` (header included, `len` bytes,
  // its ciphertext length already checked against kMaxCiphertext). On ok the
  // content is rec[kHeader, kHeader + *content_len) and *type its type.
  Opened open(char* rec, size_t len, uint8_t* type, size_t* content_len);

  // KeyUpdate (RFC 8446 7.2): the next generation of one direction's keys,
  // its sequence number back to 0.
  bool update_read_key();
  bool update_write_key();

  // Whether `rec` (a whole record) was sealed by `secret` as record number
  // `seq`: checks which of OpenSSL's own records were under the traffic keys.
  static bool sealed_by(Suite suite, std::string_view secret, uint64_t seq, std::string_view rec);

  uint64_t read_seq() const { return read_.seq; }
  uint64_t write_seq() const { return write_.seq; }

 private:
  struct Direction {
    EVP_CIPHER_CTX* ctx = nullptr;
    std::array<unsigned char, kMaxSecret> secret{};
    std::array<unsigned char, 12> iv{};
    uint64_t seq = 0;
  };

  explicit RecordLayer(Suite suite) : suite_(suite) {}
  // Derives key and IV from d.secret and (re)keys d.ctx for `enc`.
  bool key(Direction& d, int enc);
  bool next_generation(Direction& d, int enc);
  void nonce(const Direction& d, unsigned char out[12]) const;

  Suite suite_;
  Direction read_, write_;
};

}  // namespace lb::tls
