// Reading PEM files for TLS contexts, with errors that name the file.
//
// Thread rules: free functions, no shared state (OpenSSL's error queue is
// per thread).
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

namespace lb::tls {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct ChainFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_pop_free(s, X509_free); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using ChainPtr = std::unique_ptr<STACK_OF(X509), ChainFree>;

// The leaf and the chain after it. Every PEM block must parse and there must
// be at least one; otherwise false and `*error` names the file.
bool read_chain(const std::string& path, X509Ptr* leaf, ChainPtr* chain, std::string* error);
// A PEM private key (never prompts for a passphrase: an encrypted key fails).
PkeyPtr read_key(const std::string& path, std::string* error);
// Can the file be opened for reading? Otherwise `*error` says why.
bool readable(const std::string& path, std::string* error);

// OpenSSL's error queue of this thread as one line ("" when empty); clears it.
std::string openssl_errors();

}  // namespace lb::tls
