// The hand-over channel: one AF_UNIX SOCK_SEQPACKET socket pair between the
// running lb and the program taking over. Message boundaries are kept, so
// descriptors (SCM_RIGHTS) and bytes never blur into each other.
//
// Conversation (docs/upgrade.md):
//   old -> new   "STATE" header: byte count and descriptor count
//   old -> new   the descriptors, at most kFdsPerMessage per message
//   old -> new   the encoded HandoverState, in chunks of kChunk bytes
//   new -> old   "SERVING <pid>"  once its workers accept, or
//                "FAILED <reason>" when it cannot take over
// Version 2 on, after SERVING (the established connections):
//   old -> new   "SESSIONS" batches, each sent like the state (its own
//                header, descriptors, bytes: a hand-over with sessions only)
//   old -> new   "DONE", then the old end closes
//
// Blocking calls with a deadline (SO_RCVTIMEO/SO_SNDTIMEO): they run at
// most once per upgrade, on the main thread of each program.
// Thread rules: none of their own; one caller per socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lb::core::handover {

inline constexpr size_t kFdsPerMessage = 200;  // below the kernel's SCM_MAX_FD (253)
inline constexpr size_t kChunk = 32 * 1024;

// Sends `bytes` and `fds` (which stay open here: the receiver gets copies)
// under header word `kind` ("STATE", "SESSIONS"). False with *error on failure.
bool send_state(int sock, const std::vector<uint8_t>& bytes, const std::vector<int>& fds,
                std::chrono::milliseconds timeout, std::string* error, const char* kind = "STATE");

struct Received {
  std::string kind;  // the header's word ("DONE": a bare line, nothing else)
  std::vector<uint8_t> bytes;
  std::vector<int> fds;  // close-on-exec, owned by the caller
};
// Receives what send_state() sent (or a bare "DONE" line). On failure
// closes every descriptor it received and returns nullopt with *error.
std::optional<Received> receive_state(int sock, std::chrono::milliseconds timeout, std::string* error);

// One short text message (the reply), and its reception.
bool send_line(int sock, const std::string& line, std::chrono::milliseconds timeout);
std::optional<std::string> receive_line(int sock, std::chrono::milliseconds timeout);

}  // namespace lb::core::handover
