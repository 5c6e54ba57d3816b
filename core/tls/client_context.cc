#include "core/tls/client_context.h"

#include <openssl/err.h>

#include "core/tls/pem.h"

namespace lb::tls {

std::unique_ptr<ClientContext> ClientContext::load(const ClientSettings& settings, std::string* error) {
  if (settings.cert.empty() != settings.key.empty()) {
    *error = "a client certificate needs both cert and key";
    return nullptr;
  }
  std::unique_ptr<ClientContext> self(new ClientContext());
  self->verify_ = settings.verify;
  self->server_name_ = settings.server_name;
  ERR_clear_error();
  self->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!self->ctx_) {
    *error = "cannot create a TLS context: " + openssl_errors();
    return nullptr;
  }
  SSL_CTX* c = self->ctx_;
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
  if (settings.verify) {
    if (settings.ca_file.empty()) {
      if (SSL_CTX_set_default_verify_paths(c) != 1) {
        *error = "default CA paths: " + openssl_errors();
        return nullptr;
      }
    } else {
      std::string why;
      if (!readable(settings.ca_file, &why)) {
        *error = "ca_file " + why;
        return nullptr;
      }
      if (SSL_CTX_load_verify_file(c, settings.ca_file.c_str()) != 1) {
        *error = "ca_file " + settings.ca_file + ": no valid PEM certificate (" + openssl_errors() + ")";
        return nullptr;
      }
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);
  }
  if (!settings.cert.empty()) {
    X509Ptr leaf;
    ChainPtr chain;
    if (!read_chain(settings.cert, &leaf, &chain, error)) return nullptr;
    PkeyPtr key = read_key(settings.key, error);
    if (!key) return nullptr;
    if (SSL_CTX_use_certificate(c, leaf.get()) != 1 || SSL_CTX_set1_chain(c, chain.get()) != 1) {
      *error = settings.cert + ": certificate refused (" + openssl_errors() + ")";
      return nullptr;
    }
    if (SSL_CTX_use_PrivateKey(c, key.get()) != 1 || SSL_CTX_check_private_key(c) != 1) {
      ERR_clear_error();
      *error = settings.key + ": the key does not match the certificate " + settings.cert;
      return nullptr;
    }
  }
  if (!settings.alpn.empty()) {
    std::string wire;
    for (const auto& p : settings.alpn) {
      if (p.empty() || p.size() > 255) {
        *error = "alpn: protocol names are 1 to 255 bytes";
        return nullptr;
      }
      wire += static_cast<char>(p.size());
      wire += p;
    }
    if (SSL_CTX_set_alpn_protos(c, reinterpret_cast<const unsigned char*>(wire.data()),
                                static_cast<unsigned int>(wire.size())) != 0) {
      *error = "alpn: " + openssl_errors();
      return nullptr;
    }
  }
  return self;
}

ClientContext::~ClientContext() { SSL_CTX_free(ctx_); }

}  // namespace lb::tls
