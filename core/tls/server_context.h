// The server side of TLS termination: an SSL_CTX (one per certificate,
// identical otherwise) built from plain settings, independent of conf/.
//
// The first certificate is the default; the servername callback switches a
// handshake to the first certificate whose subjectAltNames match the client's
// SNI (exact, or "*.suffix" one label deep, case-insensitive). RSA and ECDSA
// keys, chains, TLS 1.2/1.3, the TLS 1.2 cipher list, ALPN by server
// preference, optional client certificates and session tickets from a
// TicketKeyStore shared with other contexts.
//
// Thread rules: load() runs on any thread (the control thread on start and on
// SIGHUP); the result is immutable afterwards and its SSL_CTX may be used by
// SSL objects on every worker at once (OpenSSL makes SSL_CTX use thread-safe).
// Keep the ServerContext alive while any SSL made from it lives: SSL objects
// hold references to the SSL_CTX, not to the callbacks' data here.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tls/ticket_keys.h"

namespace lb::tls {

struct CertificateFiles {
  std::string cert;  // PEM: leaf, then its chain
  std::string key;   // PEM private key (RSA or ECDSA)
};

struct ServerSettings {
  std::vector<CertificateFiles> certificates;  // at least one; the first is the default
  int min_version = TLS1_2_VERSION;            // TLS1_2_VERSION | TLS1_3_VERSION
  std::string ciphers;                         // TLS 1.2 list, OpenSSL syntax; empty = kDefaultCiphers
  std::vector<std::string> alpn;               // by preference; empty = no ALPN
  std::string client_ca;                       // PEM bundle; non-empty = client certificates required
  bool session_tickets = true;
};

// ECDHE key exchange with AEAD ciphers only (AES-GCM, ChaCha20-Poly1305).
inline constexpr const char* kDefaultCiphers = "ECDHE+AESGCM:ECDHE+CHACHA20";

// What lb reports about one certificate.
struct CertificateInfo {
  std::string path;
  std::string first_name;          // first DNS subjectAltName, else the subject CN
  std::vector<std::string> names;  // DNS subjectAltNames, lower case (the CN when there are none)
  int64_t not_after = 0;           // Unix time
  bool ecdsa = false;
};

// Does `name` (a host name) match `pattern` (a name, or "*." + suffix
// matching exactly one more label)? Case-insensitive.
bool name_matches(std::string_view pattern, std::string_view name);

struct CheckFinding {
  bool error;  // false = warning
  std::string message;
};

class ServerContext {
 public:
  // Reads every file in `settings`. Any unreadable or invalid file, a key
  // that does not match its certificate, an unknown cipher list: nullptr and
  // `*error` names the file or setting. `tickets` may be null when
  // session_tickets is false; it must outlive the context.
  static std::unique_ptr<ServerContext> load(const ServerSettings& settings,
                                             std::shared_ptr<TicketKeyStore> tickets, std::string* error);
  ~ServerContext();
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  // The context SSL_new takes (the default certificate's).
  SSL_CTX* ctx() const { return contexts_.front(); }
  const std::vector<CertificateInfo>& certificates() const { return info_; }
  const ServerSettings& settings() const { return settings_; }

  // For `lb --check`: expired certificates (errors), and certificates that
  // match none of `server_names` (warnings; none when it is empty).
  std::vector<CheckFinding> check(const std::vector<std::string>& server_names, int64_t now_unix) const;

  // Index of the certificate a handshake for `sni` uses (0 = default).
  size_t certificate_for(std::string_view sni) const;

 private:
  ServerContext() = default;
  static int on_servername(SSL* ssl, int* alert, void* arg);
  static int on_alpn(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                     unsigned int inlen, void* arg);

  ServerSettings settings_;
  std::shared_ptr<TicketKeyStore> tickets_;
  std::vector<SSL_CTX*> contexts_;  // one per certificate, owned
  std::vector<CertificateInfo> info_;
};

}  // namespace lb::tls
