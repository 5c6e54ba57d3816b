// JA4 fingerprint; see ja4.h. Written from FoxIO's JA4 technical details
// (JA4.md: version, SNI, counts, ALPN rules, cipher and extension hashes).
#include "core/tls/ja4.h"

#include <openssl/evp.h>

#include <algorithm>
#include <vector>

namespace lb::tls {

namespace {

constexpr char kHex[] = "0123456789abcdef";

const char* version_code(uint16_t v) {
  switch (v) {
    case 0x0304:
      return "13";
    case 0x0303:
      return "12";
    case 0x0302:
      return "11";
    case 0x0301:
      return "10";
    case 0x0300:
      return "s3";
    case 0x0002:
      return "s2";
    case 0xfeff:
      return "d1";
    case 0xfefd:
      return "d2";
    case 0xfefc:
      return "d3";
    default:
      return "00";
  }
}

void append_count(std::string* s, size_t n) {
  n = std::min<size_t>(n, 99);
  s->push_back(static_cast<char>('0' + n / 10));
  s->push_back(static_cast<char>('0' + n % 10));
}

bool alnum(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// First and last character of the first ALPN value; when either end is not
// alphanumeric, the first and last hex digit of the whole value instead.
void append_alpn(std::string* s, const ClientHello& h) {
  if (!h.has_alpn || h.alpn.empty() || h.alpn[0].empty()) {
    s->append("00");
    return;
  }
  const std::string& a = h.alpn[0];
  const auto first = static_cast<unsigned char>(a.front());
  const auto last = static_cast<unsigned char>(a.back());
  if (alnum(first) && alnum(last)) {
    s->push_back(static_cast<char>(first));
    s->push_back(static_cast<char>(last));
  } else {
    s->push_back(kHex[first >> 4]);
    s->push_back(kHex[last & 0xf]);
  }
}

std::vector<uint16_t> without_grease(const std::vector<uint16_t>& in) {
  std::vector<uint16_t> out;
  out.reserve(in.size());
  for (uint16_t v : in) {
    if (!is_grease(v)) out.push_back(v);
  }
  return out;
}

void append_list(std::string* s, const std::vector<uint16_t>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) s->push_back(',');
    s->push_back(kHex[v[i] >> 12]);
    s->push_back(kHex[(v[i] >> 8) & 0xf]);
    s->push_back(kHex[(v[i] >> 4) & 0xf]);
    s->push_back(kHex[v[i] & 0xf]);
  }
}

// First 12 hex digits of SHA-256(text), lower case.
std::string hash12(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  std::string out;
  if (EVP_Digest(text.data(), text.size(), md, &n, EVP_sha256(), nullptr) != 1 || n < 6) {
    return "000000000000";  // not reached with a working libcrypto
  }
  for (int i = 0; i < 6; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 0xf]);
  }
  return out;
}

}  // namespace

std::string ja4(const ClientHello& h, Ja4Form form) {
  const bool raw = form == Ja4Form::Raw || form == Ja4Form::RawOriginal;
  const bool original = form == Ja4Form::Original || form == Ja4Form::RawOriginal;

  std::vector<uint16_t> ciphers = without_grease(h.cipher_suites);
  const std::vector<uint16_t> all_exts = without_grease(h.extensions);
  const std::vector<uint16_t> sigs = without_grease(h.signature_algorithms);
  const bool sni = std::find(all_exts.begin(), all_exts.end(), kExtServerName) != all_exts.end();

  std::string out = "t";
  out.append(version_code(h.max_version()));
  out.push_back(sni ? 'd' : 'i');
  append_count(&out, ciphers.size());
  append_count(&out, all_exts.size());
  append_alpn(&out, h);

  std::vector<uint16_t> exts;
  if (original) {
    exts = all_exts;
  } else {
    std::sort(ciphers.begin(), ciphers.end());
    for (uint16_t e : all_exts) {
      if (e != kExtServerName && e != kExtAlpn) exts.push_back(e);
    }
    std::sort(exts.begin(), exts.end());
  }

  std::string b;
  append_list(&b, ciphers);
  std::string c;
  append_list(&c, exts);
  if (!sigs.empty()) {
    c.push_back('_');
    append_list(&c, sigs);
  }
  out.push_back('_');
  if (raw) {
    out.append(b);
    out.push_back('_');
    out.append(c);
    return out;
  }
  out.append(ciphers.empty() ? "000000000000" : hash12(b));
  out.push_back('_');
  out.append(exts.empty() ? "000000000000" : hash12(c));
  return out;
}

}  // namespace lb::tls
