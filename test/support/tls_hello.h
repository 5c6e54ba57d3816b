// Building TLS ClientHello messages byte by byte for tests of the ClientHello
// reader, JA4, and passthrough listeners: lists and extensions exactly as
// given (GREASE, odd orders, malformed bodies), framed into records of any
// size.
//
// Thread rules: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lb::test::tls_hello {

inline void put16(std::string* s, size_t v) {
  s->push_back(static_cast<char>(v >> 8 & 0xff));
  s->push_back(static_cast<char>(v & 0xff));
}

// Extension bodies.
inline std::string sni(const std::string& name) {
  std::string entry;
  entry.push_back(0);  // host_name
  put16(&entry, name.size());
  entry += name;
  std::string body;
  put16(&body, entry.size());
  return body + entry;
}
inline std::string alpn(const std::vector<std::string>& protocols) {
  std::string list;
  for (const auto& p : protocols) {
    list.push_back(static_cast<char>(p.size()));
    list += p;
  }
  std::string body;
  put16(&body, list.size());
  return body + list;
}
// A 16-bit-length-prefixed list of 16-bit values (signature_algorithms,
// supported_groups).
inline std::string u16_list(const std::vector<uint16_t>& v) {
  std::string body;
  put16(&body, v.size() * 2);
  for (uint16_t x : v) put16(&body, x);
  return body;
}
inline std::string versions(const std::vector<uint16_t>& v) {
  std::string body(1, static_cast<char>(v.size() * 2));
  for (uint16_t x : v) put16(&body, x);
  return body;
}

struct Hello {
  uint16_t legacy_version = 0x0303;
  std::string session_id = std::string(32, '\x5a');
  std::vector<uint16_t> ciphers = {0x1301, 0x1302};
  std::vector<std::pair<uint16_t, std::string>> extensions;  // type, body
  bool omit_extensions = false;                              // no extensions block at all
};

// The handshake message: type 1, 24-bit length, body.
inline std::string message(const Hello& h) {
  std::string body;
  put16(&body, h.legacy_version);
  body.append(32, '\x11');  // random
  body.push_back(static_cast<char>(h.session_id.size()));
  body += h.session_id;
  put16(&body, h.ciphers.size() * 2);
  for (uint16_t c : h.ciphers) put16(&body, c);
  body += std::string("\x01\x00", 2);  // compression: null only
  if (!h.omit_extensions) {
    std::string exts;
    for (const auto& [type, data] : h.extensions) {
      put16(&exts, type);
      put16(&exts, data.size());
      exts += data;
    }
    put16(&body, exts.size());
    body += exts;
  }
  std::string msg(1, '\x01');
  msg.push_back(static_cast<char>(body.size() >> 16 & 0xff));
  put16(&msg, body.size() & 0xffff);
  return msg + body;
}

// `payload` in handshake records (type 22, version 3.1) of at most
// `fragment` bytes each.
inline std::string records(const std::string& payload, size_t fragment = 16384, uint8_t type = 22) {
  std::string out;
  for (size_t at = 0; at < payload.size(); at += fragment) {
    const std::string part = payload.substr(at, fragment);
    out.push_back(static_cast<char>(type));
    out += std::string("\x03\x01", 2);
    put16(&out, part.size());
    out += part;
  }
  return out;
}

// A plausible TLS 1.3 hello naming `server_name` (none when empty).
inline Hello typical(const std::string& server_name) {
  Hello h;
  h.ciphers = {0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f};
  if (!server_name.empty()) h.extensions.push_back({0x0000, sni(server_name)});
  h.extensions.push_back({0x0010, alpn({"h2", "http/1.1"})});
  h.extensions.push_back({0x000a, u16_list({0x001d, 0x0017})});
  h.extensions.push_back({0x000d, u16_list({0x0403, 0x0804})});
  h.extensions.push_back({0x002b, versions({0x0304, 0x0303})});
  return h;
}

}  // namespace lb::test::tls_hello
