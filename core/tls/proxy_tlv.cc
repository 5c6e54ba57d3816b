#include "core/tls/proxy_tlv.h"

namespace lb::tls {

namespace {

void put_tlv(std::string& out, uint8_t type, std::string_view value) {
  out += static_cast<char>(type);
  out += static_cast<char>((value.size() >> 8) & 0xff);
  out += static_cast<char>(value.size() & 0xff);
  out.append(value);
}

}  // namespace

std::string proxy_v2_tls_tlvs(const TlsFacts& facts) {
  std::string out;
  if (!facts.alpn.empty()) put_tlv(out, kPp2TypeAlpn, facts.alpn);
  uint8_t client = kPp2ClientSsl;
  if (facts.cert_presented)
    client |= facts.resumed ? kPp2ClientCertSess : (kPp2ClientCertConn | kPp2ClientCertSess);
  std::string ssl;
  ssl += static_cast<char>(client);
  // verify: zero only when a certificate was presented and verified.
  uint32_t verify = facts.cert_presented && facts.cert_verified ? 0 : 1;
  for (int shift = 24; shift >= 0; shift -= 8) ssl += static_cast<char>((verify >> shift) & 0xff);
  put_tlv(ssl, kPp2SubtypeSslVersion, facts.version);
  put_tlv(out, kPp2TypeSsl, ssl);
  return out;
}

}  // namespace lb::tls
