// The client side of re-encryption ([pool.tls]): an SSL_CTX for lb's
// connections to backends, built from plain settings independent of conf/.
//
// Thread rules: as ServerContext (load anywhere, then immutable and shared
// by every worker).
#pragma once

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

namespace lb::tls {

struct ClientSettings {
  bool verify = true;     // chain against ca_file, name against the server name
  std::string ca_file;    // PEM bundle; empty = OpenSSL's default paths
  std::string cert, key;  // optional client certificate (mutual TLS): both or neither
  std::vector<std::string> alpn;
  // The server name policy of [pool.tls] sni, kept for the sessions:
  // "" = the backend's host, "$client" = the client's SNI, else this name
  // (see backend_server_name in core/tls/settings.h).
  std::string server_name;
};

class ClientContext {
 public:
  // Reads every file; any failure: nullptr and `*error` names the file.
  static std::unique_ptr<ClientContext> load(const ClientSettings& settings, std::string* error);
  ~ClientContext();
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;

  SSL_CTX* ctx() const { return ctx_; }
  bool verify() const { return verify_; }
  const std::string& server_name() const { return server_name_; }

 private:
  ClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verify_ = true;
  std::string server_name_;
};

}  // namespace lb::tls
