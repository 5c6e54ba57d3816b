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

}  // namespace lb::test
