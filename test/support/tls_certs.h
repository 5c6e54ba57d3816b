// Certificates made by the test at run time (no key material in the tree):
// a CA, and leaves it signs with the names, key type and validity asked for.
//
// Thread rules: a TestCa is immutable after construction; issue() may be
// called from any thread.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <string>
#include <vector>

#include "test/support/temp_dir.h"

namespace lb::test {

enum class KeyType { rsa2048, ecdsa_p256 };

struct Pem {
  std::string cert;  // leaf then chain
  std::string key;
};

class TestCa {
 public:
  explicit TestCa(const std::string& common_name = "lb test CA", KeyType type = KeyType::ecdsa_p256);
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  std::string cert_pem() const;
  // A leaf with these subjectAltNames ("1.2.3.4" becomes an IP name), valid
  // from now + not_before_s until now + not_after_s (both may be negative).
  // The PEM certificate is the leaf followed by this CA (its chain).
  Pem issue(const std::vector<std::string>& names, KeyType type, long not_before_s = -3600,
            long not_after_s = 86400) const;

 private:
  EVP_PKEY* key_ = nullptr;
  X509* cert_ = nullptr;
};

// A TestCa and the files of the certificates it issues, in a private
// directory: what TLS end-to-end tests hand to lb and to their peers.
struct CertFiles {
  std::string cert;  // leaf then chain
  std::string key;
};

class TlsFiles {
 public:
  explicit TlsFiles(const std::string& ca_name = "lb test CA");
  const TempDir& dir() const { return dir_; }
  const TestCa& ca() const { return ca_; }
  const std::string& ca_path() const { return ca_path_; }
  // Issues a leaf (see TestCa::issue) and writes DIR/FILE.pem and DIR/FILE.key.
  CertFiles issue(const std::string& file, const std::vector<std::string>& names,
                  KeyType type = KeyType::ecdsa_p256, long not_before_s = -3600,
                  long not_after_s = 86400) const;
  // DIR/FILE holding the certificate, then the key (HAProxy's `crt`).
  std::string combined(const CertFiles& files, const std::string& file) const;

 private:
  TempDir dir_;
  TestCa ca_;
  std::string ca_path_;
};

}  // namespace lb::test
