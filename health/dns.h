// Minimal DNS wire format for the dns probe (RFC 1035 §4.1): build a query
// for one A/IN question and judge a reply's header and question section.
//
// Pure functions over byte buffers, no I/O, so they can be unit-tested and
// fuzzed. Every read is bounds-checked; compression pointers are followed
// with a hop limit so a hostile packet cannot loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lb::health::dns {

constexpr uint16_t kTypeA = 1;
constexpr uint16_t kClassIn = 1;
constexpr uint8_t kRcodeNoError = 0;
constexpr uint8_t kRcodeNxDomain = 3;

// Wire form of a name ("." or "" is the root; a trailing dot is optional).
// nullopt for an empty label, a label over 63 bytes or a name over 255 bytes.
std::optional<std::vector<uint8_t>> encode_name(std::string_view name);

// A standard query, recursion desired, one question (name, A, IN).
std::optional<std::vector<uint8_t>> build_query(uint16_t id, std::string_view name);

struct Header {
  uint16_t id = 0;
  bool qr = false;  // response
  uint8_t opcode = 0;
  bool tc = false;
  bool rd = false;
  bool ra = false;
  uint8_t rcode = 0;
  uint16_t qdcount = 0;
  uint16_t ancount = 0;
  uint16_t nscount = 0;
  uint16_t arcount = 0;
};

struct Question {
  std::string name;  // dotted, lower case, no trailing dot; "" = root
  uint16_t qtype = 0;
  uint16_t qclass = 0;
};

struct Message {
  Header header;
  std::vector<Question> questions;  // header.qdcount entries
};

// Parses the header and every question; answers are not looked at.
// nullopt when the buffer is too short or a name is malformed.
std::optional<Message> parse_message(const uint8_t* data, size_t len);

// The name as parse_message() reports it, for comparing with a question.
std::string normalize_name(std::string_view name);

enum class Verdict {
  Ignore,  // not the reply to our query (other ID, not a response, other question)
  Pass,    // NOERROR or NXDOMAIN: the server answers
  Fail,    // the reply to our query, but malformed or with another RCODE
};

struct Judgement {
  Verdict verdict = Verdict::Ignore;
  std::string reason;
};

// Judges a datagram received for the query (id, name, A, IN).
Judgement judge_reply(const uint8_t* data, size_t len, uint16_t id, std::string_view name);

const char* rcode_name(uint8_t rcode);

}  // namespace lb::health::dns
