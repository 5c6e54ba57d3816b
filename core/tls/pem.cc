#include "core/tls/pem.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <cerrno>
#include <cstring>

namespace lb::tls {

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

// A key file must never make OpenSSL prompt on the terminal for a passphrase.
int no_passphrase(char*, int, int, void*) { return 0; }

BioPtr open_file(const std::string& path, std::string* error) {
  errno = 0;
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) {
    int err = errno;
    ERR_clear_error();
    *error = path + ": cannot open: " + (err ? std::strerror(err) : "unknown error");
  }
  return bio;
}

}  // namespace

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

bool readable(const std::string& path, std::string* error) { return open_file(path, error) != nullptr; }

bool read_chain(const std::string& path, X509Ptr* leaf, ChainPtr* chain, std::string* error) {
  BioPtr bio = open_file(path, error);
  if (!bio) return false;
  ERR_clear_error();
  leaf->reset(PEM_read_bio_X509_AUX(bio.get(), nullptr, no_passphrase, nullptr));
  if (!*leaf) {
    *error = path + ": no PEM certificate (" + openssl_errors() + ")";
    return false;
  }
  chain->reset(sk_X509_new_null());
  if (!*chain) {
    *error = path + ": out of memory";
    return false;
  }
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr)) {
    if (sk_X509_push(chain->get(), x) <= 0) {
      X509_free(x);
      *error = path + ": out of memory";
      return false;
    }
  }
  unsigned long e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
    ERR_clear_error();  // the normal end of the file
    return true;
  }
  *error = path + ": invalid certificate in the chain (" + openssl_errors() + ")";
  return false;
}

PkeyPtr read_key(const std::string& path, std::string* error) {
  BioPtr bio = open_file(path, error);
  if (!bio) return nullptr;
  ERR_clear_error();
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!key) *error = path + ": no usable PEM private key (" + openssl_errors() + ")";
  return key;
}

}  // namespace lb::tls
