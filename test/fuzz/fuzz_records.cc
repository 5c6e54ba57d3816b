// libFuzzer target: lb's own TLS 1.3 records after a handshake
// (core/tls/record_layer.h, the post-handshake protocol in TlsStream).
//
// Each input is a script run against a server TlsStream that has just
// finished a real TLS 1.3 handshake with an OpenSSL client and taken the
// records over. The harness knows the client's traffic secret (from the
// client's key log), so it can write protected records OpenSSL would never
// send: any inner content type, padding, split or bogus KeyUpdates, alerts;
// and also raw bytes, the end of the transport, and server writes that the
// real client must read back.
//
// Byte 0 picks the suite (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305); then
// operations, each a byte and its arguments:
//   0 len data         application data record
//   1 type len data    a protected record of any inner type (padding when the
//                      data ends in a type then zeros and `type` is 0)
//   2 len data         raw bytes, unprotected
//   3                  the harness's own key update (after it sent one)
//   4 len              the server writes len bytes; the client must read them
//   5                  the transport ends
// Checked besides "no crash, leak or UB":
//   - until raw bytes or a key update desynchronise the harness, the
//     plaintext the server delivers is exactly the application data of the
//     records sent, in order (the oracle mirrors RFC 8446's inner type rule);
//   - once the server reports an error it delivers nothing more and refuses
//     to write; after close_notify it delivers nothing more;
//   - everything the server writes is whole records, and the real client
//     reads the server's writes back intact while the server has not failed.
//
// Thread rules: libFuzzer calls LLVMFuzzerTestOneInput on one thread.
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/tls/record_layer.h"
#include "core/tls/tls_stream.h"

namespace {

#define FUZZ_CHECK(cond)                                                                                \
  do {                                                                                                  \
    if (!(cond)) {                                                                                      \
      std::fprintf(stderr, "fuzz_records: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                                     \
    }                                                                                                   \
  } while (0)

using lb::tls::RecordLayer;
using lb::tls::TlsStream;
using Status = TlsStream::Status;

std::string g_client_secret;

void client_key_log(const SSL* ssl, const char* line) {
  std::string l(line);
  if (SSL_is_server(ssl) || l.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) != 0) return;
  std::string hex = l.substr(l.rfind(' ') + 1);
  g_client_secret.clear();
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    g_client_secret += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
}

// A P-256 key and a self-signed certificate, made once.
struct Contexts {
  SSL_CTX* server = SSL_CTX_new(TLS_server_method());
  SSL_CTX* client = SSL_CTX_new(TLS_client_method());
  Contexts() {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("fuzz"), -1,
                               -1, 0);
    X509_set_issuer_name(cert, name);
    X509_sign(cert, key, EVP_sha256());
    FUZZ_CHECK(SSL_CTX_use_certificate(server, cert) == 1 && SSL_CTX_use_PrivateKey(server, key) == 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    SSL_CTX_set_num_tickets(server, 1);
    lb::tls::take_records_after_handshake(server);
    SSL_CTX_set_keylog_callback(client, client_key_log);
  }
};

// The input, read from the front; zeros once it is used up.
struct Input {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::string bytes(size_t len) {
    len = len < n ? len : n;
    std::string s(reinterpret_cast<const char*>(p), len);
    p += len;
    n -= len;
    return s;
  }
  size_t length() { return (size_t{byte()} << 8 | byte()) % (RecordLayer::kMaxPlaintext + 2); }
};

// What a record of inner type `type` carrying `data` delivers as application
// data under RFC 8446 5.4: the content type is the last non-zero byte.
bool delivers(uint8_t type, const std::string& data, std::string* content) {
  std::string inner = data + static_cast<char>(type);
  size_t i = inner.size();
  while (i > 0 && inner[i - 1] == 0) --i;
  if (i == 0 || inner[i - 1] != 23) return false;
  *content = inner.substr(0, i - 1);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Contexts ctx;
  static const char* const kSuites[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                        "TLS_CHACHA20_POLY1305_SHA256"};
  Input in{data, size};
  std::string error;
  auto server = TlsStream::server(ctx.server, &error);
  auto client = TlsStream::client(ctx.client, "fuzz", false, &error);
  FUZZ_CHECK(server && client);
  FUZZ_CHECK(SSL_set_ciphersuites(client->ssl(), kSuites[in.byte() % 3]) == 1);
  for (int i = 0; i < 8 && !(server->handshake_done() && client->handshake_done()); ++i) {
    client->handshake();
    server->handshake();
    std::string c = client->take_output();
    server->feed(c.data(), c.size());
    std::string s = server->take_output();
    client->feed(s.data(), s.size());
  }
  FUZZ_CHECK(server->handshake_done() && client->handshake_done() && server->own_records());
  auto suite = RecordLayer::suite_for(SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(client->ssl())));
  FUZZ_CHECK(suite);
  auto forger = RecordLayer::create(*suite, g_client_secret, g_client_secret, 0, 0);
  FUZZ_CHECK(forger);
  server->set_output_limit(SIZE_MAX);

  std::string expected, got;
  bool in_sync = true, failed = false, closed = false;
  std::string client_expects, client_got;
  char buf[4096];
  for (int ops = 0; in.n > 0 && ops < 64; ++ops) {
    const uint8_t op = in.byte() % 6;
    std::string fed;
    if (op == 0 || op == 1) {
      const uint8_t type = op == 0 ? 23 : in.byte();
      std::string content = in.bytes(in.length());
      if (content.size() > RecordLayer::kMaxPlaintext) content.resize(RecordLayer::kMaxPlaintext);
      FUZZ_CHECK(forger->seal(type, content.data(), content.size(), fed));
      std::string app;
      if (in_sync && !failed && !closed && delivers(type, content, &app)) expected += app;
    } else if (op == 2) {
      fed = in.bytes(in.length());
      in_sync = false;
    } else if (op == 3) {
      FUZZ_CHECK(forger->update_write_key());
      in_sync = false;  // whether the server updated too depends on what was sent
    } else if (op == 4) {
      std::string w(in.length(), 'S');
      size_t written = 0;
      Status st = server->write(w.data(), w.size(), &written);
      if (failed) FUZZ_CHECK(st == Status::error && written == 0);
      if (st == Status::ok) {
        FUZZ_CHECK(written == w.size());
        if (!server->shutdown_sent()) client_expects += w;
      }
    } else {
      server->feed_eof();
    }
    if (!fed.empty()) server->feed(fed.data(), fed.size());
    size_t n = 0;
    Status st;
    while ((st = server->read(buf, sizeof buf, &n)) == Status::ok) {
      FUZZ_CHECK(n > 0 && !failed && !closed);
      got.append(buf, n);
    }
    if (st == Status::error) failed = true;
    if (st == Status::closed) closed = true;
    if (in_sync) FUZZ_CHECK(got == expected.substr(0, got.size()));
    // The server's records, whole, to the real client.
    std::string out = server->take_output();
    for (size_t at = 0; at < out.size();) {
      FUZZ_CHECK(out.size() - at >= RecordLayer::kHeader);
      const auto* h = reinterpret_cast<const unsigned char*>(out.data() + at);
      const size_t len = size_t{h[3]} << 8 | h[4];
      FUZZ_CHECK(h[0] == 23 && h[1] == 3 && h[2] == 3 && len <= RecordLayer::kMaxCiphertext);
      at += RecordLayer::kHeader + len;
      FUZZ_CHECK(at <= out.size());
    }
    client->feed(out.data(), out.size());
    while (client->read(buf, sizeof buf, &n) == Status::ok) client_got.append(buf, n);
    if (!failed) FUZZ_CHECK(client_got == client_expects.substr(0, client_got.size()));
  }
  if (in_sync && !failed && !closed && server->input_pending() == 0) FUZZ_CHECK(got == expected);
  if (!failed) FUZZ_CHECK(client_got == client_expects);
  return 0;
}
