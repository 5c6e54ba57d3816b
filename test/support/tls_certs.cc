#include "test/support/tls_certs.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace lb::test {

namespace {

EVP_PKEY* generate(KeyType type) {
  EVP_PKEY* k = type == KeyType::rsa2048 ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
  if (!k) throw std::runtime_error("openssl: key generation failed");
  return k;
}

void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext || X509_add_ext(cert, ext, -1) != 1) throw std::runtime_error("openssl: extension " + value);
  X509_EXTENSION_free(ext);
}

X509* new_cert(EVP_PKEY* key, const std::string& cn, long not_before_s, long not_after_s) {
  static std::atomic<long> serial{1};
  X509* cert = X509_new();
  if (!cert) throw std::runtime_error("openssl: X509_new");
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert), not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert), not_after_s);
  X509_set_pubkey(cert, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  return cert;
}

std::string to_pem(X509* cert) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, cert);
  char* p;
  long n = BIO_get_mem_data(b, &p);
  std::string s(p, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

std::string to_pem(EVP_PKEY* key) {
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* p;
  long n = BIO_get_mem_data(b, &p);
  std::string s(p, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

bool is_ip(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

}  // namespace

TestCa::TestCa(const std::string& common_name, KeyType type) {
  key_ = generate(type);
  cert_ = new_cert(key_, common_name, -7200, 10 * 86400);
  X509_set_issuer_name(cert_, X509_get_subject_name(cert_));
  add_ext(cert_, cert_, NID_basic_constraints, "critical,CA:TRUE");
  add_ext(cert_, cert_, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(cert_, cert_, NID_subject_key_identifier, "hash");
  if (X509_sign(cert_, key_, EVP_sha256()) <= 0) throw std::runtime_error("openssl: CA signature");
}

TestCa::~TestCa() {
  X509_free(cert_);
  EVP_PKEY_free(key_);
}

std::string TestCa::cert_pem() const { return to_pem(cert_); }

Pem TestCa::issue(const std::vector<std::string>& names, KeyType type, long not_before_s,
                  long not_after_s) const {
  EVP_PKEY* key = generate(type);
  X509* cert = new_cert(key, names.empty() ? "lb test" : names.front(), not_before_s, not_after_s);
  X509_set_issuer_name(cert, X509_get_subject_name(cert_));
  add_ext(cert, cert_, NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert, cert_, NID_authority_key_identifier, "keyid:always");
  if (!names.empty()) {
    std::string san;
    for (const auto& n : names) san += (san.empty() ? "" : ",") + std::string(is_ip(n) ? "IP:" : "DNS:") + n;
    add_ext(cert, cert_, NID_subject_alt_name, san);
  }
  if (X509_sign(cert, key_, EVP_sha256()) <= 0) throw std::runtime_error("openssl: leaf signature");
  Pem pem{to_pem(cert) + to_pem(cert_), to_pem(key)};
  X509_free(cert);
  EVP_PKEY_free(key);
  return pem;
}

TlsFiles::TlsFiles(const std::string& ca_name) : ca_(ca_name) {
  ca_path_ = dir_.write_file("ca.pem", ca_.cert_pem());
}

CertFiles TlsFiles::issue(const std::string& file, const std::vector<std::string>& names, KeyType type,
                          long not_before_s, long not_after_s) const {
  Pem pem = ca_.issue(names, type, not_before_s, not_after_s);
  return {dir_.write_file(file + ".pem", pem.cert), dir_.write_file(file + ".key", pem.key)};
}

std::string TlsFiles::combined(const CertFiles& files, const std::string& file) const {
  std::ostringstream text;
  text << std::ifstream(files.cert).rdbuf() << std::ifstream(files.key).rdbuf();
  return dir_.write_file(file, text.str());
}

}  // namespace lb::test
