#include "core/tls/record_layer.h"

#include <cstring>

namespace lb::tls {

namespace {

// Fetched once per process (thread-safe static initialisation) and never
// freed: an explicit fetch per connection would cost a method-store lookup.
const EVP_CIPHER* cipher_of(RecordLayer::Suite suite) {
  static EVP_CIPHER* const aes128 = EVP_CIPHER_fetch(nullptr, "AES-128-GCM", nullptr);
  static EVP_CIPHER* const aes256 = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  static EVP_CIPHER* const chacha = EVP_CIPHER_fetch(nullptr, "ChaCha20-Poly1305", nullptr);
  switch (suite) {
    case RecordLayer::Suite::aes_128_gcm_sha256:
      return aes128;
    case RecordLayer::Suite::aes_256_gcm_sha384:
      return aes256;
    case RecordLayer::Suite::chacha20_poly1305_sha256:
      return chacha;
  }
  return nullptr;
}

const EVP_MD* digest_of(RecordLayer::Suite suite) {
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  static EVP_MD* const sha384 = EVP_MD_fetch(nullptr, "SHA384", nullptr);
  return suite == RecordLayer::Suite::aes_256_gcm_sha384 ? sha384 : sha256;
}

size_t key_length(RecordLayer::Suite suite) {
  return suite == RecordLayer::Suite::aes_128_gcm_sha256 ? 16 : 32;
}

// HMAC (RFC 2104) on a digest fetched once, `key` no longer than a block (a
// traffic secret always is). Written out because the one-shot HMAC() and
// EVP_MAC look the digest up by name on every call, which cost four times
// the hashing itself; a handshake derives six keys here.
bool hmac(EVP_MD_CTX* c, const EVP_MD* md, const unsigned char* key, size_t key_len, const unsigned char* msg,
          size_t msg_len, unsigned char* out) {
  if (!md) return false;
  const auto block = static_cast<size_t>(EVP_MD_get_block_size(md));
  unsigned char pad[128];
  unsigned char inner[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (key_len > block || block > sizeof pad) return false;
  std::memset(pad, 0x36, block);
  for (size_t i = 0; i < key_len; ++i) pad[i] ^= key[i];
  bool ok = EVP_DigestInit_ex2(c, md, nullptr) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
            EVP_DigestUpdate(c, msg, msg_len) == 1 && EVP_DigestFinal_ex(c, inner, &n) == 1;
  std::memset(pad, 0x5c, block);
  for (size_t i = 0; i < key_len; ++i) pad[i] ^= key[i];
  ok = ok && EVP_DigestInit_ex2(c, md, nullptr) == 1 && EVP_DigestUpdate(c, pad, block) == 1 &&
       EVP_DigestUpdate(c, inner, n) == 1 && EVP_DigestFinal_ex(c, out, &n) == 1;
  OPENSSL_cleanse(pad, sizeof pad);
  OPENSSL_cleanse(inner, sizeof inner);
  return ok;
}

// HKDF-Expand-Label(secret, label, "", len) of RFC 8446 7.1. Every length lb
// asks for is at most the hash length, so HKDF-Expand is its first block:
// HMAC(secret, HkdfLabel || 0x01).
bool expand_label(EVP_MD_CTX* c, RecordLayer::Suite suite, const unsigned char* secret, size_t secret_len,
                  std::string_view label, unsigned char* out, size_t len) {
  unsigned char info[2 + 1 + 6 + 32 + 1 + 1];
  size_t n = 0;
  info[n++] = static_cast<unsigned char>(len >> 8);
  info[n++] = static_cast<unsigned char>(len);
  info[n++] = static_cast<unsigned char>(6 + label.size());
  std::memcpy(info + n, "tls13 ", 6);
  n += 6;
  std::memcpy(info + n, label.data(), label.size());
  n += label.size();
  info[n++] = 0;  // empty context
  info[n++] = 1;  // HKDF-Expand's block counter
  unsigned char block[EVP_MAX_MD_SIZE];
  const bool ok = hmac(c, digest_of(suite), secret, secret_len, info, n, block);
  if (ok) std::memcpy(out, block, len);
  OPENSSL_cleanse(block, sizeof block);
  return ok;
}

void put_header(unsigned char* h, uint8_t type, size_t len) {
  h[0] = type;
  h[1] = 0x03;  // legacy_record_version 0x0303
  h[2] = 0x03;
  h[3] = static_cast<unsigned char>(len >> 8);
  h[4] = static_cast<unsigned char>(len);
}

}  // namespace

std::optional<RecordLayer::Suite> RecordLayer::suite_for(uint16_t protocol_id) {
  switch (protocol_id) {
    case 0x1301:
      return Suite::aes_128_gcm_sha256;
    case 0x1302:
      return Suite::aes_256_gcm_sha384;
    case 0x1303:
      return Suite::chacha20_poly1305_sha256;
    default:
      return std::nullopt;
  }
}

size_t RecordLayer::secret_length(Suite suite) { return suite == Suite::aes_256_gcm_sha384 ? 48 : 32; }

std::unique_ptr<RecordLayer> RecordLayer::create(Suite suite, std::string_view read_secret,
                                                 std::string_view write_secret, uint64_t read_seq,
                                                 uint64_t write_seq) {
  const size_t len = secret_length(suite);
  if (read_secret.size() != len || write_secret.size() != len || !cipher_of(suite)) return nullptr;
  std::unique_ptr<RecordLayer> r(new RecordLayer(suite));
  std::memcpy(r->read_.secret.data(), read_secret.data(), len);
  std::memcpy(r->write_.secret.data(), write_secret.data(), len);
  if (!r->key(r->read_, 0) || !r->key(r->write_, 1)) return nullptr;
  r->read_.seq = read_seq;
  r->write_.seq = write_seq;
  return r;
}

RecordLayer::~RecordLayer() {
  EVP_CIPHER_CTX_free(read_.ctx);
  EVP_CIPHER_CTX_free(write_.ctx);
  OPENSSL_cleanse(read_.secret.data(), read_.secret.size());
  OPENSSL_cleanse(write_.secret.data(), write_.secret.size());
}

bool RecordLayer::key(Direction& d, int enc) {
  unsigned char k[32];
  const size_t slen = secret_length(suite_);
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  bool ok = md && expand_label(md, suite_, d.secret.data(), slen, "key", k, key_length(suite_)) &&
            expand_label(md, suite_, d.secret.data(), slen, "iv", d.iv.data(), d.iv.size());
  EVP_MD_CTX_free(md);
  if (ok && !d.ctx) ok = (d.ctx = EVP_CIPHER_CTX_new()) != nullptr;
  // The IV is set per record (the nonce); the key schedule stays in the context.
  ok = ok && EVP_CipherInit_ex2(d.ctx, cipher_of(suite_), k, nullptr, enc, nullptr) == 1;
  OPENSSL_cleanse(k, sizeof k);
  d.seq = 0;
  return ok;
}

bool RecordLayer::next_generation(Direction& d, int enc) {
  const size_t slen = secret_length(suite_);
  unsigned char next[kMaxSecret];
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  const bool ok = md && expand_label(md, suite_, d.secret.data(), slen, "traffic upd", next, slen);
  EVP_MD_CTX_free(md);
  if (!ok) return false;
  std::memcpy(d.secret.data(), next, slen);
  OPENSSL_cleanse(next, sizeof next);
  return key(d, enc);
}

bool RecordLayer::update_read_key() { return next_generation(read_, 0); }
bool RecordLayer::update_write_key() { return next_generation(write_, 1); }

// RFC 8446 5.3: the 64-bit record number, big-endian and left-padded to the
// IV's length, XORed with the IV.
void RecordLayer::nonce(const Direction& d, unsigned char out[12]) const {
  std::memcpy(out, d.iv.data(), 12);
  for (int i = 0; i < 8; ++i) out[11 - i] ^= static_cast<unsigned char>(d.seq >> (8 * i));
}

bool RecordLayer::seal(uint8_t type, const char* data, size_t len, std::string& out) {
  if (len > kMaxPlaintext || write_.seq == UINT64_MAX) return false;
  const size_t body = len + 1 + kTag;  // content, inner type, tag (no padding)
  const size_t at = out.size();
  out.resize(at + kHeader + body);
  auto* rec = reinterpret_cast<unsigned char*>(out.data() + at);
  put_header(rec, 23, body);  // opaque_type application_data
  unsigned char iv[12];
  nonce(write_, iv);
  int n = 0, m = 0, t = 0;
  unsigned char* p = rec + kHeader;
  bool ok = EVP_CipherInit_ex2(write_.ctx, nullptr, nullptr, iv, 1, nullptr) == 1 &&
            EVP_CipherUpdate(write_.ctx, nullptr, &n, rec, kHeader) == 1 &&
            EVP_CipherUpdate(write_.ctx, p, &n, reinterpret_cast<const unsigned char*>(data),
                             static_cast<int>(len)) == 1 &&
            static_cast<size_t>(n) == len && EVP_CipherUpdate(write_.ctx, p + len, &m, &type, 1) == 1 &&
            EVP_CipherFinal_ex(write_.ctx, p + len + 1, &t) == 1 &&
            EVP_CIPHER_CTX_ctrl(write_.ctx, EVP_CTRL_AEAD_GET_TAG, kTag, p + len + 1) == 1;
  if (!ok) {
    out.resize(at);
    return false;
  }
  ++write_.seq;
  return true;
}

RecordLayer::Opened RecordLayer::open(char* rec, size_t len, uint8_t* type, size_t* content_len) {
  auto* r = reinterpret_cast<unsigned char*>(rec);
  if (len < kHeader + 1 + kTag) return Opened::bad_record_mac;  // cannot even hold a tag
  if (read_.seq == UINT64_MAX) return Opened::bad_record_mac;
  const size_t clen = len - kHeader - kTag;
  unsigned char iv[12];
  nonce(read_, iv);
  int n = 0, t = 0;
  unsigned char* p = r + kHeader;
  bool ok = EVP_CipherInit_ex2(read_.ctx, nullptr, nullptr, iv, 0, nullptr) == 1 &&
            EVP_CipherUpdate(read_.ctx, nullptr, &n, r, kHeader) == 1 &&
            EVP_CipherUpdate(read_.ctx, p, &n, p, static_cast<int>(clen)) == 1 &&
            EVP_CIPHER_CTX_ctrl(read_.ctx, EVP_CTRL_AEAD_SET_TAG, kTag, p + clen) == 1 &&
            EVP_CipherFinal_ex(read_.ctx, p + n, &t) == 1;
  if (!ok) return Opened::bad_record_mac;
  ++read_.seq;
  // The inner content type is the last non-zero byte; zeros after it are padding.
  size_t i = clen;
  while (i > 0 && p[i - 1] == 0) --i;
  if (i == 0) return Opened::unexpected_message;
  *type = p[i - 1];
  *content_len = i - 1;
  if (*content_len > kMaxPlaintext) return Opened::record_overflow;
  return Opened::ok;
}

bool RecordLayer::sealed_by(Suite suite, std::string_view secret, uint64_t seq, std::string_view rec) {
  if (rec.size() < kHeader || rec.size() > kHeader + kMaxCiphertext) return false;
  if (secret.size() != secret_length(suite) || !cipher_of(suite)) return false;
  // Only the opening direction is keyed.
  RecordLayer r(suite);
  std::memcpy(r.read_.secret.data(), secret.data(), secret.size());
  if (!r.key(r.read_, 0)) return false;
  r.read_.seq = seq;
  std::string copy(rec);
  uint8_t type = 0;
  size_t n = 0;
  return r.open(copy.data(), copy.size(), &type, &n) == Opened::ok;
}

}  // namespace lb::tls
