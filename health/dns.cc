#include "health/dns.h"

namespace lb::health::dns {

namespace {

constexpr size_t kHeaderSize = 12;
constexpr size_t kMaxName = 255;
constexpr int kMaxPointerHops = 32;

uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

void put16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v & 0xff));
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Reads a possibly compressed name starting at *pos; on success *pos is just
// past the name's bytes in place (not past where pointers led).
bool read_name(const uint8_t* data, size_t len, size_t* pos, std::string* out) {
  size_t p = *pos;
  size_t end_in_place = 0;  // set at the first pointer
  int hops = 0;
  size_t wire_len = 1;  // the final zero byte
  out->clear();
  for (;;) {
    if (p >= len) return false;
    uint8_t l = data[p];
    if ((l & 0xc0) == 0xc0) {
      if (p + 1 >= len || ++hops > kMaxPointerHops) return false;
      size_t target = static_cast<size_t>(l & 0x3f) << 8 | data[p + 1];
      if (end_in_place == 0) end_in_place = p + 2;
      if (target >= len) return false;
      p = target;
      continue;
    }
    if ((l & 0xc0) != 0) return false;  // 0x40 / 0x80: reserved label types
    if (l == 0) {
      *pos = end_in_place ? end_in_place : p + 1;
      return true;
    }
    if (p + 1 + l > len) return false;
    wire_len += 1 + l;
    if (wire_len > kMaxName) return false;
    if (!out->empty()) out->push_back('.');
    for (size_t i = 0; i < l; ++i) out->push_back(lower(static_cast<char>(data[p + 1 + i])));
    p += 1 + l;
  }
}

}  // namespace

std::optional<std::vector<uint8_t>> encode_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  std::vector<uint8_t> out;
  if (name.empty()) {
    out.push_back(0);
    return out;
  }
  size_t start = 0;
  for (;;) {
    size_t dot = name.find('.', start);
    std::string_view label =
        name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63) return std::nullopt;
    out.push_back(static_cast<uint8_t>(label.size()));
    out.insert(out.end(), label.begin(), label.end());
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  out.push_back(0);
  if (out.size() > kMaxName) return std::nullopt;
  return out;
}

std::optional<std::vector<uint8_t>> build_query(uint16_t id, std::string_view name) {
  auto qname = encode_name(name);
  if (!qname) return std::nullopt;
  std::vector<uint8_t> q;
  q.reserve(kHeaderSize + qname->size() + 4);
  put16(q, id);
  put16(q, 0x0100);  // QR=0, OPCODE=QUERY, RD=1
  put16(q, 1);       // QDCOUNT
  put16(q, 0);       // ANCOUNT
  put16(q, 0);       // NSCOUNT
  put16(q, 0);       // ARCOUNT
  q.insert(q.end(), qname->begin(), qname->end());
  put16(q, kTypeA);
  put16(q, kClassIn);
  return q;
}

std::optional<Message> parse_message(const uint8_t* data, size_t len) {
  if (!data || len < kHeaderSize) return std::nullopt;
  Message m;
  Header& h = m.header;
  h.id = get16(data);
  uint16_t flags = get16(data + 2);
  h.qr = flags & 0x8000;
  h.opcode = static_cast<uint8_t>(flags >> 11 & 0xf);
  h.tc = flags & 0x0200;
  h.rd = flags & 0x0100;
  h.ra = flags & 0x0080;
  h.rcode = static_cast<uint8_t>(flags & 0xf);
  h.qdcount = get16(data + 4);
  h.ancount = get16(data + 6);
  h.nscount = get16(data + 8);
  h.arcount = get16(data + 10);
  size_t pos = kHeaderSize;
  // Each question takes at least 5 bytes; refuse counts the packet cannot hold
  // before reserving anything.
  if (h.qdcount > (len - pos) / 5) return std::nullopt;
  m.questions.reserve(h.qdcount);
  for (unsigned i = 0; i < h.qdcount; ++i) {
    Question q;
    if (!read_name(data, len, &pos, &q.name)) return std::nullopt;
    if (pos + 4 > len) return std::nullopt;
    q.qtype = get16(data + pos);
    q.qclass = get16(data + pos + 2);
    pos += 4;
    m.questions.push_back(std::move(q));
  }
  return m;
}

std::string normalize_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  std::string out;
  out.reserve(name.size());
  for (char c : name) out.push_back(lower(c));
  return out;
}

const char* rcode_name(uint8_t rcode) {
  switch (rcode) {
    case 0:
      return "NOERROR";
    case 1:
      return "FORMERR";
    case 2:
      return "SERVFAIL";
    case 3:
      return "NXDOMAIN";
    case 4:
      return "NOTIMP";
    case 5:
      return "REFUSED";
    default:
      return "RCODE?";
  }
}

Judgement judge_reply(const uint8_t* data, size_t len, uint16_t id, std::string_view name) {
  // Too short to carry an ID: cannot be ours.
  if (!data || len < 2 || get16(data) != id) return {Verdict::Ignore, "other id"};
  if (len >= 4 && !(data[2] & 0x80)) return {Verdict::Ignore, "not a response"};
  auto m = parse_message(data, len);
  if (!m) return {Verdict::Fail, "dns: malformed reply"};
  const Header& h = m->header;
  // A reply echoes the question (RFC 1035 §4.1.2); one that asks something
  // else is treated like a stray datagram. A reply without a question section
  // is judged on its RCODE alone, as the contract says (ID + RCODE).
  if (h.qdcount > 0) {
    const Question& q = m->questions.front();
    if (h.qdcount != 1 || q.name != normalize_name(name) || q.qtype != kTypeA || q.qclass != kClassIn)
      return {Verdict::Ignore, "other question"};
  }
  std::string rc = std::string("dns ") + rcode_name(h.rcode);
  if (h.rcode != kRcodeNoError && h.rcode != kRcodeNxDomain) {
    if (h.rcode > 5) rc = "dns RCODE " + std::to_string(h.rcode);
    return {Verdict::Fail, rc};
  }
  return {Verdict::Pass, rc};
}

}  // namespace lb::health::dns
